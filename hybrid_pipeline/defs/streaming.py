"""The event stream in the graph: a sensor that drives the consumer, and the online push."""

import dagster as dg

from hybrid_pipeline.features import streaming
from hybrid_pipeline.settings import Settings

STREAM = "events"
GROUP = "bronze"


def push_streaming_features(rows, settings: Settings, batch_id: str | None = None) -> int:  # noqa: ANN001
    """After a committed micro-batch: fresh per-user hourly counts into the online store."""
    from hybrid_pipeline.defs.feature_store import FeatureStoreResource

    fs = FeatureStoreResource(repo_dir=str(settings.feature_repo_dir), online_store=settings.online_store)
    reader, writer = fs.reader(), fs.writer()
    try:
        return streaming.push(rows, reader, writer, batch_id=batch_id)
    finally:
        reader.close()
        writer.close()


def build_streaming(settings: Settings) -> dg.Definitions:
    @dg.sensor(
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.STOPPED,  # needs a Redis server: switch on in the UI
        description="Consumes the Redis stream 'events' into bronze/events (exactly once) and pushes hourly "
        "streaming features online; at most 20 micro-batches per tick.",
    )
    def event_stream_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        from hybrid_pipeline.lakehouse import Lakehouse
        from hybrid_pipeline.sources.stream import StreamConsumer

        consumer = StreamConsumer(
            settings.redis_url, STREAM, GROUP, "dagster-sensor", Lakehouse(settings.lakehouse_root),
            batch_size=2000, block_ms=0, on_batch=lambda rows: push_streaming_features(
                rows, settings, batch_id=rows["file_sha256"][0] if rows.height else None
            ),
        )
        with consumer:
            stats = consumer.run(max_batches=20, max_idle_polls=1)
        return dg.SkipReason(f"consumed {stats.rows} events in {stats.commits} commits")

    return dg.Definitions(sensors=[event_stream_sensor])
