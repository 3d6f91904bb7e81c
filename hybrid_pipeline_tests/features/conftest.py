"""Fixtures: small Delta feature tables and a generated Feast repo over them."""

from __future__ import annotations

import pytest

from hybrid_pipeline.features.repo import write_feature_repo

from .data import (
    ACTIVITY_SCHEMA,
    PROFILE_SCHEMA,
    FeatureRepo,
    activity_rows,
    profile_rows,
    rows_frame,
    table_specs,
)


@pytest.fixture(scope="module")
def feature_repo(tmp_path_factory) -> FeatureRepo:
    root = tmp_path_factory.mktemp("feast")
    activity, profile = activity_rows(), profile_rows()
    activity_uri, profile_uri = str(root / "lake" / "user_activity"), str(root / "lake" / "user_profile")
    # written in two commits so the table has history and a late batch
    frame = rows_frame(activity, ACTIVITY_SCHEMA)
    frame.head(300).write_delta(activity_uri)
    frame.slice(300).write_delta(activity_uri, mode="append")
    rows_frame(profile, PROFILE_SCHEMA).write_delta(profile_uri)
    repo = write_feature_repo(
        root / "repo",
        "hybrid_test",
        table_specs(activity_uri, profile_uri),
        {"type": "sqlite", "path": str(root / "online.db")},
        feature_services={"user_model_v1": ["user_activity", "user_profile"]},
    )
    return FeatureRepo(repo, activity_uri, profile_uri, activity, profile)


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: runs Feast's CLI in a subprocess (slow)")
