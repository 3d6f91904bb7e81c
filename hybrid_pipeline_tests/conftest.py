"""Shared fixtures: an isolated landing zone, lakehouse and Dagster instance per test, and a
real Redis (skipped when none answers) under a unique key prefix deleted afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import redis

from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.settings import Settings

TEST_SALT = "test-salt"
REDIS_URL = os.environ.get("HYBRID_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_SERVER = os.environ.get("HYBRID_TEST_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")


@dataclass
class PipelineEnv:
    root: Path
    settings: Settings
    lakehouse: Lakehouse

    @property
    def landing(self) -> Path:
        return self.settings.landing_dir


def env_vars(root: Path) -> dict[str, str]:
    """The settings of a pipeline whose landing zone, lakehouse, instance and repo live under ``root``."""
    return {
        "HYBRID_LANDING_DIR": str(root / "landing"),
        "HYBRID_LAKEHOUSE_ROOT": str(root / "lakehouse"),
        "HYBRID_START_DATE": "2024-01-01",
        "HYBRID_PII_SALT": TEST_SALT,
        "DAGSTER_HOME": str(root / "dagster_home"),
        "HYBRID_FEATURE_REPO": str(root / "feature_repo"),
        "HYBRID_ONLINE_STORE": "sqlite",
    }


def make_env(root: Path, mp: pytest.MonkeyPatch) -> PipelineEnv:
    env = env_vars(root)
    for k, v in env.items():
        mp.setenv(k, v)
    (root / "dagster_home").mkdir(parents=True, exist_ok=True)
    settings = Settings.from_env(env)
    return PipelineEnv(root, settings, Lakehouse(settings.lakehouse_root))


@pytest.fixture
def pipeline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PipelineEnv:
    return make_env(tmp_path, monkeypatch)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


# -- a real Redis ------------------------------------------------------------------------
def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete the keys ``<prefix>:*`` (never a flush: the server may be shared)."""
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.unlink(*keys)
    return len(keys)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    """A client of the test Redis (``HYBRID_TEST_REDIS_URL``); the test is skipped when none answers."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.ConnectionError:
        client.close()
        pytest.skip(f"no Redis server at {REDIS_URL}")
    yield client
    client.close()


@pytest.fixture
def redis_prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test alone; every ``<prefix>:*`` key is deleted afterwards."""
    prefix = f"hybrid-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    delete_prefix(redis_client, prefix)


@pytest.fixture
def stream_name(redis_prefix: str) -> str:
    """A Redis stream of this test alone (under :func:`redis_prefix`, so deleted afterwards)."""
    return f"{redis_prefix}:stream"


# -- a real PostgreSQL ---------------------------------------------------------------------
@contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """The URL of a new database on the real server, dropped afterwards (its connections closed by
    force). Skipped where no server answers, except in CI, where a missing server is a failure."""
    import psycopg2

    try:
        admin = psycopg2.connect(f"{PG_SERVER}/postgres", connect_timeout=3)
    except psycopg2.Error as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_SERVER} is not reachable in CI: {exc}")
        pytest.skip(f"no PostgreSQL server at {PG_SERVER}: {exc}")
    admin.autocommit = True
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
