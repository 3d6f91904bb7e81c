"""The metrics collector against a real Dagster instance, real Delta tables and a real MLflow store."""

import socket
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.lakehouse.catalog import BRONZE_EVENTS, SILVER_EVENTS, SILVER_EVENTS_QUARANTINE
from hybrid_pipeline.monitoring.exporter import (
    AssetsSource,
    ChecksSource,
    LakehouseSource,
    ModelsSource,
    PipelineCollector,
    RunsSource,
)
from hybrid_pipeline.monitoring.lakehouse_stats import table_stats

USER_FEATURES = dg.AssetKey(["gold", "user_features"])
WINDOWS = {"gold": (60.0, 120.0)}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def collector_for(instance: dg.DagsterInstance, root: Path, clock: Clock | None = None,
                  logged: list[str] | None = None) -> tuple[PipelineCollector, CollectorRegistry]:
    collector = PipelineCollector(
        [RunsSource(instance), AssetsSource(instance, windows=lambda: WINDOWS), ChecksSource(instance),
         LakehouseSource(str(root / "lakehouse")), ModelsSource(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")],
        cache_seconds=30,
        clock=clock or Clock(2_000_000_000.0),
        log=(logged.append if logged is not None else None),
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return collector, registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# -- a tiny graph: a passing and a failing job, a partitioned asset with a check, the drift check's shape

@dg.op
def works() -> None:
    pass


@dg.op
def breaks() -> None:
    raise RuntimeError("boom")


@dg.job
def good_job() -> None:
    works()


@dg.job
def bad_job() -> None:
    breaks()


DAYS = dg.StaticPartitionsDefinition(["2024-01-01", "2024-01-02"])


@dg.asset(key=["gold", "daily"], partitions_def=DAYS)
def daily() -> None:
    pass


@dg.asset_check(asset=daily, name="positive", partitions_def=DAYS)
def positive(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=context.partition_key != "2024-01-02", severity=dg.AssetCheckSeverity.WARN)


@dg.asset(key=USER_FEATURES, partitions_def=DAYS)
def user_features() -> None:
    pass


@dg.asset_check(asset=USER_FEATURES, name="feature_drift", partitions_def=DAYS)
def feature_drift(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    # the metadata the project's drift check records (hybrid_pipeline/defs/models/checks.py)
    return dg.AssetCheckResult(
        passed=False, severity=dg.AssetCheckSeverity.WARN,
        metadata={"partition": context.partition_key, "max_psi": 0.17, "max_psi_feature": "purchases",
                  "psi": dg.MetadataValue.json({"purchases": 0.17, "clicks": 0.02, "empty": None}),
                  "lifetime_psi": dg.MetadataValue.json({"total_events": 0.4})},
    )


@pytest.fixture(scope="module")
def graph_instance() -> Iterator[dg.DagsterInstance]:
    """One instance that ran the tiny graph, shared by the tests that only read it."""
    with dg.instance_for_test() as instance:
        run_graph(instance)
        yield instance


def run_graph(instance: dg.DagsterInstance) -> None:
    for job in (good_job, good_job, bad_job):
        job.execute_in_process(instance=instance, raise_on_error=False)
    for day in DAYS.get_partition_keys():
        dg.materialize([daily, positive], partition_key=day, instance=instance, raise_on_error=False)
    dg.materialize([user_features, feature_drift], partition_key="2024-01-02", instance=instance)


def write_tables(root: Path) -> Lakehouse:
    lh = Lakehouse(str(root / "lakehouse"))
    bronze = pl.DataFrame({"landing_date": ["2024-01-01"] * 8 + ["2024-01-02"] * 2, "payload": ["{}"] * 10})
    lh.append("bronze/events", bronze, partition_by=["landing_date"])
    lh.append("silver/events_quarantine", pl.DataFrame({"landing_date": ["2024-01-01"] * 2, "reason": ["bad", "bad"]}),
              partition_by=["landing_date"])
    return lh


# -- tests


def test_an_empty_instance_lakehouse_and_registry_give_no_series_and_no_error(instance, tmp_path: Path) -> None:
    logged: list[str] = []
    _, registry = collector_for(instance, tmp_path, logged=logged)

    text = generate_latest(registry).decode()

    for source in ("runs", "assets", "checks", "lakehouse", "models"):
        assert value(registry, "hybrid_exporter_source_up", source=source) == 1.0
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all(line.startswith("hybrid_exporter_") for line in samples), samples
    assert not (tmp_path / "lakehouse").exists()  # reading never creates a lakehouse
    assert logged == []


def test_runs_are_counted_per_job_and_status_with_their_durations(graph_instance: dg.DagsterInstance, tmp_path: Path) -> None:
    instance = graph_instance
    _, registry = collector_for(instance, tmp_path)

    assert value(registry, "hybrid_job_runs_total", dagster_job="good_job", status="success") == 2
    assert value(registry, "hybrid_job_runs_total", dagster_job="bad_job", status="failure") == 1
    assert value(registry, "hybrid_job_last_run_success", dagster_job="bad_job") == 0
    assert value(registry, "hybrid_job_last_run_success", dagster_job="good_job") == 1
    assert value(registry, "hybrid_job_run_duration_seconds_count", dagster_job="good_job") == 2
    records = instance.get_run_records(filters=dg.RunsFilter(job_name="good_job"))
    expected = sum(r.end_time - r.start_time for r in records)
    assert value(registry, "hybrid_job_run_duration_seconds_sum", dagster_job="good_job") == pytest.approx(expected)


def test_checks_report_newest_outcome_failing_partitions_and_drift_psi(graph_instance: dg.DagsterInstance, tmp_path: Path) -> None:
    instance = graph_instance
    _, registry = collector_for(instance, tmp_path)

    labels = {"asset": "gold/daily", "check": "positive"}
    assert value(registry, "hybrid_check_evaluations_total", **labels, outcome="passed", severity="WARN") == 1
    assert value(registry, "hybrid_check_evaluations_total", **labels, outcome="failed", severity="WARN") == 1
    assert value(registry, "hybrid_check_passed", **labels, severity="WARN") == 0  # 2024-01-02 ran last
    assert value(registry, "hybrid_check_failing_partitions", **labels, severity="WARN") == 1
    assert value(registry, "hybrid_feature_drift_psi", feature="purchases", kind="input", partition="2024-01-02") == 0.17
    assert value(registry, "hybrid_feature_drift_psi", feature="total_events", kind="lifetime", partition="2024-01-02") == 0.4
    assert value(registry, "hybrid_feature_drift_psi", feature="empty", kind="input", partition="2024-01-02") is None
    assert value(registry, "hybrid_feature_drift_max_psi", partition="2024-01-02") == 0.17


def test_freshness_lag_and_status_follow_the_layer_policy(graph_instance: dg.DagsterInstance, tmp_path: Path) -> None:
    instance = graph_instance
    [newest] = instance.fetch_materializations(dg.AssetKey(["gold", "daily"]), limit=1).records
    clock = Clock(newest.timestamp + 90)  # past the 60 s warn window, inside the 120 s fail window
    collector, registry = collector_for(instance, tmp_path, clock)

    assert value(registry, "hybrid_asset_materializations_total", asset="gold/daily") == 2
    assert value(registry, "hybrid_asset_freshness_lag_seconds", asset="gold/daily") == pytest.approx(90)
    assert value(registry, "hybrid_asset_freshness_status", asset="gold/daily") == 1
    clock.now += 60  # the cache holds for 30 s: a new read, now past the fail window
    assert value(registry, "hybrid_asset_freshness_status", asset="gold/daily") == 2


def test_scrapes_inside_the_cache_window_do_not_read_again(instance, tmp_path: Path) -> None:
    clock = Clock(2_000_000_000.0)
    _, registry = collector_for(instance, tmp_path, clock)
    good_job.execute_in_process(instance=instance)
    assert value(registry, "hybrid_job_runs_total", dagster_job="good_job", status="success") == 1

    good_job.execute_in_process(instance=instance)
    assert value(registry, "hybrid_job_runs_total", dagster_job="good_job", status="success") == 1  # cached
    clock.now += 31
    assert value(registry, "hybrid_job_runs_total", dagster_job="good_job", status="success") == 2  # read on from the cursor


def test_check_evaluations_are_read_on_from_the_cursor_and_counted_once(instance, tmp_path: Path) -> None:
    clock = Clock(2_000_000_000.0)
    _, registry = collector_for(instance, tmp_path, clock)
    labels = {"asset": "gold/daily", "check": "positive"}
    dg.materialize([daily, positive], partition_key="2024-01-01", instance=instance)
    assert value(registry, "hybrid_check_evaluations_total", **labels, outcome="passed", severity="WARN") == 1

    dg.materialize([daily, positive], partition_key="2024-01-02", instance=instance, raise_on_error=False)
    clock.now += 31
    assert value(registry, "hybrid_exporter_source_up", source="checks") == 1
    assert value(registry, "hybrid_check_evaluations_total", **labels, outcome="passed", severity="WARN") == 1
    assert value(registry, "hybrid_check_evaluations_total", **labels, outcome="failed", severity="WARN") == 1
    assert value(registry, "hybrid_check_failing_partitions", **labels, severity="WARN") == 1

    dg.materialize([daily, positive], partition_key="2024-01-01", instance=instance)  # the failing day stays failing
    clock.now += 31
    assert value(registry, "hybrid_check_evaluations_total", **labels, outcome="passed", severity="WARN") == 2
    assert value(registry, "hybrid_check_passed", **labels, severity="WARN") == 1
    assert value(registry, "hybrid_check_failing_partitions", **labels, severity="WARN") == 1


def test_table_rows_bytes_and_quarantine_ratio_match_the_delta_tables(instance, tmp_path: Path) -> None:
    lh = write_tables(tmp_path)
    _, registry = collector_for(instance, tmp_path)

    bronze = {"table": "bronze/events", "layer": "bronze"}
    assert value(registry, "hybrid_table_rows", **bronze) == 10
    files = lh.delta("bronze/events").get_add_actions(flatten=True).column("size_bytes").to_pylist()
    assert value(registry, "hybrid_table_bytes", **bronze) == sum(files)
    assert value(registry, "hybrid_table_files", **bronze) == len(files)
    assert value(registry, "hybrid_table_version", **bronze) == lh.version("bronze/events")
    assert value(registry, "hybrid_table_partition_rows", **bronze, partition="2024-01-01") == 8
    assert value(registry, "hybrid_table_partition_rows", **bronze, partition="2024-01-02") == 2
    assert value(registry, "hybrid_quarantine_ratio", source="events", partition="2024-01-01") == pytest.approx(2 / 8)
    assert value(registry, "hybrid_quarantine_ratio", source="events", partition="2024-01-02") == 0
    assert value(registry, "hybrid_quarantine_ratio", source="events", partition="") == pytest.approx(2 / 10)


def test_rows_are_counted_from_the_data_when_files_carry_no_statistics(tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    from deltalake import Schema
    from deltalake.transaction import AddAction, create_table_with_add_actions

    lh = Lakehouse(str(tmp_path))
    uri = Path(lh.uri("bronze/events"))
    adds = []
    for day, rows in (("2024-01-01", 2), ("2024-01-02", 1)):  # files committed by a writer that records no stats
        folder = uri / f"landing_date={day}"
        folder.mkdir(parents=True)
        pq.write_table(pl.DataFrame({"payload": ["x"] * rows}).to_arrow(), folder / "part-0.parquet")
        size = (folder / "part-0.parquet").stat().st_size
        adds.append(AddAction(f"landing_date={day}/part-0.parquet", size, {"landing_date": day}, 0, True, ""))
    schema = Schema.from_arrow(pl.DataFrame(schema={"payload": pl.String, "landing_date": pl.String}).to_arrow().schema)
    create_table_with_add_actions(str(uri), schema, adds, partition_by=["landing_date"])
    assert pl.DataFrame(lh.delta("bronze/events").get_add_actions(flatten=True))["num_records"].null_count() == 2

    stats = table_stats(lh, BRONZE_EVENTS)

    assert stats is not None and stats.rows == 3 and stats.files == 2
    assert {k: (v.rows, v.files) for k, v in stats.partitions.items()} == {"2024-01-01": (2, 1), "2024-01-02": (1, 1)}


def test_an_unchanged_table_is_not_read_again(tmp_path: Path) -> None:
    lh = write_tables(tmp_path)
    first = table_stats(lh, SILVER_EVENTS_QUARANTINE)
    assert table_stats(lh, SILVER_EVENTS_QUARANTINE, first) is first
    lh.append("silver/events_quarantine", pl.DataFrame({"landing_date": ["2024-01-02"], "reason": ["bad"]}))
    second = table_stats(lh, SILVER_EVENTS_QUARANTINE, first)
    assert second is not first and second is not None and second.rows == 3


def test_a_broken_source_is_reported_down_once_and_the_others_still_served(instance, tmp_path: Path) -> None:
    lh = write_tables(tmp_path)
    log = Path(lh.uri("bronze/events")) / "_delta_log" / "00000000000000000000.json"
    log.write_text("not json\n")
    good_job.execute_in_process(instance=instance)
    logged: list[str] = []
    clock = Clock(2_000_000_000.0)
    _, registry = collector_for(instance, tmp_path, clock, logged)

    assert value(registry, "hybrid_exporter_source_up", source="lakehouse") == 0
    assert value(registry, "hybrid_exporter_source_up", source="runs") == 1
    assert value(registry, "hybrid_job_runs_total", dagster_job="good_job", status="success") == 1
    clock.now += 31
    assert value(registry, "hybrid_exporter_source_up", source="lakehouse") == 0
    assert len(logged) == 1 and logged[0].startswith("metrics: cannot read lakehouse:")


def test_model_versions_and_auc_come_from_the_registry(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from hybrid_pipeline.ml.registry import log_training_run, register_model, set_production

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    versions = []
    for auc in (0.81, 0.77):
        run_id = log_training_run(uri, "purchase_model", {"lr": 0.01}, {"test_auc": auc, "valid_auc": auc + 0.01,
                                                                      "test_log_loss": 0.4}, code_version="test")
        versions.append(register_model(uri, "purchase_model", run_id))
    set_production(uri, "purchase_model", versions[0])
    source = ModelsSource(uri)
    collector = PipelineCollector([source], cache_seconds=0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    assert value(registry, "hybrid_model_version", model="purchase_model", stage="production") == versions[0]
    assert value(registry, "hybrid_model_version", model="purchase_model", stage="latest") == versions[1]
    prod = {"model": "purchase_model", "stage": "production", "version": str(versions[0])}
    assert value(registry, "hybrid_model_auc", **prod, split="test") == pytest.approx(0.81)
    assert value(registry, "hybrid_model_auc", **prod, split="valid") == pytest.approx(0.82)
    latest = {"model": "purchase_model", "stage": "latest", "version": str(versions[1])}
    assert value(registry, "hybrid_model_auc", **latest, split="test") == pytest.approx(0.77)
    assert value(registry, "hybrid_model_metric", **latest, metric="test_log_loss") == pytest.approx(0.4)


def test_the_cli_refuses_a_port_in_use_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from hybrid_pipeline.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["metrics", "--port", str(port)])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"metrics: cannot listen on 127.0.0.1:{port}: in use"]


def test_every_family_is_prefixed_hybrid(instance, tmp_path: Path) -> None:
    sources = [RunsSource(instance), AssetsSource(instance, windows=lambda: {}), ChecksSource(instance),
               LakehouseSource(str(tmp_path)), ModelsSource("sqlite:///nowhere.db")]
    names = [family.name for source in sources for family in source.metrics(0.0)]
    assert names and all(name.startswith("hybrid_") for name in names)
    assert len(names) == len(set(names))


def test_date_partitions_are_labelled_as_iso_days(tmp_path: Path) -> None:
    lh = Lakehouse(str(tmp_path))
    frame = pl.DataFrame({"event_date": [date(2024, 1, 1), date(2024, 1, 1), date(2023, 12, 31)], "user_id": ["a", "b", "c"]})
    lh.append("silver/events", frame, partition_by=["event_date"])

    stats = table_stats(lh, SILVER_EVENTS)

    assert stats is not None and {k: v.rows for k, v in stats.partitions.items()} == {"2024-01-01": 2, "2023-12-31": 1}
