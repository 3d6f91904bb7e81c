"""The purchase training set at pinned Delta versions: one builder for the asset and for reproduction.

It retrieves through Feast from a store pinned in memory, so the generated repo (what the ``feast``
CLI, the online materialization and the checks read) is never rewritten, and a pinned retrieval
keeps returning the rows of its versions whatever lands afterwards.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from hybrid_pipeline.features import catalog
from hybrid_pipeline.features.delta_offline_store import DeltaOfflineStore
from hybrid_pipeline.features.repo import apply_feature_repo, key_index_dir, write_feature_repo
from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.ml.training_set import (
    FEATURE_VIEW,
    FEATURES_TABLE,
    LABEL,
    LABELS_TABLE,
    build_training_set,
    feature_services,
    frame_hash,
)
from hybrid_pipeline.transforms.features import FEATURE_COLUMNS

from .purchase_data import START, land, silver_events

DAYS = 10  # labels need 7 observed days after them: the first 3 days are labelled


def file_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (definitions, config, registry db, online db, key indexes)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def generated_repo(lh: Lakehouse, repo: Path) -> None:
    """The repo as the feature view asset leaves it: generated over the latest versions, applied,
    the key index of the features' current version built."""
    write_feature_repo(repo, catalog.PROJECT, catalog.feature_tables(lh.uri(FEATURES_TABLE)),
                       catalog.online_store_config("sqlite", str(repo)), feature_services=feature_services())
    store = apply_feature_repo(repo)
    assert DeltaOfflineStore.build_key_index(store.config, store.get_feature_view(FEATURE_VIEW), rebuild=False)


@pytest.fixture()
def lake(tmp_path: Path) -> Lakehouse:
    lh = Lakehouse(str(tmp_path / "lakehouse"))
    land(lh, silver_events(DAYS, events_per_day=600), START + timedelta(days=DAYS - 1))
    return lh


def test_a_pinned_training_set_reads_its_versions_and_leaves_the_generated_repo_byte_identical(lake, tmp_path):
    repo = tmp_path / "feature_repo"
    generated_repo(lake, repo)
    before = file_hashes(repo)
    labels_version, features_version = lake.version(LABELS_TABLE), lake.version(FEATURES_TABLE)

    pinned = build_training_set(lake, labels_version, features_version, key_index_dir=key_index_dir(repo))
    # a correction lands after pinning: every feature row rewritten with other values
    lake.replace_where(FEATURES_TABLE, lake.read(FEATURES_TABLE).with_columns(pl.col("total_events") + 1000), "true")
    again = build_training_set(lake, labels_version, features_version, key_index_dir=key_index_dir(repo))
    latest = build_training_set(lake, labels_version, lake.version(FEATURES_TABLE))

    assert file_hashes(repo) == before
    assert pinned.rows.height > 0 and pinned.rows["total_events"].null_count() < pinned.rows.height
    assert again.rows.equals(pinned.rows) and again.content_sha256 == pinned.content_sha256
    assert latest.rows.select(pl.col("total_events") - 1000).equals(pinned.rows.select("total_events"))
    assert pinned.source_versions == {FEATURES_TABLE: features_version, LABELS_TABLE: labels_version}
    # the key index the feature view asset built for that version is the one the retrieval used
    assert pinned.key_index["reused"] is True and pinned.key_index["version"] == features_version
    assert Path(pinned.key_index["path"]).is_relative_to(key_index_dir(repo))
    assert latest.key_index == {"built": False}


def test_the_point_in_time_set_is_each_label_joined_to_the_users_latest_feature_row_before_it(lake):
    rows = build_training_set(lake, lake.version(LABELS_TABLE), lake.version(FEATURES_TABLE), as_known_at=False).rows
    labels = lake.read(LABELS_TABLE)
    feats = lake.read(FEATURES_TABLE).sort("event_timestamp")
    # every feature row is younger than the 30-day TTL here, so an as-of join is the oracle
    expected = (
        labels.sort("event_timestamp")
        .join_asof(feats.select("user_id", pl.col("event_timestamp").alias("feature_ts"), *FEATURE_COLUMNS),
                   left_on="event_timestamp", right_on="feature_ts", by="user_id", strategy="backward",
                   check_sortedness=False)
        .sort("user_id", "event_timestamp")
    )
    assert rows.height == labels.height > 0
    assert rows[LABEL].to_list() == expected[LABEL].to_list()
    for column in FEATURE_COLUMNS:
        assert rows[column].to_list() == expected[column].to_list(), column


def test_by_default_the_set_sees_only_feature_rows_created_by_each_label_time(lake):
    """gold/user_features is rewritten by late events, so the default retrieval is as known at the
    label: among rows created at or before the label, the newest by event time (ties: newest created)."""
    training_set = build_training_set(lake, lake.version(LABELS_TABLE), lake.version(FEATURES_TABLE))
    assert training_set.retrieval == "as_known_at"
    labels = lake.read(LABELS_TABLE).with_row_index("label_row")
    feats = lake.read(FEATURES_TABLE).select(
        "user_id", pl.col("event_timestamp").alias("feature_ts"), "created_timestamp", *FEATURE_COLUMNS
    )
    winners = (
        labels.join(feats, on="user_id", how="left")
        .filter((pl.col("feature_ts") <= pl.col("event_timestamp")) & (pl.col("created_timestamp") <= pl.col("event_timestamp")))
        .sort("feature_ts", "created_timestamp")
        .group_by("label_row").last()
    )
    expected = labels.join(winners.select("label_row", *FEATURE_COLUMNS), on="label_row", how="left").sort("user_id", "event_timestamp")
    rows = training_set.rows
    assert rows.height == labels.height > 0
    for column in FEATURE_COLUMNS:
        assert rows[column].to_list() == expected[column].to_list(), column


def test_without_labelled_days_the_set_is_empty_with_every_column(tmp_path):
    lh = Lakehouse(str(tmp_path / "lakehouse"))
    land(lh, silver_events(3, events_per_day=200), START + timedelta(days=2))
    built = build_training_set(lh, lh.version(LABELS_TABLE), lh.version(FEATURES_TABLE))
    assert built.rows.height == 0
    assert set(built.rows.columns) == {"user_id", "event_timestamp", LABEL, *FEATURE_COLUMNS}


def test_the_content_hash_depends_on_content_only():
    keys = ["user_id", "event_timestamp"]
    rows = pl.DataFrame({"user_id": ["b", "a", "a"], "event_timestamp": [2, 1, 1], "x": [None, 1.5, 2.0],
                         "seq": [["view"], [], None]})
    # The same rows in another order, in several memory chunks, after an Arrow round trip.
    same = [rows.reverse(), pl.concat([rows.slice(0, 1), rows.slice(1, 2)], rechunk=False),
            pl.from_arrow(rows.to_arrow())]

    assert {frame_hash(df, keys) for df in same} == {frame_hash(rows, keys)}
    assert frame_hash(rows.with_columns(pl.col("x").fill_null(0.0)), keys) != frame_hash(rows, keys)
