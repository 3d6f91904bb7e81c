"""Feature views that version themselves.

A view's content version is a hash of its definition (source table, keys, columns and types,
field mapping, TTL; for the on-demand view also its code and its inputs' versions); the Dagster
asset of each view carries it as ``code_version``; the generated repo registers each view also as
``<view>__v<hash8>`` and keeps an older version registered while a model holding an MLflow alias
was trained on it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pandas as pd
import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from hybrid_pipeline.features import catalog
from hybrid_pipeline.features.repo import apply_feature_repo, load_feature_definitions
from hybrid_pipeline.ml.training_set import FEATURE_VIEW, FEATURES_TABLE, TrainingSet

from .on_demand_data import build_world


def test_the_content_version_is_the_definition_not_the_location_or_pinned_version():
    [spec] = catalog.feature_tables("/lake/a/gold/user_features")
    [moved] = catalog.feature_tables("s3://bucket/gold/user_features", version=7)
    assert spec.content_version() == moved.content_version()
    assert replace(spec, ttl=timedelta(days=7)).content_version() != spec.content_version()
    assert replace(spec, features={**spec.features, "extra": "Int64"}).content_version() != spec.content_version()
    assert replace(spec, source_table="gold/other").content_version() != spec.content_version()
    assert replace(spec, description="words").content_version() == spec.content_version()
    versions = catalog.view_versions(catalog.feature_tables("", activity_uri=""))
    assert set(versions) == {"user_features", "user_activity", "user_request_features"}
    # the on-demand view's version follows its inputs' versions
    changed = catalog.view_versions([replace(t, ttl=timedelta(days=1)) if t.name == "user_features" else t
                                     for t in catalog.feature_tables("", activity_uri="")])
    assert changed["user_request_features"] != versions["user_request_features"]
    assert changed["user_activity"] == versions["user_activity"]


def test_each_view_asset_carries_its_version_as_code_version():
    from hybrid_pipeline.defs.feature_store import assets

    specs = {k.to_user_string(): s for k, s in assets.feast_registry.specs_by_key.items()}
    versions = catalog.view_versions(catalog.feature_tables("", activity_uri=""))
    assert specs["features/user_features"].code_version == versions["user_features"]
    assert specs["features/user_activity"].code_version == versions["user_activity"]
    assert specs["features/user_request_features"].code_version == versions["user_request_features"]
    assert specs["features/feast_registry"].code_version == assets.REGISTRY_VERSION


def test_a_training_set_records_the_versions_of_the_views_it_read():
    built = TrainingSet(rows=pl.DataFrame(), labels_version=0, features_version=0)
    assert built.view_versions == {FEATURE_VIEW: catalog.feature_tables("")[0].content_version()}


def _production_model(tracking_uri: str, versions: dict[str, str] | None) -> None:
    """A registered model version holding the alias ``production``, its run tagged as the model asset tags it."""
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("purchase_model")
    tags = {} if versions is None else {"feature_view_versions": json.dumps(versions)}
    run = client.create_run(experiment, tags=tags)
    client.set_terminated(run.info.run_id)
    client.create_registered_model("purchase_model")
    mv = client.create_model_version("purchase_model", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias("purchase_model", "production", mv.version)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("versions"), events_per_day=150)


def test_an_older_version_stays_readable_while_a_production_model_uses_it(world, tmp_path, monkeypatch):
    lh, repo = world.lakehouse, world.repo
    args = (repo, "sqlite", lh.uri(FEATURES_TABLE), lh.uri(catalog.ACTIVITY_TABLE))
    old = catalog.view_versions(catalog.feature_tables(""))["user_features"]
    old_name = catalog.versioned_name("user_features", old)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert catalog.versions_in_use(tracking) == set()  # no store yet: no model depends on anything
    _production_model(tracking, {"user_features": old})
    in_use = catalog.versions_in_use(tracking)
    assert in_use == {old_name}

    # the definition changes (a shorter TTL): a new version, the old one kept for the production model
    monkeypatch.setattr(catalog, "USER_FEATURE_TTL", timedelta(days=7))
    new = catalog.view_versions(catalog.feature_tables(""))["user_features"]
    assert new != old
    report = catalog.write_repo(*args, versions_in_use=in_use)
    new_name = catalog.versioned_name("user_features", new)
    assert {old_name, new_name} <= set(report["registered"]) and report["dropped"] == []
    store = apply_feature_repo(repo)
    views = {v.name: v for v in store.list_feature_views()}
    assert views["user_features"].ttl == timedelta(days=7) and views[old_name].ttl == timedelta(days=30)
    assert views[old_name].tags["content_version"] == old and not views[old_name].online
    t = world.data_end + timedelta(days=10)  # 10 days after the data: inside the old TTL, outside the new
    entity = pd.DataFrame({"user_id": world.users[:10], "event_timestamp": [t] * 10})
    frame = store.get_historical_features(entity_df=entity, features=[
        f"{old_name}:total_events", "user_features:total_events"], full_feature_names=True).to_df()
    assert frame[f"{old_name}__total_events"].notna().all() and frame["user_features__total_events"].isna().all()

    # the alias moves to a model trained on the new version: the old one is dropped
    report = catalog.write_repo(*args, versions_in_use={new_name})
    assert report["dropped"] == [old_name] and old_name not in report["registered"]
    names = {getattr(o, "name", None) for o in load_feature_definitions(repo)}
    assert old_name not in names and new_name in names


def test_a_model_without_a_version_record_keeps_every_version(tmp_path):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _production_model(tracking, None)
    assert catalog.versions_in_use(tracking) is None


def test_only_models_trained_on_the_views_count(tmp_path):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking)
    run = client.create_run(client.create_experiment("digits"))
    client.create_registered_model("digit_classifier")
    mv = client.create_model_version("digit_classifier", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias("digit_classifier", "production", mv.version)
    assert catalog.versions_in_use(tracking) == set()
