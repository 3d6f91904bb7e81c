"""Shared fixtures: a landing media folder and a bronze root inside tmp_path; deep folder trees."""

from __future__ import annotations

import hashlib
import os
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


def make_nested_folders(top: Path, depth: int) -> list[Path]:
    """Create ``depth`` folders nested one inside the other under ``top``; returns them outermost first.

    Built one level at a time: ``os.makedirs`` recurses once per level and cannot make 1,000+.
    """
    folders: list[Path] = []
    folder = top
    for _ in range(depth):
        folder = folder / "d"
        folder.mkdir(parents=len(folders) == 0)
        folders.append(folder)
    return folders


def remove_tree(top: Path) -> None:
    """Delete a folder tree bottom-up without recursion (``shutil.rmtree`` recurses once per level)."""
    folders: list[Path] = []
    stack = [top]
    while stack:
        folder = stack.pop()
        folders.append(folder)
        for entry in os.scandir(folder):
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            else:
                os.unlink(entry.path)
    for folder in reversed(folders):
        os.rmdir(folder)
