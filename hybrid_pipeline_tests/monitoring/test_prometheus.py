"""A real Prometheus server scrapes the exporter and the serving API after a small real materialization.

Debian's ``prometheus`` binary (``apt-get install -y prometheus``; CI installs it) runs with the
example config of ``deploy/prometheus/prometheus.yml``, its targets pointed at the two processes and
its scrape interval cut to 1 s; the test queries Prometheus's HTTP API until the series hold what
the lakehouse and the Dagster instance hold.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import pytest
import yaml

from hybrid_pipeline.cli import materialize
from hybrid_pipeline.sources.generator import GeneratorConfig, generate
from hybrid_pipeline.sources.landing import landed_dates
from hybrid_pipeline_tests.conftest import PipelineEnv, env_vars, make_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, probe: Callable[[], object], timeout: float = 90.0, interval: float = 0.5) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


class Process:
    """A child process whose output goes to a file (read back when a test fails)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=REPO)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineEnv]:
    """Two landing days with dirt, through the daily pipeline, on an instance under DAGSTER_HOME."""
    root = tmp_path_factory.mktemp("metrics")
    with pytest.MonkeyPatch.context() as mp:
        env = make_env(root, mp)
        generate(GeneratorConfig(days=2, events_per_day=300, seed=11, dirty_rate=0.05, start_date=date(2024, 1, 1)),
                 env.landing)
        with dg.DagsterInstance.get() as instance:
            runs = materialize(landed_dates(env.landing), instance=instance, daily_only=True)
        assert all(r.ok for r in runs)
        yield env


@pytest.fixture(scope="module")
def servers(pipeline: PipelineEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """The exporter, the serving API and a Prometheus server scraping both every second."""
    if not Path(PROMETHEUS).exists():
        pytest.skip("no prometheus binary (/usr/bin/prometheus): apt-get install -y prometheus")
    logs = tmp_path_factory.mktemp("logs")
    env = {**os.environ, **env_vars(pipeline.root), "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "hybrid_pipeline.cli"]
    ports = {name: free_port() for name in ("exporter", "serving", "prometheus")}
    processes = {
        "exporter": Process([*cli, "metrics", "--port", str(ports["exporter"]), "--cache-seconds", "1"],
                            logs / "exporter.log", env),
        "serving": Process([*cli, "serve", "--port", str(ports["serving"])], logs / "serving.log", env),
    }
    try:
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        config["global"]["scrape_interval"] = "1s"
        for job in config["scrape_configs"]:
            target = ports["exporter" if job["job_name"] == "hybrid_pipeline" else "serving"]
            job["scrape_interval"], job["scrape_timeout"] = "1s", "1s"
            for group in job["static_configs"]:
                group["targets"] = [f"127.0.0.1:{target}"]
        config_file = logs / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        processes["prometheus"] = Process(
            [PROMETHEUS, f"--config.file={config_file}", f"--storage.tsdb.path={logs / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{ports['prometheus']}"],
            logs / "prometheus.log",
        )
        for name, proc in processes.items():
            wait_for(f"{name} to listen", lambda p=proc, n=name: _listening(p, ports[n]))
        yield {"ports": ports, "processes": processes}
    finally:
        for proc in processes.values():
            proc.stop()


def _listening(proc: Process, port: int) -> bool:
    if proc.proc.poll() is not None:
        raise AssertionError(f"exited with {proc.proc.returncode}:\n{proc.output()[-3000:]}")
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def query(servers: dict[str, object], promql: str) -> list[dict[str, object]]:
    port = servers["ports"]["prometheus"]  # type: ignore[index]
    body = json.loads(get(f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
    assert body["status"] == "success", body
    return body["data"]["result"]


def values(servers: dict[str, object], promql: str, label: str, expect: int | None = None) -> dict[str, float]:
    """``{label value: sample}`` of the query once Prometheus has the series (``expect`` of them, if given)."""
    def probe() -> dict[str, float] | None:
        result = query(servers, promql)
        if not result or (expect is not None and len(result) < expect):
            return None
        return {str(r["metric"].get(label, "")): float(r["value"][1]) for r in result}

    return wait_for(f"{promql} in Prometheus", probe)  # type: ignore[return-value]


def test_table_rows_and_bytes_per_table_and_partition_match_the_lakehouse(pipeline: PipelineEnv, servers) -> None:
    lh = pipeline.lakehouse
    bronze = lh.read("bronze/events")
    quarantine = lh.read("silver/events_quarantine")

    rows = values(servers, 'hybrid_table_rows{layer=~"bronze|silver"}', "table", expect=5)
    assert rows["bronze/events"] == bronze.height
    assert rows["silver/events"] == lh.read("silver/events").height
    assert rows["silver/events_quarantine"] == quarantine.height
    per_day = values(servers, 'hybrid_table_partition_rows{table="bronze/events"}', "partition", expect=2)
    assert per_day == {d: float(n) for d, n in bronze.group_by("landing_date").len().iter_rows()}
    size = values(servers, 'hybrid_table_bytes{table="bronze/events"}', "table")
    assert size["bronze/events"] == sum(lh.delta("bronze/events").get_add_actions(flatten=True).column("size_bytes").to_pylist())

    ratio = values(servers, 'hybrid_quarantine_ratio{source="events"}', "partition", expect=3)
    q_days = dict(quarantine.group_by("landing_date").len().iter_rows())
    for day, n in bronze.group_by("landing_date").len().iter_rows():
        assert ratio[day] == pytest.approx(q_days.get(day, 0) / n)
    assert ratio[""] == pytest.approx(quarantine.height / bronze.height)
    assert quarantine.height > 0  # the dirt was quarantined, so the ratio is not trivially 0


def test_runs_checks_and_freshness_match_the_instance(pipeline: PipelineEnv, servers) -> None:
    with dg.DagsterInstance.get() as instance:
        records = instance.get_run_records()
        checks = instance.get_event_records(
            dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION), limit=1000)
    jobs = {r.dagster_run.job_name for r in records}
    assert jobs == {"daily_pipeline"}

    runs = values(servers, 'hybrid_job_runs_total{status="success"}', "dagster_job")
    assert runs == {"daily_pipeline": float(len(records))}
    duration = values(servers, 'hybrid_job_run_duration_seconds_sum{dagster_job="daily_pipeline"}', "dagster_job")
    assert duration["daily_pipeline"] == pytest.approx(sum(r.end_time - r.start_time for r in records), rel=1e-6)
    conservation = values(servers, 'hybrid_check_evaluations_total{check="row_conservation"}', "outcome")
    expected = sum(1 for c in checks if c.event_log_entry.dagster_event.event_specific_data.check_name == "row_conservation")
    assert conservation == {"passed": float(expected)} and expected == 2
    assert values(servers, 'hybrid_check_passed{asset="silver/events",check="row_conservation"}', "check") == {
        "row_conservation": 1.0}

    lag = values(servers, 'hybrid_asset_freshness_lag_seconds{asset="silver/events"}', "asset")
    with dg.DagsterInstance.get() as instance:
        newest = instance.get_latest_materialization_event(dg.AssetKey(["silver", "events"]))
    assert newest is not None
    assert 0 < lag["silver/events"] < time.time() - newest.timestamp + 5
    status = values(servers, 'hybrid_asset_freshness_status{asset="silver/events"}', "asset")
    assert status == {"silver/events": 0.0}  # 26 h policy, materialized moments ago
    up = values(servers, "hybrid_exporter_source_up", "source", expect=5)
    assert up == {s: 1.0 for s in ("runs", "assets", "checks", "lakehouse", "models")}


def test_serving_latency_is_scraped_under_the_hybrid_prefix(servers) -> None:
    port = servers["ports"]["serving"]  # type: ignore[index]
    for _ in range(3):
        get(f"http://127.0.0.1:{port}/health")

    promql = 'hybrid_serving_request_duration_seconds_count{route="/health"}'
    # the exporter scrapes every second: wait for a scrape taken after the three requests
    count = wait_for("three /health requests", lambda: (v := values(servers, promql, "route")) and v["/health"] >= 3 and v)
    assert count["/health"] >= 3  # type: ignore[index]
    # a rate needs two scrapes that saw the increase: wait for them rather than query once
    p99 = wait_for("a latency quantile", lambda: [r for r in query(
        servers, 'histogram_quantile(0.99, sum by (le) (rate(hybrid_serving_request_duration_seconds_bucket[1m])))'
    ) if r["value"][1] not in ("NaN", "+Inf")])
    assert p99, "a latency quantile can be computed from the scraped histogram"
    names = json.loads(get(f"http://127.0.0.1:{servers['ports']['prometheus']}/api/v1/label/__name__/values"))["data"]  # type: ignore[index]
    ours = [n for n in names if not n.startswith(("up", "scrape_", "prometheus_", "go_", "process_", "net_", "promhttp_"))]
    assert ours and all(n.startswith("hybrid_") for n in ours), ours


def test_an_exporter_on_an_empty_instance_and_lakehouse_serves_without_error(tmp_path: Path) -> None:
    env = {**os.environ, **env_vars(tmp_path), "PYTHONUNBUFFERED": "1"}
    port = free_port()
    proc = Process([sys.executable, "-m", "hybrid_pipeline.cli", "metrics", "--port", str(port)], tmp_path / "log", env)
    try:
        wait_for("the exporter", lambda: _listening(proc, port))
        text = wait_for("a scrape", lambda: get(f"http://127.0.0.1:{port}/metrics").decode())
    finally:
        proc.stop()
    assert 'hybrid_exporter_source_up{source="lakehouse"} 1.0' in str(text)
    assert "hybrid_table_rows{" not in str(text) and "hybrid_job_runs_total{" not in str(text)
    assert "Traceback" not in proc.output()
    assert not (tmp_path / "lakehouse").exists()


def test_the_example_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool (Debian's prometheus package ships it)")
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_query_runs_on_the_server_and_the_pipeline_panels_have_data(servers) -> None:
    from hybrid_pipeline_tests.monitoring.test_dashboard import panels

    values(servers, 'hybrid_table_rows{table="bronze/events"}', "table")  # scraped at least once
    empty = []
    for panel in panels():
        for target in panel["targets"]:
            if not query(servers, target["expr"]):
                empty.append(panel["title"])
    # no model was trained and no prediction served in this small run; everything else has data
    assert set(empty) <= {"Production model AUC (test)", "AUC: production vs newest version",
                          "Feature drift (PSI per model input)", "Predict latency (p95)", "Feature lookups per second",
                          "Request latency (p50, p95, p99)", "p99 latency per route", "Requests per second by status",
                          "Finished runs per hour", "Run duration"}, empty
    assert "Rows per table" not in empty and "Quarantine rate per landing day" not in empty
