"""Fixtures: backends of both kinds (the real Redis and its key prefix come from the
package conftest)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hybrid_pipeline.online import RedisBackend, SqliteBackend
from hybrid_pipeline_tests.conftest import REDIS_URL, delete_prefix

__all__ = ["REDIS_URL", "delete_prefix"]


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
