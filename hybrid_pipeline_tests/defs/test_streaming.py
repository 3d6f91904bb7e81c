"""The stream's online path: events published to Redis reach bronze once and the online store within a batch."""

from __future__ import annotations

import json
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


DAY_1, DAY_2 = datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(2024, 1, 2, tzinfo=timezone.utc)


def _publish_at(stream: str, day: datetime, count: int) -> list[str]:
    """``count`` entries whose ids (hence landing days) fall on ``day``."""
    client = redis.Redis.from_url(REDIS)
    ms = int(day.timestamp() * 1000)
    try:
        return [client.xadd(stream, {"payload": json.dumps(_event(i, "u", day))}, id=f"{ms}-{i}").decode() for i in range(count)]
    finally:
        client.close()


def test_the_stream_command_records_every_commit_as_a_bronze_events_materialization_of_its_landing_day(
    pipeline_env, stream_name
):
    from hybrid_pipeline import cli
    from hybrid_pipeline.dagster_support.keys import BRONZE_EVENTS

    day_1_ids = _publish_at(stream_name, DAY_1, 3)
    day_2_ids = _publish_at(stream_name, DAY_2, 2)
    args = ["stream", "--stream", stream_name, "--group", "g", "--consumer", "c1", "--batch-size", "2", "--block-ms", "0",
            "--max-idle-polls", "1", "--no-online"]
    assert cli.main(args) == 0  # batches [d1 d1] [d1 d2] [d2]: three commits, one spanning both days

    table_version = pipeline_env.lakehouse.version("bronze/events")
    with dg.DagsterInstance.get() as instance:  # the instance in DAGSTER_HOME, where the command reported
        records = instance.fetch_materializations(BRONZE_EVENTS, limit=100, ascending=True).records
        latest = instance.get_latest_materialization_event(BRONZE_EVENTS)
    by_day: dict[str, list[dict]] = {}
    for record in records:
        event = record.asset_materialization
        by_day.setdefault(event.partition, []).append({k: v.value for k, v in event.metadata.items()})

    bronze = pipeline_env.lakehouse.read("bronze/events")
    assert sorted(by_day) == ["2024-01-01", "2024-01-02"]
    for day, ids in (("2024-01-01", day_1_ids), ("2024-01-02", day_2_ids)):
        reports = by_day[day]
        # Every committed row reported once, under the day it landed in.
        assert sum(r["new_records"] for r in reports) == bronze.filter(pl.col("landing_date") == day).height == len(ids)
        assert (reports[0]["first_id"], reports[-1]["last_id"]) == (ids[0], ids[-1])
        assert all(r["stream_app_id"] == f"hybrid_pipeline.stream/{stream_name}/g/c1" for r in reports)
    assert by_day["2024-01-02"][-1]["delta_version"] == table_version
    assert by_day["2024-01-02"][-1]["last_seq"] == 3
    assert latest.asset_materialization.partition == "2024-01-02"
    assert latest.asset_materialization.metadata["last_id"].value == day_2_ids[-1]

    # Consuming again commits nothing and reports nothing.
    assert cli.main(args) == 0
    with dg.DagsterInstance.get() as instance:
        assert len(instance.fetch_materializations(BRONZE_EVENTS, limit=100).records) == len(records)


def test_a_stream_sensor_tick_commits_nothing_and_observes_the_consumer_group(pipeline_env, stream_name, instance):
    from hybrid_pipeline.dagster_support.keys import BRONZE_EVENTS
    from hybrid_pipeline.defs.streaming.sensors import GROUP, build_streaming

    _publish_at(stream_name, DAY_1, 3)
    with StreamConsumer(REDIS, stream_name, GROUP, "c1", pipeline_env.lakehouse, block_ms=0) as consumer:
        consumer.run(max_idle_polls=1)
    published_after = _publish_at(stream_name, DAY_2, 2)
    version = pipeline_env.lakehouse.version("bronze/events")
    sensor = build_streaming(pipeline_env.settings, stream=stream_name).resolve_sensor_def("event_stream_sensor")

    first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    assert first.run_requests == []
    assert pipeline_env.lakehouse.version("bronze/events") == version  # no data work in a tick
    assert pipeline_env.lakehouse.read("bronze/events").height == 3
    [observation] = first.asset_events
    assert isinstance(observation, dg.AssetObservation) and observation.asset_key == BRONZE_EVENTS
    assert observation.metadata["lag"].value == len(published_after)  # what the consumer has yet to read
    assert observation.metadata["pending"].value == 0

    second = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=first.cursor))
    assert second.asset_events == [] and "unchanged" in second.skip_message
    assert pipeline_env.lakehouse.version("bronze/events") == version


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
