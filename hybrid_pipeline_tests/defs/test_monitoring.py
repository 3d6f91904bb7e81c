"""Monitoring in the graph: run outcomes observed per job, table sizes from the Delta log."""

from __future__ import annotations

import os

import dagster as dg
import polars as pl

from hybrid_pipeline.dagster_support.metadata import table_size
from hybrid_pipeline.defs.monitoring.sensors import PIPELINE_RUNS, observe_runs, pipeline_run_monitor
from hybrid_pipeline.lakehouse import Lakehouse


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


def test_the_run_monitor_observes_successes_and_failures_per_job(instance):
    for job in (good_job, good_job, bad_job):
        job.execute_in_process(instance=instance, raise_on_error=False)
    sensor = pipeline_run_monitor

    result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))

    [observation] = result.asset_events
    assert observation.asset_key == PIPELINE_RUNS
    figures = {k: v.value for k, v in observation.metadata.items()}
    assert figures["good_job/succeeded"] == 2 and figures["good_job/failed"] == 0
    assert figures["bad_job/failed"] == 1
    assert figures["all/success_rate"] == round(2 / 3, 4)


def test_runs_outside_the_window_are_not_counted(instance):
    from datetime import datetime, timedelta, timezone

    good_job.execute_in_process(instance=instance)
    later = datetime.now(timezone.utc) + timedelta(hours=25)

    figures = {k: v.value for k, v in observe_runs(instance, now=later).metadata.items()}

    assert figures["all/succeeded"] == 0 and figures["all/success_rate"] == 1.0


def test_table_size_is_the_bytes_of_the_versions_data_files(tmp_path):
    lh = Lakehouse(str(tmp_path))
    lh.append("gold/t", pl.DataFrame({"x": list(range(1000))}))
    v = lh.append("gold/t", pl.DataFrame({"x": list(range(10))}))
    on_disk = sum(os.path.getsize(p) for p in (tmp_path / "gold" / "t").glob("*.parquet"))

    assert table_size(lh.uri("gold/t"), v) == {"table_bytes": on_disk, "table_files": 2}
    assert table_size(lh.uri("gold/t"), 0)["table_files"] == 1
    assert table_size("s3://bucket/t", v) == {}
