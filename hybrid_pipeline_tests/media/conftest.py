"""Shared fixtures: a landing media folder and a bronze root inside tmp_path."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    root = tmp_path / "landing" / "media"
    (root / "images").mkdir(parents=True)
    (root / "docs").mkdir(parents=True)
    return root


@pytest.fixture
def bronze(tmp_path: Path) -> Path:
    return tmp_path / "lakehouse" / "bronze" / "media"


@pytest.fixture
def put(landing: Path) -> Callable[[str, bytes], Path]:
    """Write ``data`` at ``landing/<rel>`` (parents created) and return the path."""

    def _put(rel: str, data: bytes) -> Path:
        path = landing / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    return _put


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
