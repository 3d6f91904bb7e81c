"""The event stream in the graph: a sensor that drives the consumer, and the online push.

``streaming/user_activity_1h`` (events and revenue per user over the last hour, in the online
store) is written by the stream consumer, not by a Dagster step: whoever runs the consumer (the
sensor, or ``hybrid-pipeline stream``) reports its materializations, so its minutes-scale
freshness policy is judged on real updates.
"""

import time

import dagster as dg
import polars as pl

from hybrid_pipeline.dagster_support.keys import BRONZE_EVENTS, STREAMING_USER_ACTIVITY
from hybrid_pipeline.dagster_support.loading import current_settings
from hybrid_pipeline.features import streaming
from hybrid_pipeline.settings import Settings

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


def build_streaming(settings: Settings, stream: str = STREAM) -> dg.Definitions:
    @dg.sensor(
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.STOPPED,  # needs a Redis server: switch on in the UI
        description=f"Consumes the Redis stream {stream!r} into bronze/events (exactly once) and pushes hourly "
        "streaming features online; at most 20 micro-batches per tick.",
    )
    def event_stream_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        from hybrid_pipeline.lakehouse import Lakehouse
        from hybrid_pipeline.sources.stream import StreamConsumer

        users = 0
        with OnlinePush(settings) as push:

            def on_batch(rows: pl.DataFrame) -> int:
                nonlocal users
                pushed = push(rows)
                users += pushed
                return pushed

            consumer = StreamConsumer(
                settings.redis_url, stream, GROUP, "dagster-sensor", Lakehouse(settings.lakehouse_root),
                batch_size=2000, block_ms=0, on_batch=on_batch,
            )
            with consumer:
                stats = consumer.run(max_batches=20, max_idle_polls=1)
        if not stats.commits:
            return dg.SensorResult(skip_reason=dg.SkipReason("no new events on the stream"))
        return dg.SensorResult(
            asset_events=[activity_materialization(stats.rows, users, stats.commits)],
            skip_reason=dg.SkipReason(f"consumed {stats.rows} events in {stats.commits} commits"),
        )

    return dg.Definitions(assets=[streaming_user_activity], sensors=[event_stream_sensor])


@dg.definitions
def defs() -> dg.Definitions:
    """The stream sensor under the load's settings (Redis URL, lakehouse and online store)."""
    return build_streaming(current_settings())
