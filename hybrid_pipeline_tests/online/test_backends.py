"""Backends (SQLite and a real Redis): one record per key, the newer record wins."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hybrid_pipeline.online import BackendSpec, RedisBackend, SqliteBackend, open_backend, parse_online_url
from hybrid_pipeline.online.packing import pack_record, unpack_record

from .conftest import REDIS_URL


def row(key: str, event_us: int, value, created_us=None):
    return key, event_us, created_us, pack_record({"v": value}, event_us, created_us)


def stored(backend, table: str, key: str):
    blob = backend.read_one(table, key)
    return None if blob is None else unpack_record(blob).features["v"]


# --------------------------------------------------------------------------- URL syntax


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, BackendSpec("sqlite", "default.db")),
        ("", BackendSpec("sqlite", "default.db")),
        ("sqlite", BackendSpec("sqlite", "default.db")),
        ("SQLite", BackendSpec("sqlite", "default.db")),
        ("sqlite:///tmp/x.db", BackendSpec("sqlite", "/tmp/x.db")),
        ("sqlite://rel/x.db", BackendSpec("sqlite", "rel/x.db")),
        ("sqlite:x.db", BackendSpec("sqlite", "x.db")),
        ("/abs/online.sqlite3", BackendSpec("sqlite", "/abs/online.sqlite3")),
        ("redis://127.0.0.1:6379/0", BackendSpec("redis", "redis://127.0.0.1:6379/0")),
        ("rediss://:pw@host:6380/2", BackendSpec("redis", "rediss://:pw@host:6380/2")),
        ("unix:///run/redis.sock", BackendSpec("redis", "unix:///run/redis.sock")),
    ],
)
def test_online_store_settings_choose_the_backend(value, expected):
    assert parse_online_url(value, "default.db") == expected


def test_relative_sqlite_paths_resolve_against_base_dir_absolute_ones_do_not():
    assert parse_online_url("sqlite", "data/o.db", "/repo").target == "/repo/data/o.db"
    assert parse_online_url("sqlite:///abs/o.db", "data/o.db", "/repo").target == "/abs/o.db"


@pytest.mark.parametrize("value", ["postgres://x", "memcached", "sqlite://", "http://redis:6379", "online.txt"])
def test_unknown_online_store_settings_are_refused(value):
    with pytest.raises(ValueError, match="online store"):
        parse_online_url(value)


def test_open_backend_builds_the_named_kind(tmp_path: Path, redis_client):
    sqlite_backend = open_backend("sqlite", sqlite_path=tmp_path / "a.db")
    assert isinstance(sqlite_backend, SqliteBackend) and sqlite_backend.path == str(tmp_path / "a.db")
    redis_backend = open_backend(REDIS_URL, key_prefix="p")
    assert isinstance(redis_backend, RedisBackend) and redis_backend.hash_key("t") == "p:t"
    assert redis_backend.ping()
    sqlite_backend.close()
    redis_backend.close()


# --------------------------------------------------------------------------- both backends


def test_one_record_per_key_read_back_in_request_order(backend):
    sent = backend.write("proj_view", [row(f"u{i}", 1_000, i) for i in range(20)])
    assert sent == 20
    assert backend.count("proj_view") == 20
    keys = ["u3", "ghost", "u19", "u3", "u0"]
    assert [None if b is None else unpack_record(b).features["v"] for b in backend.read_many("proj_view", keys)] == [
        3, None, 19, 3, 0,
    ]
    assert stored(backend, "proj_view", "u7") == 7
    assert backend.read_many("proj_view", ["u5"]) == [backend.read_one("proj_view", "u5")]


def test_newer_event_ts_wins_and_an_older_write_is_ignored(backend):
    backend.write("t", [row("u1", 2_000, "second")])
    backend.write("t", [row("u1", 1_000, "late arrival of an older event")])
    assert stored(backend, "t", "u1") == "second"
    backend.write("t", [row("u1", 3_000, "third")])
    assert stored(backend, "t", "u1") == "third"
    assert unpack_record(backend.read_one("t", "u1")).event_ts_us == 3_000


def test_within_one_batch_the_newest_row_per_key_wins_whatever_the_order(backend):
    backend.write("t", [row("a", 5, "a5"), row("a", 9, "a9"), row("a", 7, "a7"), row("b", 1, "b1")])
    assert (stored(backend, "t", "a"), stored(backend, "t", "b")) == ("a9", "b1")


def test_equal_event_ts_is_decided_by_created_ts_then_by_the_later_write(backend):
    backend.write("t", [row("u", 10, "created 5", created_us=5)])
    backend.write("t", [row("u", 10, "created 3", created_us=3)])
    assert stored(backend, "t", "u") == "created 5"
    backend.write("t", [row("u", 10, "no created ts")])  # a missing created_ts sorts first
    assert stored(backend, "t", "u") == "created 5"
    backend.write("t", [row("u", 10, "rewrite, same stamps", created_us=5)])
    assert stored(backend, "t", "u") == "rewrite, same stamps"


def test_batches_larger_than_the_batch_size_are_all_written_with_progress(backend):
    ticks: list[int] = []
    n = backend.batch_size * 5 + 3
    assert backend.write("t", (row(f"k{i}", i, i) for i in range(n)), progress=ticks.append) == n
    assert sum(ticks) == n and max(ticks) == backend.batch_size
    assert backend.count("t") == n
    assert [unpack_record(b).features["v"] for b in backend.read_many("t", [f"k{i}" for i in range(n)])] == list(
        range(n)
    )


def test_reading_a_view_that_was_never_written_finds_nothing(backend):
    assert backend.read_one("never_written", "u1") is None
    assert backend.read_many("never_written", ["u1", "u2"]) == [None, None]


def test_drop_table_removes_the_view_only(backend):
    backend.write("keep", [row("u", 1, "k")])
    backend.write("drop", [row("u", 1, "d")])
    backend.drop_table("drop")
    assert backend.read_one("drop", "u") is None
    assert stored(backend, "keep", "u") == "k"


def test_large_batches_read_beyond_sqlite_parameter_chunks(backend):
    n = 2_100
    backend.write("t", (row(f"k{i}", 1, i) for i in range(n)))
    keys = [f"k{i}" for i in reversed(range(n))] + ["missing"]
    values = [None if b is None else unpack_record(b).features["v"] for b in backend.read_many("t", keys)]
    assert values == list(reversed(range(n))) + [None]


# --------------------------------------------------------------------------- SQLite specifics


def test_sqlite_uses_wal_and_one_without_rowid_table_per_view(tmp_path: Path):
    backend = SqliteBackend(tmp_path / "o.db")
    backend.write("p_v", [row("u", 1, 1)])
    conn = sqlite3.connect(tmp_path / "o.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name='p_v'").fetchone()[0]
    assert "WITHOUT ROWID" in sql and "PRIMARY KEY" in sql
    assert conn.execute("SELECT entity_key, event_ts FROM p_v").fetchall() == [("u", 1)]
    conn.close()
    backend.close()


def test_sqlite_write_is_one_transaction_rolled_back_on_failure(tmp_path: Path):
    backend = SqliteBackend(tmp_path / "o.db", batch_size=3)
    backend.write("t", [row("before", 1, 0)])

    def rows():
        for i in range(10):
            if i == 7:  # after two full executemany batches
                raise RuntimeError("source failed mid-partition")
            yield row(f"k{i}", 1, i)

    with pytest.raises(RuntimeError, match="mid-partition"):
        backend.write("t", rows())
    assert backend.count("t") == 1  # nothing of the failed load is visible
    assert backend.write("t", [row("after", 1, 1)]) == 1  # the connection is usable again
    backend.close()


def test_sqlite_reader_threads_get_their_own_connections(tmp_path: Path):
    import threading

    backend = SqliteBackend(tmp_path / "o.db")
    backend.write("t", [row(f"u{i}", 1, i) for i in range(50)])
    errors: list[BaseException] = []

    def read():
        try:
            for _ in range(200):
                assert stored(backend, "t", "u42") == 42
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(backend._conns) == 5  # the writer's + one per reader thread
    backend.close()


# --------------------------------------------------------------------------- Redis specifics


def test_redis_keeps_one_hash_per_view_under_the_prefix(redis_client, redis_prefix):
    backend = RedisBackend(REDIS_URL, key_prefix=redis_prefix)
    backend.write("proj_view", [row("u1", 1, "x"), row("u2", 1, "y")])
    assert redis_client.type(f"{redis_prefix}:proj_view") == b"hash"
    assert sorted(redis_client.hkeys(f"{redis_prefix}:proj_view")) == [b"u1", b"u2"]
    backend.close()


def test_redis_writes_survive_a_script_the_server_does_not_know(redis_client, redis_prefix):
    backend = RedisBackend(REDIS_URL, key_prefix=redis_prefix)
    backend.write("t", [row("u", 1, "first")])
    backend._sha = "0" * 40  # as after a server restart or SCRIPT FLUSH: EVALSHA answers NOSCRIPT
    backend.write("t", [row("u", 2, "second"), row("u", 1, "older")])
    assert stored(backend, "t", "u") == "second"
    backend.close()
