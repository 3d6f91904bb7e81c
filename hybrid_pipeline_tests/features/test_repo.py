"""Specification of the generated Feast repo."""

from __future__ import annotations

from datetime import timedelta

import pytest
import yaml
from feast import Entity, FeatureService, FeatureView

from hybrid_pipeline.features.delta_offline_store import DeltaSource
from hybrid_pipeline.features.repo import (
    DEFINITIONS_FILE,
    FeatureTableSpec,
    load_feature_definitions,
    write_feature_repo,
)

from .data import ACTIVITY_TTL, PROFILE_TTL, table_specs


def test_repo_declares_one_entity_two_views_and_a_service(tmp_path):
    repo = write_feature_repo(tmp_path / "repo", "demo", table_specs("/lake/a", "/lake/p", activity_version=3),
                              {"type": "sqlite", "path": str(tmp_path / "online.db")})
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    assert config["offline_store"] == {"type": "hybrid_pipeline.features.delta_offline_store.DeltaOfflineStore"}
    assert config["online_store"]["type"] == "sqlite" and config["project"] == "demo"

    objects = load_feature_definitions(repo)
    entities = [o for o in objects if isinstance(o, Entity)]
    views = {o.name: o for o in objects if isinstance(o, FeatureView)}
    services = [o for o in objects if isinstance(o, FeatureService)]
    assert [(e.name, e.join_key) for e in entities] == [("user", "user_id")]
    assert views["user_activity"].ttl == ACTIVITY_TTL and views["user_profile"].ttl == PROFILE_TTL
    assert [f.name for f in views["user_activity"].features] == ["clicks_1h", "sessions_1h"]
    source = views["user_activity"].batch_source
    assert isinstance(source, DeltaSource)
    assert (source.path, source.version, source.created_timestamp_column) == ("/lake/a", 3, "created")
    assert [s.name for s in services] == ["demo_all"]
    assert {p.name for p in services[0].feature_view_projections} == {"user_activity", "user_profile"}


def test_no_ttl_is_generated_as_none(tmp_path):
    spec = FeatureTableSpec("events", "/lake/e", "user_id", "ts", {"n": "Int64", "emb": "Array(Float32)"}, ttl=None)
    repo = write_feature_repo(tmp_path, "demo", [spec], {"type": "sqlite"})
    assert "ttl=None" in (repo / DEFINITIONS_FILE).read_text()
    view = next(o for o in load_feature_definitions(repo) if isinstance(o, FeatureView))
    assert not view.ttl  # Feast stores "no expiry" as timedelta(0)


@pytest.mark.parametrize(
    "spec, message",
    [
        (FeatureTableSpec("bad-name", "/x", "user_id", "ts", {"a": "Int64"}), "not a valid identifier"),
        (FeatureTableSpec("v", "/x", "user_id", "ts", {"a": "Decimal"}), "unknown Feast type"),
        (FeatureTableSpec("v", "/x", "user_id", "ts", {}), "no features"),
        (FeatureTableSpec("v", "/x", "user_id", "ts", {"ts": "Int64"}), "not a feature"),
        (FeatureTableSpec("v", "/x", "user_id", "ts", {"a": "Int64"}, ttl=timedelta(-1)), "ttl"),
    ],
)
def test_invalid_specs_are_refused_before_anything_is_written(tmp_path, spec, message):
    with pytest.raises(ValueError, match=message):
        write_feature_repo(tmp_path / "repo", "demo", [spec], {"type": "sqlite"})
    assert not (tmp_path / "repo").exists()


def test_services_must_name_known_views(tmp_path):
    spec = FeatureTableSpec("v", "/x", "user_id", "ts", {"a": "Int64"})
    with pytest.raises(ValueError, match="unknown"):
        write_feature_repo(tmp_path, "demo", [spec], {"type": "sqlite"}, feature_services={"svc": ["w"]})
