"""Running unattended: the daily schedule, the landing-zone sensor and alert routing.

The jobs are used through their module (``jobs.daily_pipeline``): a job imported by name would be
found here too by ``dg.load_from_defs_folder`` and registered twice.
"""

import json
import warnings
from datetime import datetime, timedelta, timezone

import dagster as dg

from hybrid_pipeline.dagster_support.keys import BRONZE_LANDED_FILES, table_of
from hybrid_pipeline.dagster_support.resources import AlertsResource, LakehouseResource, LandingZoneResource
from hybrid_pipeline.defs.automation import jobs
from hybrid_pipeline.monitoring.notify import Alert
from hybrid_pipeline.sources.landing_watch import plan_landing_runs


LANDING_JOB_MAX_FILES = 200
"""At most this many files per landing-sensor tick (the rest wait for the next one)."""


@dg.schedule(
    job=jobs.daily_pipeline,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every day at 02:00 UTC: yesterday's landing day through the whole graph.",
)
def daily_pipeline_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    yesterday = (context.scheduled_execution_time.astimezone(timezone.utc) - timedelta(days=1)).date().isoformat()
    return dg.RunRequest(run_key=f"daily:{yesterday}", partition_key=yesterday)


@dg.sensor(
    job=jobs.daily_pipeline,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="New files in the landing zone -> a run for their landing day (run key from content hashes); "
    "contents already in the ingest ledger, whoever ingested them, trigger nothing.",
)
def landing_zone_sensor(
    context: dg.SensorEvaluationContext, landing: LandingZoneResource, lakehouse: LakehouseResource
) -> dg.SensorResult:
    runs, cursor = plan_landing_runs(
        landing.root, context.cursor, max_files=LANDING_JOB_MAX_FILES, ingested=ingested_hashes(lakehouse)
    )
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=r.run_key, partition_key=r.landing_date, tags={"landing_files": str(len(r.files))}) for r in runs],
        cursor=cursor,
    )


@dg.run_failure_sensor(default_status=dg.DefaultSensorStatus.RUNNING, description="Routes failed runs by what they touch.")
def run_failure_alerts(context: dg.RunFailureSensorContext, alerts: AlertsResource) -> None:
    run = context.dagster_run
    assets = tuple(sorted(k.to_user_string() for k in (run.asset_selection or [])))
    alert = Alert(
        title=f"run {run.job_name} failed" + (f" ({run.tags.get('dagster/partition')})" if run.tags.get("dagster/partition") else ""),
        severity="ERROR",
        kind="run_failure",
        assets=assets,
        run_id=run.run_id,
        details={"message": context.failure_event.message or ""},
    )
    alerts.router().route(alert)


CHECK_ALERTS_OVERLAP = timedelta(seconds=30)
"""Runs updated this long before a tick began are read again by the next tick: a run's update time
is its event's time, written a moment later, so a tick may read just before it lands."""

CHECK_ALERTS_MEMORY = timedelta(hours=6)
"""How long (after its newest check event) the sensor remembers what it read of a run, should the
run be read again on SQLite (a tag added after it ended, e.g. by the run-retry daemon, updates it)."""


def _read_check_alerts_cursor(raw: str | None) -> tuple[dg.RunShardedEventsCursor | None, dict[str, list]]:
    """The sensor's cursor: where to read on, and per run the highest storage id already read with its newest event time.

    A bare integer is the previous version's cursor (a storage id): a starting point. It filters
    storage ids on PostgreSQL; on SQLite, where each run has its own ids, reading starts from the
    first run (nothing lost; what the previous version sent before it stopped may be sent again once).
    """
    if not raw:
        return None, {}
    if raw.strip().lstrip("-").isdigit():
        return dg.RunShardedEventsCursor(id=int(raw), run_updated_after=datetime.fromtimestamp(0, timezone.utc)), {}
    state = json.loads(raw)
    after = datetime.fromtimestamp(state["run_updated_after"], timezone.utc)
    return dg.RunShardedEventsCursor(id=state["id"], run_updated_after=after), dict(state["runs"])


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Routes failed asset checks: ERROR on user-facing assets pages, the rest goes to the daytime channel.",
)
def check_failure_alerts(context: dg.SensorEvaluationContext, alerts: AlertsResource) -> dg.SkipReason | None:
    """Each failed check evaluation is routed once, whatever the event log storage.

    The default SQLite storage keeps one event database per run: storage ids repeat across runs and
    only "runs updated after" narrows a read, so the runs updated since the last tick (less an
    overlap) are read whole. PostgreSQL filters on the (global) storage id. Either way a re-read
    event is recognised by its run and storage id, storage ids growing within a run.
    """
    cursor, runs = _read_check_alerts_cursor(context.cursor)
    started = datetime.now(timezone.utc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # documented; no replacement lists checks across runs
        records = context.instance.get_event_records(
            dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=cursor),
            ascending=True,
        )
    top = cursor.id if cursor is not None else 0
    read: set[str] = set()
    sent = 0
    for record in records:
        entry = record.event_log_entry
        top = max(top, record.storage_id)
        read.add(entry.run_id)
        highest, newest = runs.get(entry.run_id, (-1, 0.0))
        runs[entry.run_id] = [max(highest, record.storage_id), max(newest, entry.timestamp)]
        if record.storage_id <= highest or entry.dagster_event is None:
            continue
        evaluation = entry.dagster_event.event_specific_data
        if isinstance(evaluation, dg.AssetCheckEvaluation) and not evaluation.passed:
            alerts.router().route(
                Alert(
                    title=f"check {evaluation.asset_key.to_user_string()}:{evaluation.check_name} failed",
                    severity=evaluation.severity.value,
                    kind="check_failure",
                    assets=(evaluation.asset_key.to_user_string(),),
                    run_id=entry.run_id,
                    details={"description": evaluation.description or ""},
                )
            )
            sent += 1
    forget_before = (started - CHECK_ALERTS_MEMORY).timestamp()
    kept = {run: seen for run, seen in runs.items() if run in read or seen[1] >= forget_before}
    context.update_cursor(
        json.dumps({"id": top, "run_updated_after": (started - CHECK_ALERTS_OVERLAP).timestamp(), "runs": kept})
    )
    return None if sent else dg.SkipReason("no failed checks since the last tick")


def ingested_hashes(lakehouse: LakehouseResource) -> frozenset[str]:
    """Content hashes in the ingest ledger (``bronze/landed_files``), whoever ran the ingest.

    The sensor's cursor only knows what the sensor requested; the ledger also knows what
    ``hybrid-pipeline materialize`` or a backfill ingested. Only the hash column is read,
    so a tick stays cheap as the ledger grows.
    """
    lh = lakehouse.lakehouse()
    table = table_of(BRONZE_LANDED_FILES)
    if not lh.exists(table):
        return frozenset()
    return frozenset(lh.scan(table).select("file_sha256").unique().collect().to_series().to_list())
