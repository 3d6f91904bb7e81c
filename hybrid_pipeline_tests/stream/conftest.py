"""Fixtures for the stream tests: a real Redis (skipped when none answers), unique stream
names deleted afterwards (never a flush), and an isolated lakehouse."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from hybrid_pipeline.lakehouse import Lakehouse

REDIS_URL = os.environ.get("HYBRID_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis server at {REDIS_URL}")
    yield client
    client.close()


@pytest.fixture
def stream_name(redis_client: redis.Redis) -> Iterator[str]:
    name = f"hybrid-test:stream:{uuid.uuid4().hex}"
    yield name
    redis_client.delete(name)


@pytest.fixture
def lakehouse(tmp_path: Path) -> Lakehouse:
    return Lakehouse(str(tmp_path / "lakehouse"))
