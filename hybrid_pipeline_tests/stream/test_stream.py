"""Redis stream -> bronze/events against a real Redis: exactly once across crashes and replays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
import redis
from deltalake import DeltaTable

from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.sources.generator import EventGenerator, GeneratorConfig
from hybrid_pipeline.sources.landing import BRONZE_SCHEMA, ingested_files
from hybrid_pipeline.sources.stream import (
    METADATA_KEY,
    STREAMING_FEATURES_SCHEMA,
    BatchResult,
    StreamConsumer,
    batch_id_of,
    line_number_of,
    parse_id,
    produce,
    publish_ms_of_line_number,
    stream_events,
    streaming_features,
)

TABLE = "bronze/events"
REPO_ROOT = Path(__file__).resolve().parents[2]


class Crash(Exception):
    """Stands for the process dying between the Delta commit and the XACK."""


def contract_events(n: int, seed: int = 7) -> list[dict]:
    cfg = GeneratorConfig(days=1, events_per_day=n, seed=seed, dirty_rate=0.0, start_date=date(2024, 1, 1))
    events = next(EventGenerator(cfg).days()).events.to_dicts()
    assert len(events) == n
    return events


def consumer(redis_url: str, stream: str, lakehouse: Lakehouse, **kw) -> StreamConsumer:
    kw.setdefault("batch_size", 100)
    kw.setdefault("block_ms", 20)
    return StreamConsumer(redis_url, stream, kw.pop("group", "bronze"), kw.pop("name", "c1"), lakehouse, TABLE, **kw)


def bronze(lakehouse: Lakehouse) -> pl.DataFrame:
    return lakehouse.read(TABLE).sort("line_number")


def pending(client: redis.Redis, stream: str, group: str = "bronze") -> int:
    return int(client.xpending(stream, group)["pending"])


def stream_commits(lakehouse: Lakehouse) -> list[dict]:
    return [c for c in reversed(lakehouse.history(TABLE)) if METADATA_KEY in c]


def test_n_events_give_exactly_n_bronze_rows(redis_url, redis_client, stream_name, lakehouse):
    events = contract_events(1000)
    assert produce(redis_url, stream_name, events) == 1000

    with consumer(redis_url, stream_name, lakehouse, batch_size=128) as c:
        stats = c.run(max_idle_polls=1)

    assert stats.rows == 1000 and stats.commits == 8 and stats.acked == 1000
    df = bronze(lakehouse)
    assert df.height == 1000
    assert df.schema == pl.Schema(BRONZE_SCHEMA)
    # Payload is the JSON text as published, in publish order.
    assert df["payload"].to_list() == [json.dumps(e, separators=(",", ":"), default=str) for e in events]
    assert set(df["source_format"]) == {"stream"}
    assert set(df["source_file"]) == {f"stream:{stream_name}"}
    assert df["line_number"].is_unique().all() and df["line_number"].is_sorted()
    # line_number and landing_date come from the entry ids.
    ids = [i.decode() for i, _ in redis_client.xrange(stream_name)]
    assert df["line_number"].to_list() == [line_number_of(i) for i in ids]
    ms = parse_id(ids[0])[0]
    assert df["landing_date"][0] == datetime.fromtimestamp(ms / 1000, tz=timezone.utc).date().isoformat()
    assert publish_ms_of_line_number(df["line_number"][0]) == ms
    # file_sha256 holds the deterministic batch id of the entries it came with.
    first_batch = df.filter(pl.col("file_sha256") == df["file_sha256"][0])
    assert first_batch.height == 128
    assert df["file_sha256"][0] == batch_id_of(stream_name, ids[:128])
    assert pending(redis_client, stream_name) == 0


def test_crash_between_commit_and_ack_does_not_duplicate(redis_url, redis_client, stream_name, lakehouse):
    produce(redis_url, stream_name, contract_events(450))

    def crash(result: BatchResult) -> None:
        if result.seq == 2:
            raise Crash

    first = consumer(redis_url, stream_name, lakehouse, _after_commit=crash)
    with pytest.raises(Crash):
        first.run()
    first.close()
    # Batch 2 is in Delta but not acknowledged: 200 rows, 100 entries pending.
    assert bronze(lakehouse).height == 200
    assert pending(redis_client, stream_name) == 100
    version_after_crash = lakehouse.version(TABLE)

    # A new instance with the same group/consumer name: the pending entries come first,
    # are recognised as committed, and are only acknowledged.
    with consumer(redis_url, stream_name, lakehouse) as second:
        assert second.committed_seq == 2
        recovered = second.consume_once()
        assert recovered.from_pending and recovered.read == 100
        assert recovered.skipped_committed == 100 and recovered.rows == 0 and recovered.seq is None
        assert recovered.acked == 100
        assert lakehouse.version(TABLE) == version_after_crash  # nothing written
        assert pending(redis_client, stream_name) == 0
        stats = second.run(max_idle_polls=1)

    assert stats.rows == 250
    df = bronze(lakehouse)
    assert df.height == 450 and df["line_number"].is_unique().all()
    assert pending(redis_client, stream_name) == 0
    assert [c[METADATA_KEY]["seq"] for c in stream_commits(lakehouse)] == [1, 2, 3, 4, 5]


def test_process_killed_after_commit_then_restart(redis_url, redis_client, stream_name, lakehouse):
    """A real crash: the process exits (os._exit) right after its first commit."""
    produce(redis_url, stream_name, contract_events(300))
    script = textwrap.dedent(
        f"""
        import os
        from hybrid_pipeline.lakehouse import Lakehouse
        from hybrid_pipeline.sources.stream import StreamConsumer
        c = StreamConsumer({redis_url!r}, {stream_name!r}, "bronze", "c1", Lakehouse({lakehouse.root!r}),
                           batch_size=120, block_ms=20, _after_commit=lambda result: os._exit(17))
        c.run()
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, timeout=120)
    assert proc.returncode == 17, proc.stderr.decode()[-2000:]
    assert bronze(lakehouse).height == 120
    assert pending(redis_client, stream_name) == 120

    with consumer(redis_url, stream_name, lakehouse, batch_size=120) as c:
        stats = c.run(max_idle_polls=1)
    assert stats.skipped_committed == 120 and stats.rows == 180
    assert bronze(lakehouse).height == 300
    assert pending(redis_client, stream_name) == 0


def test_replayed_batches_are_not_written_twice(redis_url, redis_client, stream_name, lakehouse):
    produce(redis_url, stream_name, contract_events(200))
    with consumer(redis_url, stream_name, lakehouse) as c:
        assert c.run(max_idle_polls=1).commits == 2
        version = lakehouse.version(TABLE)
        # Replay both batches: the group's cursor goes back to the start of the stream.
        redis_client.xgroup_setid(stream_name, "bronze", "0")
        replay = c.run(max_idle_polls=1)
    assert replay.batches == 2 and replay.skipped_committed == 200 and replay.rows == 0 and replay.commits == 0
    assert lakehouse.version(TABLE) == version
    assert bronze(lakehouse).height == 200
    assert pending(redis_client, stream_name) == 0

    # Replay again with a fresh instance, plus 50 new entries: only those are written.
    produce(redis_url, stream_name, contract_events(250)[200:])
    redis_client.xgroup_setid(stream_name, "bronze", "0")
    with consumer(redis_url, stream_name, lakehouse) as c:
        stats = c.run(max_idle_polls=1)
    assert stats.skipped_committed == 200 and stats.rows == 50 and stats.commits == 1
    assert bronze(lakehouse).height == 250 and bronze(lakehouse)["line_number"].is_unique().all()


def test_failure_before_commit_rewrites_from_pending(redis_url, redis_client, stream_name, lakehouse, monkeypatch):
    produce(redis_url, stream_name, contract_events(150))
    c = consumer(redis_url, stream_name, lakehouse)
    original = StreamConsumer._commit
    calls = {"n": 0}

    def failing_commit(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("storage unavailable")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StreamConsumer, "_commit", failing_commit)
    with pytest.raises(OSError):
        c.run()
    assert bronze(lakehouse).height == 100 and pending(redis_client, stream_name) == 50
    retry = c.consume_once()  # same instance, state re-read from the table and the PEL
    assert retry.from_pending and retry.rows == 50 and retry.seq == 2
    c.close()
    assert bronze(lakehouse).height == 150 and pending(redis_client, stream_name) == 0


def test_malformed_payloads_are_kept_as_text(redis_url, redis_client, stream_name, lakehouse):
    odd = ['{"event_id": "e1", "user_id": "u1"', "not json at all", "", "[1, 2, 3]", '{"ok": true}']
    produce(redis_url, stream_name, odd)
    redis_client.xadd(stream_name, {"payload": b"\xff\xfebinary"})
    redis_client.xadd(stream_name, {"user_id": "u9", "event_type": "view"})  # not the producer's shape
    with consumer(redis_url, stream_name, lakehouse) as c:
        stats = c.run(max_idle_polls=1)
    assert stats.rows == 7
    payloads = bronze(lakehouse)["payload"].to_list()
    assert payloads[:5] == odd
    assert payloads[5] == "\\xff\\xfebinary"
    assert json.loads(payloads[6]) == {"user_id": "u9", "event_type": "view"}


def test_history_has_one_commit_per_batch_with_app_transaction(redis_url, stream_name, lakehouse):
    produce(redis_url, stream_name, contract_events(300))
    with consumer(redis_url, stream_name, lakehouse) as c:
        results = c.run(max_idle_polls=1).results
        app_id = c.app_id
    assert [r.seq for r in results] == [1, 2, 3]
    commits = stream_commits(lakehouse)
    assert len(commits) == 3 == len(lakehouse.history(TABLE))
    uri = lakehouse.uri(TABLE)
    for seq, (commit, result) in enumerate(zip(commits, results, strict=True), start=1):
        meta = commit[METADATA_KEY]
        assert commit["operation"] == "WRITE" and commit["operationMetrics"]["num_added_rows"] == 100
        assert meta["app_id"] == app_id and meta["seq"] == seq and meta["messages"] == 100
        assert (meta["first_id"], meta["last_id"], meta["batch_id"]) == (result.first_id, result.last_id, result.batch_id)
        assert commit["version"] == result.table_version
        # The application transaction is part of that very commit.
        assert DeltaTable(uri, version=commit["version"]).transaction_version(app_id) == seq
    assert DeltaTable(uri).transaction_version(app_id) == 3


def test_on_batch_receives_the_committed_rows(redis_url, stream_name, lakehouse):
    produce(redis_url, stream_name, contract_events(250))
    seen: list[tuple[pl.DataFrame, int]] = []
    with consumer(redis_url, stream_name, lakehouse, on_batch=lambda df: seen.append((df, lakehouse.version(TABLE)))) as c:
        results = c.run(max_idle_polls=1).results
    assert [df.height for df, _ in seen] == [100, 100, 50]
    assert [v for _, v in seen] == [r.table_version for r in results]  # called after the commit
    assert pl.concat([df for df, _ in seen]).equals(bronze(lakehouse))


def test_streaming_features_from_a_batch(redis_url, stream_name, lakehouse):
    def ev(user, ts, event_type="view", revenue=None, **extra):
        record = {"user_id": user, "timestamp": ts, "event_type": event_type, "revenue": revenue, **extra}
        return {k: v for k, v in record.items() if v is not None or k == "revenue"}

    events = [
        ev("a", "2024-03-01T10:00:01.000Z"),
        ev("a", "2024-03-01T10:30:00Z", "purchase", 10.0),
        ev("a", "2024-03-01T11:45:00+01:00", "purchase", 5.5),  # 10:45 UTC
        ev("a", "2024-03-01T10:00:00Z", "purchase", 99.0),  # exactly 1 h before as_of: outside
        ev("a", "2024-03-01T09:00:00Z", "purchase", 7.0),  # earlier: outside
        ev("b", "2024-03-01T10:59:00", "purchase", -3.0),  # naive -> UTC; negative revenue -> 0
        ev("b", "2024-03-01T10:15:00Z", "purchase", "x"),  # invalid revenue -> 0
        ev("c", "2024-03-01T12:00:00Z"),  # after as_of when as_of is explicit
        ev(None, "2024-03-01T10:10:00Z"),  # no user: ignored
        ev("d", "31/02/2024 25:61"),  # bad timestamp: ignored
    ]
    produce(redis_url, stream_name, [*events, "{broken"])
    batches: list[pl.DataFrame] = []
    with consumer(redis_url, stream_name, lakehouse, on_batch=batches.append) as c:
        c.run(max_idle_polls=1)
    rows = pl.concat(batches)
    assert rows.height == 11

    as_of = datetime(2024, 3, 1, 11, 0, tzinfo=timezone.utc)
    feats = streaming_features(rows, as_of=as_of)
    assert feats.schema == pl.Schema(STREAMING_FEATURES_SCHEMA)
    got = {r["user_id"]: (r["events_1h"], r["revenue_1h"]) for r in feats.iter_rows(named=True)}
    assert got == {"a": (3, 15.5), "b": (2, 0.0)}
    assert feats.filter(pl.col("user_id") == "b")["last_event_at"][0] == datetime(2024, 3, 1, 10, 59, tzinfo=timezone.utc)
    assert set(feats["as_of"]) == {as_of}

    # Default as_of: the latest event of the batch (12:00): the window (11:00, 12:00] holds only c.
    default = streaming_features(rows)
    assert default["as_of"][0] == datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
    assert {r["user_id"]: r["events_1h"] for r in default.iter_rows(named=True)} == {"c": 1}
    assert streaming_features(rows.head(0)).schema == pl.Schema(STREAMING_FEATURES_SCHEMA)


def _stream_events_by_path(rows_df: pl.DataFrame) -> pl.DataFrame:
    """The reference reading: one JSON path lookup per field."""
    from hybrid_pipeline.transforms.silver import parse_timestamps

    payload = pl.col("payload")
    return rows_df.select(
        payload.str.json_path_match("$.user_id").alias("user_id"),
        parse_timestamps(payload.str.json_path_match("$.timestamp")).alias("ts"),
        payload.str.json_path_match("$.revenue").cast(pl.Float64, strict=False).alias("revenue"),
    ).filter(pl.col("user_id").is_not_null() & (pl.col("user_id") != "") & pl.col("ts").is_not_null())


ODD_PAYLOADS = [
    '{"user_id":"u1","timestamp":"2024-01-01T00:00:00+00:00","revenue":12.5}',
    '{"user_id":"u1","timestamp":"2024-01-01T01:30:00.123456+02:00","revenue":null}',
    '{"user_id":"u2","timestamp":"2024-01-01 00:00:00","revenue":"3"}',  # space separator, naive
    '{"user_id":"u3","timestamp":" 2024-01-01T00:00:00Z ","revenue":-1}',  # stray whitespace
    '{"user_id":"u3","timestamp":"2024-01-01T00:00:00Z","revenue":1E2}',
    '{"user_id":"u4","timestamp":"2024-01-01","revenue":true}',  # a date; a boolean revenue
    '{"user_id":"u4","timestamp":"2024-01-01T05:06","revenue":"abc"}',
    '{"user_id":"u5","timestamp":"garbage","revenue":1}',
    '{"user_id":"","timestamp":"2024-01-01T00:00:00+00:00"}',
    '{"user_id": "spaced", "timestamp": "2024-01-01T00:00:00+05:30", "revenue": 2}',
    '{"user_id":1.0,"timestamp":"2024-01-01T00:00:00+00:00"}',  # a float id: the path says "1.0"
    '{"user_id":7,"timestamp":"2024-01-01T00:00:00+00:00"}',
    '{"user_id":"d1","user_id":"d2","timestamp":"2024-01-01T00:00:00+00:00"}',  # duplicate key: the last
    '{"user_id":"t","timestamp":"2024-01-01T00:00:00+00:00","timestamp":"2024-02-01T00:00:00+00:00"}',
    '{"user_id":"x","timestamp":1700000000}',
    '{"timestamp":"2024-01-01T00:00:00+00:00"}',
    '{"user_id":"note","timestamp":"2024-01-01T00:00:00+00:00","note":"user_id"}',
    "null",
    '{"user_id":"u9","timestamp":"2024-01-01T00:00:00.5-03:00","revenue":0.1}',
    '{"user_id":"\u00e9","timestamp":"2024-06-30T23:59:59.999999+14:00"}',
]
MALFORMED_PAYLOADS = ["not json", "", "[1]", '{"user_id":{"a":1},"timestamp":"2024-01-01T00:00:00+00:00"}', "{broken"]


@pytest.mark.parametrize(
    "payloads",
    [ODD_PAYLOADS, ODD_PAYLOADS + MALFORMED_PAYLOADS, MALFORMED_PAYLOADS, ODD_PAYLOADS[:1], []],
    ids=["odd", "odd+malformed", "malformed", "one", "empty"],
)
def test_stream_events_reads_payloads_as_json_paths_would(payloads):
    rows = pl.DataFrame({"payload": payloads}, schema={"payload": pl.String})
    assert stream_events(rows).equals(_stream_events_by_path(rows))


def test_stream_events_of_contract_events_equal_the_path_reading():
    events = contract_events(3000, seed=11)
    for i, e in enumerate(events):  # the forms producers send: ISO-8601 with an offset, and others
        e["timestamp"] = ["2024-01-01T10:00:00.250+00:00", "2024-01-01T10:00:00Z", "2024-01-01 10:00:00"][i % 3]
    rows = pl.DataFrame({"payload": [json.dumps(e, separators=(",", ":"), default=str) for e in events]})
    got = stream_events(rows)
    assert got.height == 3000 and got.equals(_stream_events_by_path(rows))


def test_stream_rows_join_file_landings_in_the_same_table(redis_url, stream_name, lakehouse):
    file_rows = pl.DataFrame(
        {
            "landing_date": ["2024-01-01"] * 2,
            "source_file": ["events/2024-01-01/events-0000.jsonl"] * 2,
            "source_format": ["jsonl"] * 2,
            "line_number": [1, 2],
            "file_sha256": ["f" * 64] * 2,
            "ingested_at": [datetime(2024, 1, 2, tzinfo=timezone.utc)] * 2,
            "payload": ['{"a":1}', '{"a":2}'],
        },
        schema=BRONZE_SCHEMA,
    )
    lakehouse.append(TABLE, file_rows, partition_by=["landing_date"])
    produce(redis_url, stream_name, contract_events(120))
    with consumer(redis_url, stream_name, lakehouse) as c:
        c.run(max_idle_polls=1)
    df = bronze(lakehouse)
    assert df.height == 122
    assert lakehouse.delta(TABLE).metadata().partition_columns == ["landing_date"]
    ledger = ingested_files(lakehouse.scan(TABLE))
    assert ledger["f" * 64][1] == 2 and sum(v[1] for v in ledger.values()) == 122


def test_two_consumers_in_one_group_lose_nothing(redis_url, redis_client, stream_name, lakehouse):
    """Entries of one group interleave between its consumers, so each keeps its own watermark:
    b's pending entries lie below a's watermark and must still be written."""
    produce(redis_url, stream_name, contract_events(200))
    a = consumer(redis_url, stream_name, lakehouse, name="a", batch_size=50)
    b = consumer(redis_url, stream_name, lakehouse, name="b", batch_size=50)
    assert a.consume_once().rows == 50  # entries 1-50

    def storage_down(*args, **kwargs):
        raise OSError("storage unavailable")

    b._commit = storage_down  # b reads 51-100 and fails before committing
    with pytest.raises(OSError):
        b.consume_once()
    b.close()
    assert a.consume_once().rows == 50  # entries 101-150: a's watermark is now above b's pending
    assert pending(redis_client, stream_name) == 50

    with consumer(redis_url, stream_name, lakehouse, name="b", batch_size=50) as b2:
        recovered = b2.consume_once()
        assert recovered.from_pending and recovered.rows == 50 and recovered.seq == 1
        b2.run(max_idle_polls=1)
    a.close()
    assert a.app_id != b2.app_id
    df = bronze(lakehouse)
    assert df.height == 200 and df["line_number"].is_unique().all()
    assert pending(redis_client, stream_name) == 0


def test_stale_instance_resynchronises_with_the_table(redis_url, stream_name, lakehouse):
    produce(redis_url, stream_name, contract_events(100))
    old = consumer(redis_url, stream_name, lakehouse, batch_size=40)
    old.consume_once()
    with consumer(redis_url, stream_name, lakehouse, batch_size=40) as new:
        assert new.committed_seq == 1
        assert new.consume_once().seq == 2
    # The old incarnation still believes seq 1; it must continue from the table's seq 2.
    result = old.consume_once()
    old.close()
    assert result.seq == 3 and result.rows == 20
    assert bronze(lakehouse).height == 100


def test_produce_rate_limit(redis_url, redis_client, stream_name):
    start = time.perf_counter()
    assert produce(redis_url, stream_name, ({"i": i} for i in range(600)), rate=2000.0, maxlen=10_000) == 600
    elapsed = time.perf_counter() - start
    assert 0.2 <= elapsed <= 1.5, elapsed  # about 0.3 s at 2000/s (first 50 ms burst is free)
    assert redis_client.xlen(stream_name) == 600
    with pytest.raises(ValueError):
        produce(redis_url, stream_name, [{}], rate=0)


def test_empty_stream_consumes_nothing_and_creates_group(redis_url, redis_client, stream_name, lakehouse):
    with consumer(redis_url, stream_name, lakehouse, block_ms=0) as c:
        assert c.consume_once() == BatchResult()
        assert c.watermark == "0-0" and c.committed_seq == 0
    assert [g["name"] for g in redis_client.xinfo_groups(stream_name)] == [b"bronze"]
    assert not lakehouse.exists(TABLE)
    assert os.path.isdir(lakehouse.root)


def test_pending_entry_trimmed_before_commit_is_counted_not_invented(redis_url, redis_client, stream_name, lakehouse):
    produce(redis_url, stream_name, contract_events(30))
    c = consumer(redis_url, stream_name, lakehouse)

    def storage_down(*args, **kwargs):
        raise OSError("storage unavailable")

    c._commit = storage_down
    with pytest.raises(OSError):
        c.consume_once()
    c.close()
    gone = redis_client.xrange(stream_name, count=1)[0][0]
    redis_client.xdel(stream_name, gone)  # e.g. MAXLEN trimming while the entry was pending
    with consumer(redis_url, stream_name, lakehouse) as c2:
        result = c2.consume_once()
    assert result.from_pending and result.read == 30 and result.missing == 1 and result.rows == 29
    assert result.acked == 30 and pending(redis_client, stream_name) == 0
    assert bronze(lakehouse).height == 29


def test_resp3_connection(redis_url, redis_client, stream_name, lakehouse):
    url = redis_url + ("&" if "?" in redis_url else "?") + "protocol=3"
    produce(url, stream_name, contract_events(20))
    with consumer(url, stream_name, lakehouse, batch_size=8) as c:
        assert c.run(max_idle_polls=1).rows == 20
    assert bronze(lakehouse).height == 20 and pending(redis_client, stream_name) == 0


# -- the online hourly window ------------------------------------------------------------
def test_the_window_is_merged_exactly_and_stored_as_packed_bytes():
    import msgpack

    from hybrid_pipeline.features.streaming import merge_window
    from hybrid_pipeline.online.packing import pack_record, unpack_features

    now = datetime(2024, 1, 1, 12, 0, 30, tzinfo=timezone.utc)
    minute = int(now.timestamp() // 60)
    first = merge_window(None, {minute - 1: (2, 1.5), minute: (1, 0.25)}, now, batch_id="a" * 64)
    assert (first["events_1h"], first["revenue_1h"]) == (3, 1.75)
    assert isinstance(first["buckets"], bytes) and isinstance(first["batches"], bytes)  # one opaque value each
    assert msgpack.unpackb(first["buckets"]) == [[minute - 1, 2, 1.5], [minute, 1, 0.25]]
    assert msgpack.unpackb(first["batches"]) == ["a" * 16]
    stored = unpack_features(pack_record(first, now))
    second = merge_window(stored, {minute: (2, 1.0), minute - 70: (5, 9.0)}, now, batch_id="b" * 64)  # -70: outside
    assert (second["events_1h"], second["revenue_1h"]) == (5, 2.75)
    assert msgpack.unpackb(second["buckets"]) == [[minute - 1, 2, 1.5], [minute, 3, 1.25]]
    replayed = merge_window(second, {minute: (2, 1.0)}, now, batch_id="a" * 64)
    assert (replayed["events_1h"], replayed["revenue_1h"]) == (5, 2.75)
    # An hour later every bucket has fallen off; the last 50 batch ids are remembered.
    record = second
    for i in range(60):
        record = merge_window(record, {}, now + timedelta(minutes=60), batch_id=f"x{i:02d}")
    assert record["events_1h"] == 0 and msgpack.unpackb(record["buckets"]) == []
    assert msgpack.unpackb(record["batches"]) == [f"x{i:02d}" for i in range(10, 60)]


def test_records_holding_the_window_as_json_text_are_merged_too():
    import msgpack

    from hybrid_pipeline.features.streaming import merge_window

    now = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)
    minute = int(now.timestamp() // 60)
    full_id = "c" * 64
    earlier_form = {
        "events_1h": 4, "revenue_1h": 3.0,
        "buckets": json.dumps({str(minute - 2): [3, 3.0], str(minute - 61): [1, 0.0]}),
        "batches": json.dumps([full_id]),
    }
    merged = merge_window(earlier_form, {minute: (1, 2.5)}, now, batch_id="d" * 64)
    assert (merged["events_1h"], merged["revenue_1h"]) == (4, 5.5)
    assert msgpack.unpackb(merged["buckets"]) == [[minute - 2, 3, 3.0], [minute, 1, 2.5]]
    assert msgpack.unpackb(merged["batches"]) == [full_id, "d" * 16]
    assert merge_window(earlier_form, {minute: (1, 2.5)}, now, batch_id=full_id)["events_1h"] == 3  # replay: aged only
