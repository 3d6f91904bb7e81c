"""Pipeline monitoring in the graph: run outcomes per job, observed on a schedule of their own.

Per-asset volume, throughput and resource use ride on every materialization (see
:func:`hybrid_pipeline.dagster_support.metadata.measured`); quality figures on the check results. What no
single asset sees is how the jobs fare, so a sensor observes ``monitoring/pipeline_runs``
with the last 24 hours' successes and failures per job, and the UI plots them over time.
"""

from datetime import datetime, timedelta, timezone

import dagster as dg

from hybrid_pipeline.monitoring.runs import FINISHED, run_outcomes

PIPELINE_RUNS = dg.AssetKey(["monitoring", "pipeline_runs"])
WINDOW = timedelta(hours=24)

pipeline_runs = dg.AssetSpec(
    PIPELINE_RUNS,
    description="Runs that finished in the last 24 hours per job: succeeded, failed (or canceled) and the "
    "overall success rate, observed every 5 minutes from the Dagster instance.",
    group_name="monitoring",
    kinds={"dagster"},
    owners=["team:data-platform"],
    tags={"layer": "monitoring"},
)


def observe_runs(instance: dg.DagsterInstance, now: datetime | None = None) -> dg.AssetObservation:
    now = now or datetime.now(timezone.utc)
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus(s) for s in FINISHED], updated_after=now - WINDOW)
    )
    outcomes = run_outcomes((r.dagster_run.job_name, r.dagster_run.status.value) for r in records)
    return dg.AssetObservation(PIPELINE_RUNS, metadata={**outcomes, "window_hours": WINDOW.total_seconds() / 3600})


@dg.sensor(
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every 5 minutes: run successes and failures per job over the last 24 hours, observed on "
    "monitoring/pipeline_runs.",
)
def pipeline_run_monitor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    return dg.SensorResult(asset_events=[observe_runs(context.instance)])
