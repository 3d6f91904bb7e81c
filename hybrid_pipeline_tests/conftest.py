"""Shared fixtures: an isolated landing zone, lakehouse and Dagster instance per test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.settings import Settings

TEST_SALT = "test-salt"


@dataclass
class PipelineEnv:
    root: Path
    settings: Settings
    lakehouse: Lakehouse

    @property
    def landing(self) -> Path:
        return self.settings.landing_dir


def make_env(root: Path, mp: pytest.MonkeyPatch) -> PipelineEnv:
    env = {
        "HYBRID_LANDING_DIR": str(root / "landing"),
        "HYBRID_LAKEHOUSE_ROOT": str(root / "lakehouse"),
        "HYBRID_START_DATE": "2024-01-01",
        "HYBRID_PII_SALT": TEST_SALT,
        "DAGSTER_HOME": str(root / "dagster_home"),
        "HYBRID_FEATURE_REPO": str(root / "feature_repo"),
        "HYBRID_ONLINE_STORE": "sqlite",
    }
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
