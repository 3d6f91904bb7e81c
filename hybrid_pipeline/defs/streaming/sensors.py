"""The event stream in the graph: what the stream consumer commits, and a sensor that watches it.

Design: the long-running consumer (``hybrid-pipeline stream``) is the only reader of the Redis
stream. After each exactly-once commit (:class:`~hybrid_pipeline.sources.stream.StreamConsumer`)
it reports what it committed to the Dagster instance (``instance.report_runless_asset_event``):

* ``bronze/events``: one ``AssetMaterialization`` per landing day the rows landed in (the
  partition; ``landing_date`` is the UTC day of the entry id, as for the stream rows in the
  table), with the rows committed, the first/last entry id and batch ``seq``, and the Delta
  version, by :class:`BronzeStreamReporter`;
* ``streaming/user_activity_1h`` (events and revenue per user over the last hour, in the online
  store): by :class:`ActivityReporter`, so its minutes-scale freshness policy is judged on real
  updates.

Why not a sensor that requests a run per tick: ``bronze/events`` is already the output of the
file-ingest asset (one key has one producing asset), and a stream is continuous: a run every
30 seconds is thousands of runs a day, each paying a process start for work a resident consumer
does in milliseconds per batch, with its own crash recovery from the Delta log. Reports are
batched (at most one per landing day every ``every_s`` seconds) so a busy stream does not flood
the event log, and sent after the commit: a crash between the two loses a report, never data.

``event_stream_sensor`` does no data work: it reads the consumer group's metadata (XINFO
GROUPS: pending entries, lag, last delivered id) and, when that changed, records it as an
``AssetObservation`` of ``bronze/events``, so a stalled consumer shows in the UI. It requests no
run and writes nothing.
"""

import json
import time
from dataclasses import dataclass
from typing import Any

import dagster as dg
import polars as pl
import redis

from hybrid_pipeline.dagster_support.keys import BRONZE_EVENTS, STREAMING_USER_ACTIVITY
from hybrid_pipeline.dagster_support.loading import current_settings
from hybrid_pipeline.dagster_support.metadata import catalog_metadata
from hybrid_pipeline.features import streaming
from hybrid_pipeline.lakehouse import catalog
from hybrid_pipeline.settings import Settings
from hybrid_pipeline.sources.stream import BatchResult, entry_id_of_line_number

STREAM = "events"
GROUP = "bronze"

streaming_user_activity = dg.AssetSpec(
    STREAMING_USER_ACTIVITY,
    deps=[BRONZE_EVENTS],
    description="Per user, events and revenue in the last hour (minute buckets) in the online store, merged "
    "by every committed micro-batch of the Redis stream; served with the batch features.",
    group_name="features",
    kinds={"feast", "sqlite", "redis"},  # the online store Feast and the serving API read
    owners=["team:ml-platform"],
    tags={"layer": "streaming"},
)


class OnlinePush:
    """Merges committed micro-batches into the online store; its clients stay open between batches.

    Opening and closing the store per batch cost 10-20 ms a batch (mostly the SQLite close).
    """

    def __init__(self, settings: Settings) -> None:
        from hybrid_pipeline.features.catalog import PROJECT
        from hybrid_pipeline.online import OnlineReader, OnlineWriter

        url = settings.online_store.url
        self.reader, self.writer = OnlineReader.from_url(url, PROJECT), OnlineWriter.from_url(url, PROJECT)

    def __call__(self, rows: pl.DataFrame, batch_id: str | None = None) -> int:
        """Users updated; ``batch_id`` (default: the batch's bronze id) makes a replay a no-op."""
        if batch_id is None and rows.height:
            batch_id = rows["file_sha256"][0]
        return streaming.push(rows, self.reader, self.writer, batch_id=batch_id)

    def close(self) -> None:
        self.reader.close()
        self.writer.close()

    def __enter__(self) -> "OnlinePush":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def push_streaming_features(rows, settings: Settings, batch_id: str | None = None) -> int:  # noqa: ANN001
    """One committed micro-batch's fresh per-user hourly counts into the online store."""
    with OnlinePush(settings) as push:
        return push(rows, batch_id=batch_id)


def activity_materialization(events: int, users: int, batches: int) -> dg.AssetMaterialization:
    return dg.AssetMaterialization(
        STREAMING_USER_ACTIVITY,
        description="streaming features pushed online",
        metadata={"events": events, "users_updated": users, "micro_batches": batches},
    )


class ActivityReporter:
    """Reports ``streaming/user_activity_1h`` to a Dagster instance, at most once per ``every_s``.

    Used around ``hybrid-pipeline stream``: at thousands of events a second the consumer
    commits several batches a second, and one event per batch would flood the event log.
    """

    def __init__(self, instance: dg.DagsterInstance, every_s: float = 30.0) -> None:
        self.instance = instance
        self.every_s = every_s
        self._last = float("-inf")
        self._pending = [0, 0, 0]  # events, users, batches since the last report

    def batch(self, rows: pl.DataFrame, users: int) -> None:
        self._pending = [self._pending[0] + rows.height, self._pending[1] + users, self._pending[2] + 1]
        if time.monotonic() - self._last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self._pending[2]:
            self.instance.report_runless_asset_event(activity_materialization(*self._pending))
            self._pending = [0, 0, 0]
            self._last = time.monotonic()


@dataclass
class _Landed:
    """What the consumer committed to one landing day since the last report."""

    first_id: str
    first_seq: int
    last_id: str = ""
    last_seq: int = 0
    rows: int = 0
    batches: int = 0
    delta_version: int = -1


def bronze_stream_materialization(table_uri: str, app_id: str, day: str, landed: _Landed) -> dg.AssetMaterialization:
    return dg.AssetMaterialization(
        BRONZE_EVENTS,
        partition=day,
        description=f"stream micro-batches committed by {app_id}",
        metadata={
            "new_records": landed.rows,  # as the file ingest reports its appended rows
            "micro_batches": landed.batches,
            "first_id": landed.first_id,
            "last_id": landed.last_id,
            "first_seq": landed.first_seq,
            "last_seq": landed.last_seq,
            "stream_app_id": app_id,
            "source_format": "stream",
            "delta_version": landed.delta_version,
            "dagster/uri": table_uri,
            **catalog_metadata(catalog.BRONZE_EVENTS),
        },
    )


class BronzeStreamReporter:
    """Reports the consumer's commits as materializations of ``bronze/events``, one per landing day,
    at most once per ``every_s`` (the first commit at once).

    ``commit`` is the consumer's ``on_commit`` hook: it runs after the Delta commit and the XACK,
    so only what is in the table is ever reported.
    """

    def __init__(self, instance: dg.DagsterInstance, table_uri: str, app_id: str, every_s: float = 30.0) -> None:
        self.instance = instance
        self.table_uri = table_uri
        self.app_id = app_id
        self.every_s = every_s
        self._last = float("-inf")
        self._pending: dict[str, _Landed] = {}

    def commit(self, result: BatchResult, rows: pl.DataFrame) -> None:
        days = (
            rows.group_by("landing_date")
            .agg(pl.len().alias("rows"), pl.col("line_number").min().alias("first"), pl.col("line_number").max().alias("last"))
            .sort("landing_date")
        )
        for day, count, first, last in days.iter_rows():
            landed = self._pending.setdefault(day, _Landed(entry_id_of_line_number(first), result.seq or 0))
            landed.rows += count
            landed.batches += 1
            landed.last_id = entry_id_of_line_number(last)
            landed.last_seq = result.seq or 0
            landed.delta_version = result.table_version if result.table_version is not None else -1
        if time.monotonic() - self._last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        for day, landed in sorted(self._pending.items()):
            self.instance.report_runless_asset_event(bronze_stream_materialization(self.table_uri, self.app_id, day, landed))
        if self._pending:
            self._pending = {}
            self._last = time.monotonic()


def consumer_group_state(redis_url: str, stream: str, group: str) -> dict[str, Any] | None:
    """Pending entries, lag and last delivered id of ``group`` on ``stream`` (None when either is missing).

    Stream metadata only (XINFO GROUPS, O(number of groups)): no entry is read or claimed.
    """
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:  # no such stream
        return None
    finally:
        client.close()
    info = next((g for g in groups if g["name"] == group), None)
    if info is None:
        return None
    return {
        "pending": int(info["pending"]),
        "lag": None if info.get("lag") is None else int(info["lag"]),  # None: Redis cannot tell (before 7.0, or after deletions)
        "last_delivered_id": info["last-delivered-id"],
        "consumers": int(info["consumers"]),
    }


def build_streaming(settings: Settings, stream: str = STREAM, group: str = GROUP) -> dg.Definitions:
    @dg.sensor(
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.STOPPED,  # needs a Redis server: switch on in the UI
        description=f"Observes consumer group {group!r} of the Redis stream {stream!r} (pending entries, lag, last "
        "delivered id) on bronze/events. Requests no run and writes nothing: `hybrid-pipeline stream` consumes the "
        "stream and reports the bronze/events materializations.",
    )
    def event_stream_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        state = consumer_group_state(settings.redis_url, stream, group)
        if state is None:
            return dg.SkipReason(f"no consumer group {group!r} on stream {stream!r} yet")
        cursor = json.dumps(state, sort_keys=True)
        if cursor == context.cursor:
            return dg.SkipReason("consumer group unchanged since the last tick")
        metadata = {"stream": stream, "group": group, **{k: v for k, v in state.items() if v is not None}}
        return dg.SensorResult(asset_events=[dg.AssetObservation(BRONZE_EVENTS, metadata=metadata)], cursor=cursor)

    return dg.Definitions(assets=[streaming_user_activity], sensors=[event_stream_sensor])


@dg.definitions
def defs() -> dg.Definitions:
    """The stream sensor under the load's settings (the Redis URL)."""
    return build_streaming(current_settings())
