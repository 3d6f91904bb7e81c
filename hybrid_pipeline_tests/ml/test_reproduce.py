"""A registered purchase-model version rebuilt by Delta time travel: same training-set bytes, same metrics.

Builds a small lakehouse straight from the generator and the feature transforms (no Dagster run),
trains and records a version the way ``models/purchase_model`` does, then lets the sources move on
(a new day, optimize/Z-order, vacuum inside the retention) before reproducing it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import timedelta

import polars as pl
import pytest

pytest.importorskip("mlflow", reason="mlflow-skinny is not installed")

from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.ml.purchase_config import PurchaseTrainConfig
from hybrid_pipeline.ml.registry import default_tracking_uri, get_run, set_production
from hybrid_pipeline.ml.reproduce import (
    CPU_TOLERANCE,
    FEATURES_TABLE,
    LABELS_TABLE,
    MODEL_NAME,
    TRAINING_SET_TABLE,
    ReproduceError,
    config_from_run_params,
    encode_features,
    encode_frame,
    encoded_columns,
    record_training_run,
    reproduce,
    split_of,
    train_recipe,
)
from hybrid_pipeline.ml.training_set import build_training_set, content_sha256
from hybrid_pipeline.transforms import features as ft

from .purchase_data import START, land, silver_events

DAYS = 13  # 12 landed at training time, the 13th arrives afterwards
CONFIG = PurchaseTrainConfig(seed=3, device="cpu", num_threads=1)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A trained, recorded version 1; afterwards the sources move on (new day, optimize, vacuum)."""
    root = tmp_path_factory.mktemp("reproduce")
    lh = Lakehouse(str(root / "lakehouse"))
    uri = default_tracking_uri(root / "mlflow")
    silver = silver_events(DAYS)
    land(lh, silver, START + timedelta(days=DAYS - 2))
    versions = {LABELS_TABLE: lh.version(LABELS_TABLE), FEATURES_TABLE: lh.version(FEATURES_TABLE)}
    rows = build_training_set(lh, versions[LABELS_TABLE], versions[FEATURES_TABLE]).rows
    ts_version = lh.replace_where(TRAINING_SET_TABLE, rows, "true")
    sha = content_sha256(rows)
    result, data = train_recipe(rows, CONFIG)
    run_id, version = record_training_run(uri, result, training_set_version=ts_version, source_versions=versions,
                                          content_sha256=sha, definitions_hash="test-definitions")
    set_production(uri, MODEL_NAME, version)

    # the sources move on: one more landed day (features and labels rewritten), compaction, vacuum
    land(lh, silver, START + timedelta(days=DAYS - 1))
    compacted = {t: lh.optimize(t, ["user_id", "event_date"]) for t in (FEATURES_TABLE, LABELS_TABLE)}
    vacuumed = {t: lh.vacuum(t, timedelta(hours=168)) for t in (FEATURES_TABLE, LABELS_TABLE)}
    return {"root": root, "lh": lh, "uri": uri, "run_id": run_id, "version": version, "versions": versions,
            "sha": sha, "rows": rows, "result": result, "data": data, "compacted": compacted, "vacuumed": vacuumed}


def test_the_recorded_run_has_what_a_rebuild_needs(recorded) -> None:
    run = get_run(recorded["uri"], recorded["run_id"])
    versions = json.loads(run["tags"]["input_versions"])
    assert versions == {TRAINING_SET_TABLE: 0, **recorded["versions"]}
    assert run["tags"]["training_set.content_sha256"] == recorded["sha"]
    assert run["params"]["seed"] == "3"
    assert len(run["params"]["feature_definition_hash"]) == 64
    assert run["params"]["code_version"]
    # every field of the config it ran with, as MLflow's flattened strings, reads back as that config
    assert config_from_run_params(run["params"]) == replace(CONFIG, feature_names=tuple(encoded_columns()))
    assert recorded["data"].counts()["test"] > 20 and recorded["result"].metrics["test_auc"] > 0.7


def test_reproduce_after_new_data_optimize_and_vacuum(recorded) -> None:
    lh = recorded["lh"]
    # the sources really moved on: newer versions, compacted files, and today's join differs
    assert lh.version(LABELS_TABLE) > recorded["versions"][LABELS_TABLE]
    assert all(m["numFilesAdded"] >= 1 for m in recorded["compacted"].values())
    current = build_training_set(lh, lh.version(LABELS_TABLE), lh.version(FEATURES_TABLE)).rows
    assert current.height > recorded["rows"].height and content_sha256(current) != recorded["sha"]

    report = reproduce(MODEL_NAME, recorded["version"], lh, recorded["uri"])

    assert report.hash_matches, report.summary()
    assert report.rebuilt_sha256 == recorded["sha"] and report.rows == recorded["rows"].height
    assert report.matches_stored_snapshot is True
    assert report.tolerance == CPU_TOLERANCE and report.device == "cpu"
    assert set(report.recorded_metrics) >= {"test_auc", "test_log_loss", "valid_auc"}
    assert report.metrics_match and max(report.metric_deltas.values()) <= 1e-6, report.summary()
    assert report.ok and "REPRODUCED" in report.summary()


def test_reproduce_by_alias_without_retraining(recorded) -> None:
    report = reproduce(MODEL_NAME, "production", recorded["root"] / "lakehouse", recorded["uri"], retrain=False)
    assert report.version == recorded["version"] and report.ok and not report.reproduced_metrics


def test_a_vacuum_past_the_retention_makes_the_versions_unreadable(recorded, tmp_path) -> None:
    copy = tmp_path / "lakehouse"
    shutil.copytree(recorded["root"] / "lakehouse", copy)
    lh = Lakehouse(str(copy))
    for table in (FEATURES_TABLE, LABELS_TABLE):
        lh.vacuum(table, timedelta(0))  # deletes every file the newest version does not reference
    with pytest.raises(ReproduceError, match="vacuumed"):
        reproduce(MODEL_NAME, recorded["version"], lh, recorded["uri"], retrain=False)


def test_a_wrong_recorded_hash_is_reported(recorded) -> None:
    lh = recorded["lh"]
    result = recorded["result"]
    _, version = record_training_run(recorded["uri"], result, training_set_version=0,
                                     source_versions=recorded["versions"], content_sha256="0" * 64,
                                     definitions_hash="test-definitions")
    report = reproduce(MODEL_NAME, version, lh, recorded["uri"], retrain=False)
    assert not report.hash_matches and not report.ok
    assert report.rebuilt_sha256 == recorded["sha"]


def test_a_run_without_source_versions_cannot_be_reproduced(recorded) -> None:
    _, version = record_training_run(recorded["uri"], recorded["result"], training_set_version=0,
                                     source_versions={}, content_sha256=recorded["sha"], definitions_hash=None)
    with pytest.raises(ReproduceError, match="gold/user_labels"):
        reproduce(MODEL_NAME, version, recorded["lh"], recorded["uri"], retrain=False)
    with pytest.raises(ReproduceError, match="no version"):
        reproduce(MODEL_NAME, 999, recorded["lh"], recorded["uri"])


# --------------------------------------------------------------------------- recipe units


def test_a_run_recorded_with_a_separate_holdout_config_reads_back_whole() -> None:
    # how runs were recorded while the holdout had a config class of its own: trainer params plus recipe.<field>
    old = {"hidden_sizes": "[32, 16]", "learning_rate": "0.003", "seed": "3", "device": "cpu", "num_threads": "1",
           "recipe.seed": "3", "recipe.split_salt": "purchase_model/v0", "recipe.test_fraction": "0.25",
           "label": "purchased_next_7d", "split_rows.train": "10"}
    assert config_from_run_params(old) == PurchaseTrainConfig(
        hidden_sizes=(32, 16), learning_rate=0.003, seed=3, device="cpu", num_threads=1,
        split_salt="purchase_model/v0", test_fraction=0.25)


def test_encoding_of_dicts_matches_frames_and_makes_nulls_explicit() -> None:
    row = {"total_events": 10, "events_1d": 2, "events_7d": 5, "events_30d": 10, "revenue_1d": 0.0,
           "revenue_7d": 12.5, "revenue_30d": 40.0, "purchases_30d": 1, "add_to_carts_7d": 2,
           "avg_session_duration": 31.0, "days_since_last_purchase": 3,
           "recent_event_types": "view,click,view,add_to_cart,purchase", "user_segment": "loyal"}
    never = {**row, "days_since_last_purchase": None, "user_segment": "vip"}
    empty: dict = {}
    X = encode_features([row, never, empty])
    cols = encoded_columns()
    assert X.shape == (3, len(cols)) and X.dtype.name == "float32"
    get = lambda i, c: float(X[i, cols.index(c)])  # noqa: E731
    assert get(0, "recent_view") == 2 and get(0, "recent_purchase") == 1 and get(0, "segment_loyal") == 1
    assert get(0, "has_features") == 1 and get(0, "never_purchased") == 0
    assert get(1, "never_purchased") == 1 and get(1, "days_since_last_purchase") == 60 and get(1, "segment_other") == 1
    assert get(2, "has_features") == 0 and get(2, "never_purchased") == 0 and get(2, "total_events") == 0
    assert sum(get(2, c) for c in cols if c.startswith(("segment_", "recent_"))) == 0
    frame = pl.DataFrame([row], schema_overrides={c: ft.FEATURES_SCHEMA[c] for c in row})
    assert (encode_frame(frame).to_numpy() == X[:1]).all()


def test_split_is_a_stable_hash_of_the_user() -> None:
    users = [f"u{i:07d}" for i in range(4000)]
    splits = [split_of(u, "s", 0.15, 0.2) for u in users]
    assert splits == [split_of(u, "s", 0.15, 0.2) for u in users]
    share = {s: splits.count(s) / len(users) for s in ("train", "valid", "test")}
    assert abs(share["test"] - 0.2) < 0.03 and abs(share["valid"] - 0.15) < 0.03
    assert [split_of(u, "other-salt", 0.15, 0.2) for u in users] != splits
