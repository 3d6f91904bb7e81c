"""The stream's online path: events published to Redis reach bronze once and the online store within a batch."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl
import pytest
import redis

from hybrid_pipeline.dagster_support.resources import FeatureStoreResource
from hybrid_pipeline.defs.streaming.sensors import push_streaming_features
from hybrid_pipeline.features.streaming import CombinedReader, merge_window
from hybrid_pipeline.sources.stream import StreamConsumer, produce

REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
def stream_name():
    name = f"hybrid-test:events:{uuid.uuid4().hex[:8]}"
    yield name
    redis.Redis.from_url(REDIS).delete(name)


def _event(i: int, user: str, at: datetime, revenue: float | None = None) -> dict:
    return {
        "event_id": f"s-{i}", "user_id": user, "session_id": "s", "event_type": "purchase" if revenue else "view",
        "timestamp": at.isoformat(), "product_id": "p", "session_duration": 1.0, "revenue": revenue,
        "user_segment": "new", "email": "x@example.com",
    }


def test_published_events_reach_bronze_once_and_the_online_hourly_counts(pipeline_env, stream_name):
    now = datetime.now(timezone.utc)
    recent = now - timedelta(minutes=5)
    events = [_event(i, f"u{i % 3}", recent, 10.0 if i % 10 == 0 else None) for i in range(30)]
    events += [_event(100, "u0", now - timedelta(hours=2)), _event(101, "u0", now - timedelta(hours=3))]
    assert produce(REDIS, stream_name, events) == 32
    settings = pipeline_env.settings

    def consume():
        consumer = StreamConsumer(
            REDIS, stream_name, "g", "c1", pipeline_env.lakehouse, batch_size=10, block_ms=0,
            on_batch=lambda rows: push_streaming_features(rows, settings, batch_id=rows["file_sha256"][0]),
        )
        with consumer:
            return consumer.run(max_idle_polls=1)

    stats = consume()
    assert stats.rows == 32 and stats.commits == 4
    assert pipeline_env.lakehouse.read("bronze/events").height == 32

    fs = FeatureStoreResource(repo_dir=str(settings.feature_repo_dir), online_store=settings.online_store.url)
    reader = CombinedReader(fs.reader())
    try:
        got = reader.get("user_features", ["u0", "u1", "u2", "nobody"])
    finally:
        reader.close()
    assert [g["events_1h"] if g else None for g in got] == [10, 10, 10, None]  # the 2 old u0 events are outside the hour
    # Purchases are events 0, 10 and 20: one each for u0, u1 and u2.
    assert [g["revenue_1h"] for g in got[:3]] == [10.0, 10.0, 10.0]
    # Consuming again changes nothing: already committed, already merged.
    assert consume().rows == 0
    assert pipeline_env.lakehouse.read("bronze/events").height == 32


def test_a_replayed_batch_is_not_counted_twice_and_old_buckets_fall_off():
    now = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)
    minute = int(now.timestamp() // 60)
    first = merge_window(None, {minute: (3, 5.0)}, now, batch_id="b1")
    again = merge_window(first, {minute: (3, 5.0)}, now, batch_id="b1")
    assert again["events_1h"] == 3 and again["revenue_1h"] == 5.0
    later = merge_window(again, {minute + 61: (1, 0.0)}, now + timedelta(minutes=61), batch_id="b2")
    assert later["events_1h"] == 1


def test_the_stream_sensor_consumes_and_reports_the_streaming_features_asset(pipeline_env, stream_name, instance):
    from hybrid_pipeline.dagster_support.keys import STREAMING_USER_ACTIVITY
    from hybrid_pipeline.defs.streaming.sensors import build_streaming

    now = datetime.now(timezone.utc)
    assert produce(REDIS, stream_name, [_event(i, f"u{i % 2}", now) for i in range(5)]) == 5
    sensor = build_streaming(pipeline_env.settings, stream=stream_name).resolve_sensor_def("event_stream_sensor")

    first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    [event] = first.asset_events
    assert event.asset_key == STREAMING_USER_ACTIVITY
    assert event.metadata["events"].value == 5 and event.metadata["users_updated"].value == 2
    assert pipeline_env.lakehouse.read("bronze/events").height == 5

    second = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    assert second.asset_events == [] and "no new events" in second.skip_message


def test_the_cli_reporter_batches_streaming_materializations(instance):
    from hybrid_pipeline.dagster_support.keys import STREAMING_USER_ACTIVITY
    from hybrid_pipeline.defs.streaming.sensors import ActivityReporter

    reporter = ActivityReporter(instance, every_s=3600)
    rows = pl.DataFrame({"event_id": ["a", "b", "c"]})
    reporter.batch(rows, users=2)  # the first batch is reported at once
    reporter.batch(rows, users=1)  # within the interval: held back
    reporter.batch(rows, users=1)
    reporter.flush()
    reporter.flush()  # nothing pending: no event

    events = instance.fetch_materializations(STREAMING_USER_ACTIVITY, limit=10).records
    metadata = sorted((e.asset_materialization.metadata["events"].value, e.asset_materialization.metadata["micro_batches"].value) for e in events)
    assert metadata == [(3, 1), (6, 2)]


def test_streaming_features_are_fresh_within_minutes_not_hours():
    from hybrid_pipeline.dagster_support.keys import STREAMING_USER_ACTIVITY
    from hybrid_pipeline.definitions import build_definitions
    from hybrid_pipeline.settings import Settings

    defs = build_definitions(Settings.from_env({}))
    spec = next(s for s in defs.resolve_all_asset_specs() if s.key == STREAMING_USER_ACTIVITY)
    assert spec.freshness_policy.fail_window.to_timedelta() == timedelta(minutes=15)


def test_one_online_push_serves_many_batches_and_a_replayed_batch_is_not_counted_twice(pipeline_env, stream_name):
    from hybrid_pipeline.defs.streaming.sensors import OnlinePush

    now = datetime.now(timezone.utc) - timedelta(minutes=1)
    settings = pipeline_env.settings
    with OnlinePush(settings) as push:
        for start in (0, 10):
            assert produce(REDIS, stream_name, [_event(i, f"u{i % 2}", now) for i in range(start, start + 10)]) == 10
            consumer = StreamConsumer(REDIS, stream_name, "g", "c1", pipeline_env.lakehouse, batch_size=4, block_ms=0, on_batch=push)
            with consumer:
                consumer.run(max_idle_polls=1)
        rows = pipeline_env.lakehouse.read("bronze/events")
        first_batch = rows.filter(pl.col("file_sha256") == rows["file_sha256"][0])
        push(first_batch)  # the same committed batch again: already merged

    fs = FeatureStoreResource(repo_dir=str(settings.feature_repo_dir), online_store=settings.online_store.url)
    reader = CombinedReader(fs.reader())
    try:
        got = reader.get("user_features", ["u0", "u1"])
    finally:
        reader.close()
    assert [g["events_1h"] for g in got] == [10, 10]


def test_the_combined_reader_merges_records_and_dates_them_by_their_oldest_part(tmp_path):
    from hybrid_pipeline.features.streaming import VIEW
    from hybrid_pipeline.online import OnlineReader, OnlineWriter

    url = f"sqlite://{tmp_path / 'online.db'}"
    batch_ts = datetime(2024, 3, 1, tzinfo=timezone.utc)
    stream_ts = batch_ts + timedelta(hours=6)
    minute = int(stream_ts.timestamp() // 60)
    with OnlineWriter.from_url(url, "p") as writer:
        writer.write_records("user_features", [("both", {"clicks": 4}, batch_ts, batch_ts),
                                               ("batch", {"clicks": 1}, batch_ts, None)])
        writer.write_records(VIEW, [(u, merge_window(None, {minute: (2, 3.0)}, stream_ts), stream_ts, None)
                                    for u in ("both", "new")])
    reader = CombinedReader(OnlineReader.from_url(url, "p"))
    try:
        both, batch, new, nobody = reader.get_records("user_features", ["both", "batch", "new", "nobody"])
        features = reader.get("user_features", ["both", "batch", "new", "nobody"])
    finally:
        reader.close()
    assert both.features == {"clicks": 4, "events_1h": 2, "revenue_1h": 3.0}  # no window internals (buckets, batch ids)
    assert both.event_ts == batch_ts  # the stalest part dates the record
    assert (batch.event_ts, new.event_ts, nobody) == (batch_ts, stream_ts, None)
    assert new.features == {"events_1h": 2, "revenue_1h": 3.0}
    assert features == [both.features, batch.features, new.features, None]
