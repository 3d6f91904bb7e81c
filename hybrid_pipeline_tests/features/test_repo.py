"""Specification of the generated Feast repo."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pandas as pd
import polars as pl
import pytest
import yaml
from feast import Entity, FeatureService, FeatureView

from hybrid_pipeline.features.delta_offline_store import DeltaSource
from hybrid_pipeline.features.repo import (
    DEFINITIONS_FILE,
    FeatureTableSpec,
    apply_feature_repo,
    feature_objects,
    load_feature_definitions,
    temporary_feature_store,
    write_feature_repo,
)

from .data import ACTIVITY_TTL, PROFILE_TTL, T0, hours, table_specs


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


def test_in_memory_objects_are_the_ones_the_generated_module_declares(tmp_path):
    specs = table_specs("/lake/a", "/lake/p", activity_version=3)
    services = {"activity_only": ["user_activity"]}
    repo = write_feature_repo(tmp_path / "repo", "demo", specs, {"type": "sqlite"}, feature_services=services)

    def by_name(objects):
        return {(type(o).__name__, o.name): o for o in objects}

    in_memory = by_name(feature_objects("demo", specs, services))
    assert in_memory == by_name(load_feature_definitions(repo))
    assert in_memory[("FeatureView", "user_activity")].batch_source.version == 3


def _file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_temporary_store_reads_its_pinned_version_and_leaves_the_generated_repo_alone(tmp_path):
    uri = str(tmp_path / "lake" / "scores")
    pl.DataFrame({"user_id": ["a", "b"], "event_timestamp": [T0, T0], "score": [1.0, 2.0]}).write_delta(uri)
    spec = FeatureTableSpec("scores", uri, "user_id", "event_timestamp", {"score": "Float64"}, ttl=timedelta(days=1))
    online = {"type": "sqlite", "path": str(tmp_path / "repo" / "data" / "online.db")}
    repo = write_feature_repo(tmp_path / "repo", "demo", [spec], online)
    latest = apply_feature_repo(repo)
    before = _file_hashes(repo)
    entities = pd.DataFrame({"user_id": ["a", "b"], "event_timestamp": pd.to_datetime([hours(2)] * 2, utc=True)})

    def scores(store) -> list[float]:
        return store.get_historical_features(entity_df=entities, features=["scores:score"]).to_df()["score"].tolist()

    with temporary_feature_store("demo", [replace(spec, version=0)]) as pinned:
        assert scores(pinned) == [1.0, 2.0]
        pl.DataFrame({"user_id": ["a", "b"], "event_timestamp": [hours(1)] * 2, "score": [10.0, 20.0]}).write_delta(
            uri, mode="append")
        assert scores(pinned) == [1.0, 2.0]  # a newer version landed: the pinned store still reads version 0
        registry_dir = Path(pinned.config.registry.path).parent
    assert scores(latest) == [10.0, 20.0]  # the generated repo follows the latest version
    assert not registry_dir.exists() and not registry_dir.is_relative_to(repo)
    assert _file_hashes(repo) == before
