"""The Grafana dashboard and provisioning files: valid PromQL over metric names that are published."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest
import yaml
from prometheus_client.core import CounterMetricFamily, Metric, SummaryMetricFamily

from hybrid_pipeline.monitoring.exporter import AssetsSource, ChecksSource, LakehouseSource, ModelsSource, RunsSource
from hybrid_pipeline.serving.app import ServingMetrics

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "hybrid_pipeline.json"


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expressions() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def sample_names(family: Metric) -> set[str]:
    """The names a family's samples carry in the exposition (a counter's ``_total``, a histogram's ``_bucket``...)."""
    if isinstance(family, CounterMetricFamily) or family.type == "counter":
        return {f"{family.name}_total"}
    if isinstance(family, SummaryMetricFamily) or family.type == "summary":
        return {f"{family.name}_count", f"{family.name}_sum"}
    if family.type == "histogram":
        return {f"{family.name}_bucket", f"{family.name}_count", f"{family.name}_sum"}
    return {family.name}


def published_names(tmp_path: Path) -> set[str]:
    with dg.instance_for_test() as instance:
        sources = [RunsSource(instance), AssetsSource(instance, windows=lambda: {}), ChecksSource(instance),
                   LakehouseSource(str(tmp_path)), ModelsSource("sqlite:///nowhere.db")]
        names = {n for s in sources for f in s.metrics(0.0) for n in sample_names(f)}
    names |= {"hybrid_exporter_source_up", "hybrid_exporter_refresh_seconds", "hybrid_exporter_last_refresh_timestamp_seconds"}
    names |= {n for f in ServingMetrics().registry.collect() for n in sample_names(f)}
    return names


def test_the_dashboard_has_the_four_sections_on_one_page() -> None:
    rows = [p["title"] for p in dashboard()["panels"] if p["type"] == "row"]
    assert rows == ["Pipeline health", "Data quality", "Model health", "Serving latency"]
    for p in panels():
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24, p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]


def test_every_panel_uses_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = provisioned["datasources"]
    assert source["type"] == "prometheus"
    for p in panels():
        assert p["datasource"]["uid"] == source["uid"], p["title"]
        assert all(t["datasource"]["uid"] == source["uid"] for t in p["targets"]), p["title"]
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "hybrid_pipeline.yml").read_text())
    assert provider["providers"][0]["type"] == "file"


def test_every_query_names_metrics_the_exporter_or_serving_publish(tmp_path: Path) -> None:
    published = published_names(tmp_path)
    used = {name for expr in expressions() for name in re.findall(r"\bhybrid_[a-z0-9_]+", expr)}
    assert used and used <= published, sorted(used - published)
    # each of the four areas is covered by what the dashboard reads
    for prefix in ("hybrid_job_", "hybrid_asset_", "hybrid_table_", "hybrid_quarantine_", "hybrid_check_",
                   "hybrid_model_", "hybrid_feature_drift_", "hybrid_serving_request_duration_seconds"):
        assert any(name.startswith(prefix) for name in used), prefix


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool (Debian's prometheus package ships it)")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(expressions())]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
