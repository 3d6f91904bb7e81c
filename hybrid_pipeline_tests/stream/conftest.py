"""Fixtures for the stream tests: an isolated lakehouse (the real Redis and a stream name
of each test's own come from the package conftest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybrid_pipeline.lakehouse import Lakehouse


@pytest.fixture
def lakehouse(tmp_path: Path) -> Lakehouse:
    return Lakehouse(str(tmp_path / "lakehouse"))
