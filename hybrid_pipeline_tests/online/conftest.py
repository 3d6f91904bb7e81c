"""Fixtures: a real Redis (skipped when none answers) under a unique key prefix that is
deleted afterwards (never a flush), and backends of both kinds."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from hybrid_pipeline.online import RedisBackend, SqliteBackend

REDIS_URL = os.environ.get("HYBRID_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.unlink(*keys)
    return len(keys)


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis server at {REDIS_URL}")
    yield client
    client.close()


@pytest.fixture
def redis_prefix(redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"hybrid-test-online-{uuid.uuid4().hex[:12]}"
    yield prefix
    delete_prefix(redis_client, prefix)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, tmp_path: Path) -> Iterator[SqliteBackend | RedisBackend]:
    """Each backend test runs against SQLite and against the real Redis."""
    if request.param == "sqlite":
        b: SqliteBackend | RedisBackend = SqliteBackend(tmp_path / "online.db", batch_size=7)
    else:
        prefix = request.getfixturevalue("redis_prefix")
        b = RedisBackend(REDIS_URL, key_prefix=prefix, batch_size=7, pipeline_depth=2)
    yield b
    b.close()
