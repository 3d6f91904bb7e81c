"""Schedules and sensors: the daily run, the landing sensor, alert routing and the models' automation
(drift check after each features update -> retraining -> promotion), as Dagster evaluates them."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest

from hybrid_pipeline.dagster_support.keys import TRAINING_SET, USER_FEATURES, USER_LABELS
from hybrid_pipeline.dagster_support.resources import AlertsResource
from hybrid_pipeline.dagster_support.resources import LakehouseResource, LandingZoneResource
from hybrid_pipeline.definitions import PIPELINE_JOB
from hybrid_pipeline.definitions import build_definitions
from hybrid_pipeline.defs.models.names import (
    AUTOMATION_SENSOR,
    DRIFT_CHECK,
    DRIFT_CHECK_KEY,
    GATE_CHECK,
    GATE_CHECK_KEY,
    PRODUCTION_PURCHASE_MODEL,
    PURCHASE_MODEL,
)
from hybrid_pipeline.sources.generator import GeneratorConfig, generate
from hybrid_pipeline_tests.conftest import fresh_pg_database


@pytest.fixture
def repo(pipeline_env):
    return build_definitions(pipeline_env.settings).get_repository_def()


def test_daily_schedule_runs_yesterdays_partition_at_two_utc(repo):
    schedule = repo.get_schedule_def("daily_pipeline_schedule")
    assert schedule.cron_schedule == "0 2 * * *" and schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    ctx = dg.build_schedule_context(
        scheduled_execution_time=datetime(2024, 3, 5, 2, 0, tzinfo=timezone.utc), repository_def=repo
    )
    request = schedule.evaluate_tick(ctx).run_requests[0]
    assert request.partition_key == "2024-03-04"
    assert request.run_key == "daily:2024-03-04"


def _sensor_resources(env) -> dict:
    return {
        "landing": LandingZoneResource(path=str(env.landing)),
        "lakehouse": LakehouseResource(root=env.settings.lakehouse_root),
    }


def test_landing_sensor_requests_runs_for_new_files_and_resumes_from_its_cursor(repo, pipeline_env):
    sensor = repo.get_sensor_def("landing_zone_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    day = pipeline_env.landing / "events" / "2024-01-02"
    day.mkdir(parents=True)
    (day / "a.jsonl").write_text('{"event_id":"1"}\n')
    resources = _sensor_resources(pipeline_env)
    with dg.instance_for_test() as instance:
        first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, repository_def=repo, resources=resources))
        assert [r.partition_key for r in first.run_requests] == ["2024-01-02"]
        again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, repository_def=repo, cursor=first.cursor, resources=resources))
        assert again.run_requests == []
        (day / "b.jsonl").write_text('{"event_id":"2"}\n')
        third = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, repository_def=repo, cursor=again.cursor, resources=resources))
        assert [r.partition_key for r in third.run_requests] == ["2024-01-02"]
        assert third.run_requests[0].run_key != first.run_requests[0].run_key


@pytest.mark.integration
def test_landing_sensor_requests_nothing_for_days_the_cli_already_ingested(repo, pipeline_env):
    """`make run` then `make dev`: the sensor's first tick (no cursor yet) finds every landing day
    already in the ingest ledger and requests no run; a file landed afterwards gets exactly one."""
    from hybrid_pipeline.cli import materialize

    generate(GeneratorConfig(days=2, events_per_day=200, seed=3, start_date=date(2024, 1, 1)), pipeline_env.landing)
    sensor = repo.get_sensor_def("landing_zone_sensor")
    resources = _sensor_resources(pipeline_env)
    with dg.instance_for_test() as instance:
        summaries = materialize(["2024-01-01", "2024-01-02"], instance=instance, daily_only=True)
        assert [s.success for s in summaries] == [True, True]

        def tick(cursor):
            context = dg.build_sensor_context(instance=instance, repository_def=repo, cursor=cursor, resources=resources)
            return sensor.evaluate_tick(context)

        first = tick(None)
        assert first.run_requests == []

        # A renamed copy of ingested content is not new either, on any day.
        events = pipeline_env.landing / "events"
        copied = next((events / "2024-01-01").iterdir())
        (events / "2024-01-03").mkdir()
        shutil.copy(copied, events / "2024-01-03" / "renamed.jsonl")
        (events / "2024-01-02" / "late.jsonl").write_text('{"event_id":"late-1"}\n')
        second = tick(first.cursor)
        assert [r.partition_key for r in second.run_requests] == ["2024-01-02"]
        assert second.run_requests[0].tags["landing_files"] == "1"


def test_failed_checks_are_routed_to_the_alert_file(repo, pipeline_env, tmp_path):
    """A failing ERROR check on silver ends up in the daytime channel of the alert file."""
    from hybrid_pipeline.cli import materialize

    day = pipeline_env.landing / "events" / "2024-02-02"
    day.mkdir(parents=True)
    (day / "bad.jsonl").write_text("{broken\n" * 10)
    alerts_file = tmp_path / "alerts.jsonl"
    sensor = repo.get_sensor_def("check_failure_alerts")
    with dg.instance_for_test() as instance:
        [summary] = materialize(["2024-02-02"], instance=instance, daily_only=True)
        assert not summary.ok
        result = sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, repository_def=repo, resources={"alerts": AlertsResource(file_path=str(alerts_file))})
        )
        assert result.cursor
    alerts = [json.loads(line) for line in alerts_file.read_text().splitlines()]
    titles = {a["title"] for a in alerts}
    assert "check silver/events:quarantine_rate failed" in titles
    assert all(a["channel"] == "daytime" for a in alerts)


# --------------------------------------------------------------------------- check alerts across ticks and runs
#
# The instance is the one a deployment gets: a DAGSTER_HOME holding the project's dagster.yaml
# (SQLite, one event database per run: storage ids repeat across runs) or deploy/dagster.postgres.yaml
# on the real server (one table: storage ids grow across runs). Failed checks come from real runs.

ROOT = Path(__file__).resolve().parents[2]


@dg.asset(
    key=["alert_probe"],
    check_specs=[dg.AssetCheckSpec("probe_ok", asset=["alert_probe"])],
    config_schema={"passed": dg.Field(bool, default_value=True)},
)
def _alert_probe(context):
    yield dg.Output(None)
    yield dg.AssetCheckResult(passed=context.op_execution_context.op_config["passed"], check_name="probe_ok")


def _probe_run(instance: dg.DagsterInstance, passed: bool) -> str:
    result = dg.materialize(
        [_alert_probe], instance=instance, run_config={"ops": {"alert_probe": {"config": {"passed": passed}}}}
    )
    assert result.success
    return result.run_id


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh database on the real server, dropped afterwards."""
    with fresh_pg_database("hybrid_alerts") as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def deployed_instance(request, tmp_path, monkeypatch) -> Iterator[dg.DagsterInstance]:
    """The instance of a DAGSTER_HOME holding the project's dagster.yaml or deploy/dagster.postgres.yaml."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    if request.param == "sqlite":
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    else:
        monkeypatch.setenv("DAGSTER_PG_URL", request.getfixturevalue("pg_database"))
        shutil.copy(ROOT / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def _alert_tick(instance: dg.DagsterInstance, cursor: str | None, alerts_file: Path) -> tuple[str | None, list[str]]:
    """One tick of ``check_failure_alerts``: its new cursor and the run ids of the alerts it sent."""
    from hybrid_pipeline.defs.automation.sensors import check_failure_alerts

    before = len(alerts_file.read_text().splitlines()) if alerts_file.exists() else 0
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"alerts": AlertsResource(file_path=str(alerts_file))}
    )
    result = check_failure_alerts.evaluate_tick(context)
    sent = [json.loads(line) for line in alerts_file.read_text().splitlines()[before:]] if alerts_file.exists() else []
    assert all(a["title"] == "check alert_probe:probe_ok failed" and a["kind"] == "check_failure" for a in sent)
    return result.cursor, [a["run_id"] for a in sent]


def test_each_failed_check_is_alerted_once_across_ticks_and_runs(deployed_instance, tmp_path):
    """Failed checks in several runs between ticks: each alerted exactly once, on the tick after
    it, whatever the storage (per-run SQLite shards repeat storage ids; PostgreSQL does not)."""
    instance, alerts = deployed_instance, tmp_path / "alerts.jsonl"
    first_failed = _probe_run(instance, passed=False)
    _probe_run(instance, passed=True)
    cursor, sent = _alert_tick(instance, None, alerts)
    assert sent == [first_failed]

    # Two failing runs (and a passing one) between ticks: both alerted, the first run not again.
    failed = [_probe_run(instance, passed=False), _probe_run(instance, passed=True), _probe_run(instance, passed=False)]
    cursor, sent = _alert_tick(instance, cursor, alerts)
    assert sorted(sent) == sorted([failed[0], failed[2]])

    # Nothing new: nothing sent, even though the last runs are re-read within the overlap and the
    # first one was updated again after it ended (as the run-retry daemon tags a failed run).
    instance.add_run_tags(first_failed, {"hybrid/retagged": "1"})
    cursor, sent = _alert_tick(instance, cursor, alerts)
    assert sent == []

    last = _probe_run(instance, passed=False)
    cursor, sent = _alert_tick(instance, cursor, alerts)
    assert sent == [last]
    cursor, sent = _alert_tick(instance, cursor, alerts)
    assert sent == []


def test_an_integer_cursor_of_the_previous_version_is_a_starting_point(deployed_instance, tmp_path):
    """The previous version kept a bare storage id as its cursor: a tick with one runs, loses no
    failed check (on SQLite, where that id means nothing across runs, it reads from the start) and
    moves to the new cursor, after which nothing is sent twice."""
    instance, alerts = deployed_instance, tmp_path / "alerts.jsonl"
    failed = _probe_run(instance, passed=False)
    cursor, sent = _alert_tick(instance, "0", alerts)
    assert sent == [failed]
    assert cursor and cursor != "0"
    cursor, sent = _alert_tick(instance, cursor, alerts)
    assert sent == []
    again = _probe_run(instance, passed=False)
    cursor, sent = _alert_tick(instance, cursor, alerts)
    assert sent == [again]


# --------------------------------------------------------------------------- models: drift check -> retraining
#
# The conditions evaluated are the project's own (``build_definitions``: the real graph, the real
# conditions); the instance is a real (ephemeral) one. What the daily run, the drift check run and a
# training run would record is written into it by real runs of stand-ins with the same keys.
# Ticks use the wall clock (check evaluations are compared with the tick's time), so the partitions
# are yesterday's and today's.

_P = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_offset=1, timezone="UTC")
_QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


_VERDICT = {"passed": dg.Field(bool, default_value=True)}


@dg.asset(key=USER_FEATURES, partitions_def=_P)
def _user_features() -> None:
    return None


@dg.asset_check(asset=USER_FEATURES, name=DRIFT_CHECK, partitions_def=_P, config_schema=_VERDICT)
def _feature_drift(context) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=context.op_execution_context.op_config["passed"], severity=dg.AssetCheckSeverity.WARN)


@dg.asset(key=USER_LABELS, partitions_def=_P)
def _user_labels() -> None:
    return None


@dg.asset(key=TRAINING_SET)
def _training_set() -> None:
    return None


@dg.asset(key=PURCHASE_MODEL, deps=[TRAINING_SET, USER_FEATURES])
def _purchase_model() -> None:
    return None


@dg.asset_check(asset=PURCHASE_MODEL, name=GATE_CHECK, blocking=True, config_schema=_VERDICT)
def _gate(context) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=context.op_execution_context.op_config["passed"])


_RECORDER = dg.Definitions(assets=[_user_features, _user_labels, _training_set, _purchase_model], asset_checks=[_feature_drift, _gate])


class _Automation:
    """Ticks of the models' automation conditions over the real graph, and the runs whose events they react to."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
        self.defs, self.instance, self.cursor = defs, instance, None
        self.job = _RECORDER.resolve_implicit_global_asset_job_def()

    def tick(self) -> dict:
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        requested = {}
        for r in result.results:
            if r.true_subset.size:
                partitioned = r.true_subset.is_partitioned
                requested[r.key] = set(r.true_subset.expensively_compute_partition_keys()) if partitioned else {None}
        return requested

    def _run(self, assets=(), checks=(), partition: str | None = None, passed: bool = True) -> dg.ExecuteInProcessResult:
        job = self.job.get_subset(asset_selection=set(assets), asset_check_selection=set(checks))
        config = {op: {"config": {"passed": passed}} for op in ("gold__user_features_feature_drift", "models__purchase_model_evaluation_gate")
                  if op in {node.name for node in job.graph.nodes}}
        return job.execute_in_process(instance=self.instance, tags={"dagster/partition": partition} if partition else {},
                                      raise_on_error=False, run_config={**_QUIET, "ops": config})

    def features_updated(self, day: str) -> None:
        """What the daily run records: a partition of gold/user_features (the drift check is not in that job)."""
        assert self._run(assets=[USER_FEATURES], partition=day).success

    def drift_verdict(self, day: str, drift: bool) -> None:
        """What the drift check's own run records: a verdict on the partition's latest materialization."""
        result = self._run(checks=[DRIFT_CHECK_KEY], partition=day, passed=not drift)
        [evaluation] = result.get_asset_check_evaluations()
        assert result.success and evaluation.passed is not drift and evaluation.partition == day

    def trained(self, gate_passed: bool) -> None:
        """What a training run records: a new model version and its blocking gate (a failing gate fails the run)."""
        result = self._run(assets=[PURCHASE_MODEL], checks=[GATE_CHECK_KEY], passed=gate_passed)
        [evaluation] = result.get_asset_check_evaluations()
        assert evaluation.passed is gate_passed and result.success is gate_passed

    def started_run(self, key: dg.AssetKey, partition: str | None = None) -> dg.DagsterRun:
        """A run of ``key`` that has started and not finished (what 'in progress' means to the conditions)."""
        job = self.job.get_subset(asset_selection={key}, asset_check_selection=set())
        return self.instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED,
                                                tags={"dagster/partition": partition} if partition else None)


@pytest.fixture
def models_automation(pipeline_env):
    instance = dg.DagsterInstance.ephemeral()
    auto = _Automation(build_definitions(pipeline_env.settings), instance)
    assert auto.tick() == {}  # the first evaluation only sets the baseline
    return auto


def _days() -> tuple[str, str]:
    today = datetime.now(timezone.utc).date()
    return (today - timedelta(days=1)).isoformat(), today.isoformat()


def test_the_models_sensor_runs_the_drift_check_apart_from_the_daily_load(repo):
    sensor = repo.get_sensor_def(AUTOMATION_SENSOR)
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    graph = repo.asset_graph
    assert sensor.asset_selection.resolve_checks(graph) >= {DRIFT_CHECK_KEY}
    assert sensor.asset_selection.resolve(graph) >= {PURCHASE_MODEL, PRODUCTION_PURCHASE_MODEL}
    assert graph.get(DRIFT_CHECK_KEY).automation_condition is not None
    daily = repo.get_job(PIPELINE_JOB).asset_layer.asset_graph
    assert USER_FEATURES in daily.executable_asset_keys and daily.asset_check_keys  # the daily load runs checks ...
    assert DRIFT_CHECK_KEY not in daily.asset_check_keys  # ... but not the drift check


def test_features_updated_without_drift_checks_drift_and_does_not_retrain(models_automation):
    auto, (yesterday, _) = models_automation, _days()
    auto.features_updated(yesterday)
    # the drift check is requested by itself for the updated partition, nothing else yet
    assert auto.tick() == {DRIFT_CHECK_KEY: {yesterday}}
    auto.drift_verdict(yesterday, drift=False)
    assert auto.tick() == {}
    assert auto.tick() == {}


def test_features_updated_with_drift_retrains_once(models_automation):
    auto, (yesterday, today) = models_automation, _days()
    auto.features_updated(yesterday)
    assert auto.tick() == {DRIFT_CHECK_KEY: {yesterday}}
    auto.drift_verdict(yesterday, drift=True)
    assert auto.tick() == {PURCHASE_MODEL: {None}}
    assert auto.tick() == {}  # requested: handled until something new happens
    # the next update's verdict decides alone: yesterday's failure, already answered, does not retrain again
    auto.features_updated(today)
    assert auto.tick() == {DRIFT_CHECK_KEY: {today}}
    auto.drift_verdict(today, drift=False)
    assert auto.tick() == {}
    # a failing verdict on today's rows does
    auto.features_updated(today)
    assert auto.tick() == {DRIFT_CHECK_KEY: {today}}
    auto.drift_verdict(today, drift=True)
    assert auto.tick() == {PURCHASE_MODEL: {None}}


def test_nothing_runs_while_upstream_is_in_progress(models_automation):
    auto, (yesterday, _) = models_automation, _days()
    # the features partition is being rewritten: no drift check on it yet
    auto.features_updated(yesterday)
    rewriting = auto.started_run(USER_FEATURES, yesterday)
    assert auto.tick() == {}
    auto.instance.report_run_failed(rewriting)
    assert auto.tick() == {DRIFT_CHECK_KEY: {yesterday}}
    # drift detected, but the training set is being rebuilt: wait ...
    auto.drift_verdict(yesterday, drift=True)
    rebuilding = auto.started_run(TRAINING_SET)
    assert auto.tick() == {}
    assert auto.tick() == {}
    # ... and retrain once it is over
    auto.instance.report_run_failed(rebuilding)
    assert auto.tick() == {PURCHASE_MODEL: {None}}


def test_new_labels_rebuild_the_training_set_once_and_not_while_they_are_written(models_automation):
    auto, (yesterday, today) = models_automation, _days()
    assert auto._run(assets=[USER_LABELS], partition=yesterday).success
    assert auto.tick() == {TRAINING_SET: {None}}
    assert auto.tick() == {}  # requested: handled until new labels land
    writing = auto.started_run(USER_LABELS, today)
    assert auto._run(assets=[USER_LABELS], partition=yesterday).success
    assert auto.tick() == {}  # labels of another day are still being written
    auto.instance.report_run_failed(writing)
    assert auto.tick() == {TRAINING_SET: {None}}


def test_a_new_version_is_promoted_only_after_its_gate_passed(models_automation):
    auto = models_automation
    auto.trained(gate_passed=False)
    assert auto.tick() == {}
    auto.trained(gate_passed=True)
    assert auto.tick() == {PRODUCTION_PURCHASE_MODEL: {None}}


def test_weekly_retrain_without_drift(pipeline_env):
    defs = build_definitions(pipeline_env.settings)
    auto = _Automation(defs, dg.DagsterInstance.ephemeral())
    sunday = datetime(2024, 1, 14, 23, 0, tzinfo=timezone.utc)

    def tick(at: datetime) -> int:
        result = dg.evaluate_automation_conditions(defs=defs, instance=auto.instance, cursor=auto.cursor, evaluation_time=at)
        auto.cursor = result.cursor
        return result.get_num_requested(PURCHASE_MODEL)

    assert tick(sunday) == 0
    monday = sunday + timedelta(hours=5, minutes=30)  # Monday 04:30 UTC: the weekly tick has passed
    assert tick(monday) == 0  # nothing updated since the tick yet
    auto.features_updated("2024-01-15")
    assert auto._run(assets=[TRAINING_SET]).success
    assert tick(monday + timedelta(minutes=5)) == 1
    label = defs.resolve_assets_def(PURCHASE_MODEL).automation_conditions_by_key[PURCHASE_MODEL].get_label()
    assert label and "drift or weekly" in label
