"""Schedules and sensors: the daily run, the landing sensor and alert routing, as Dagster evaluates them."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import dagster as dg
import pytest

from hybrid_pipeline.defs.automation import AlertsResource
from hybrid_pipeline.defs.resources import LandingZoneResource
from hybrid_pipeline.definitions import build_definitions


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


def test_landing_sensor_requests_runs_for_new_files_and_resumes_from_its_cursor(repo, pipeline_env):
    sensor = repo.get_sensor_def("landing_zone_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    day = pipeline_env.landing / "events" / "2024-01-02"
    day.mkdir(parents=True)
    (day / "a.jsonl").write_text('{"event_id":"1"}\n')
    landing = LandingZoneResource(path=str(pipeline_env.landing))
    with dg.instance_for_test() as instance:
        first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, repository_def=repo, resources={"landing": landing}))
        assert [r.partition_key for r in first.run_requests] == ["2024-01-02"]
        again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, repository_def=repo, cursor=first.cursor, resources={"landing": landing}))
        assert again.run_requests == []
        (day / "b.jsonl").write_text('{"event_id":"2"}\n')
        third = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, repository_def=repo, cursor=again.cursor, resources={"landing": landing}))
        assert [r.partition_key for r in third.run_requests] == ["2024-01-02"]
        assert third.run_requests[0].run_key != first.run_requests[0].run_key


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
