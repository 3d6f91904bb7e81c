"""Specification of the Delta offline store, through Feast's public API."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import polars as pl
import pyarrow.dataset as pads
import pytest
from deltalake import DeltaTable, write_deltalake
from feast import FeatureStore
from feast.data_source import DataSource

from hybrid_pipeline.features.delta_offline_store import (
    DeltaOfflineStore,
    DeltaOfflineStoreConfig,
    DeltaRetrievalJob,
    DeltaSource,
)
from hybrid_pipeline.features.repo import apply_feature_repo, write_feature_repo

from .data import (
    ACTIVITY_SCHEMA,
    ACTIVITY_TTL,
    PROFILE_TTL,
    USERS,
    entity_frame,
    entity_rows,
    hours,
    rows_frame,
    table_specs,
)
from .oracle import OracleSource, oracle_join

ACTIVITY_FEATURES = ["clicks_1h", "sessions_1h"]
PROFILE_FEATURES = ["segment", "lifetime_value"]


def activity_oracle(rows, ttl=ACTIVITY_TTL) -> OracleSource:
    return OracleSource(rows, ["user_id"], "event_timestamp", ACTIVITY_FEATURES, "created", ttl)


def profile_oracle(rows) -> OracleSource:
    return OracleSource(rows, ["user_id"], "event_timestamp", PROFILE_FEATURES, None, PROFILE_TTL)


def assert_matches_oracle(df: pd.DataFrame, entities: list[dict], sources: list[OracleSource], columns: list[list[str]]):
    """Row i of ``df`` is entity row i, and its features are an acceptable oracle answer."""
    assert len(df) == len(entities)
    assert df["user_id"].tolist() == [r["user_id"] for r in entities]
    assert df["label"].tolist() == [r["label"] for r in entities]
    expected = oracle_join(entities, sources)
    for i, row in enumerate(df.to_dict("records")):
        for j, cols in enumerate(columns):
            got = tuple(None if pd.isna(row[c]) else row[c] for c in cols)
            assert got in expected[i][j], f"row {i} ({entities[i]}): {cols} = {got}, oracle allows {expected[i][j]}"


@pytest.fixture(scope="module")
def store(feature_repo) -> FeatureStore:
    return apply_feature_repo(feature_repo.path)


# --------------------------------------------------------------------------- configuration


def test_feature_store_yaml_selects_the_delta_store_by_class_path(store):
    assert isinstance(store.config.offline_store, DeltaOfflineStoreConfig)
    assert type(store._get_provider().offline_store) is DeltaOfflineStore


def test_delta_source_round_trips_through_the_registry(feature_repo, store):
    reloaded = FeatureStore(repo_path=str(feature_repo.path))  # reads the registry file back
    source = reloaded.get_feature_view("user_activity").batch_source
    assert isinstance(source, DeltaSource)
    assert (source.path, source.version, source.created_timestamp_column) == (feature_repo.activity_uri, None, "created")

    pinned = DeltaSource(name="s", path="s3://bucket/t", version=4, storage_options={"AWS_REGION": "eu-west-1"},
                         timestamp_field="ts", field_mapping={"a": "b"})
    proto = pinned.to_proto()
    assert DataSource.from_proto(proto) == pinned  # dispatch on data_source_class_type
    assert DataSource.from_proto(proto).version == 4


def test_non_delta_sources_are_refused(store):
    from feast import FileSource

    with pytest.raises(TypeError, match="DeltaSource"):
        DeltaOfflineStore.pull_all_from_table_or_query(
            store.config, FileSource(path="x.parquet", timestamp_field="ts"), ["user_id"], ["f"], "ts"
        )


# --------------------------------------------------------------------------- historical retrieval


def test_historical_features_equal_the_point_in_time_oracle(feature_repo, store):
    entities = entity_rows()
    job = store.get_historical_features(
        entity_df=entity_frame(entities),
        features=[f"user_activity:{f}" for f in ACTIVITY_FEATURES] + [f"user_profile:{f}" for f in PROFILE_FEATURES],
    )
    assert isinstance(job, DeltaRetrievalJob)
    df = job.to_df()
    assert list(df.columns) == ["user_id", "event_timestamp", "label", *ACTIVITY_FEATURES, *PROFILE_FEATURES]
    assert_matches_oracle(
        df, entities, [activity_oracle(feature_repo.activity), profile_oracle(feature_repo.profile)],
        [ACTIVITY_FEATURES, PROFILE_FEATURES],
    )
    # the data exercises what it claims to: misses, TTL expiry, hits
    assert df["clicks_1h"].isna().any() and df["clicks_1h"].notna().any()
    assert df["segment"].isna().any() and df["segment"].notna().any()
    assert job.to_arrow().num_rows == len(entities)
    # to_df is Feast's conversion (to_arrow -> pandas -> RangeIndex), column blocks aside
    pd.testing.assert_frame_equal(df, job.to_arrow().to_pandas().reset_index(drop=True))
    assert isinstance(df.index, pd.RangeIndex)


def test_naive_entity_timestamps_are_utc_without_feasts_copy_of_the_entity_frame(feature_repo, store):
    assert store.config.coerce_tz_aware is False  # the store converts, Feast does not copy first
    features = [f"user_activity:{f}" for f in ACTIVITY_FEATURES]
    aware = entity_frame(entity_rows())
    naive = aware.assign(event_timestamp=aware["event_timestamp"].dt.tz_convert("UTC").dt.tz_localize(None))
    assert naive["event_timestamp"].dt.tz is None

    got = store.get_historical_features(entity_df=naive, features=features).to_df()
    expected = store.get_historical_features(entity_df=aware, features=features).to_df()

    assert str(got["event_timestamp"].dt.tz) == "UTC"
    pd.testing.assert_frame_equal(got, expected)


def test_feature_service_with_full_feature_names(feature_repo, store):
    entities = entity_rows(seed=5, n=60)
    df = store.get_historical_features(
        entity_df=entity_frame(entities),
        features=store.get_feature_service("user_model_v1"),
        full_feature_names=True,
    ).to_df()
    act = [f"user_activity__{f}" for f in ACTIVITY_FEATURES]
    prof = [f"user_profile__{f}" for f in PROFILE_FEATURES]
    assert list(df.columns) == ["user_id", "event_timestamp", "label", *act, *prof]
    assert_matches_oracle(
        df, entities, [activity_oracle(feature_repo.activity), profile_oracle(feature_repo.profile)], [act, prof]
    )


def test_pull_latest_takes_the_latest_event_then_the_latest_created_row(feature_repo, store):
    source = store.get_feature_view("user_activity").batch_source
    start, end = hours(10), hours(40)
    got = DeltaOfflineStore.pull_latest_from_table_or_query(
        store.config, source, ["user_id"], ACTIVITY_FEATURES, "event_timestamp", "created", start, end
    ).to_df()
    expected = {}
    for r in feature_repo.activity:
        if start <= r["event_timestamp"] <= end:
            best = expected.get(r["user_id"])
            if best is None or (r["event_timestamp"], r["created"]) > (best["event_timestamp"], best["created"]):
                expected[r["user_id"]] = r
    assert sorted(got["user_id"]) == sorted(expected)
    for row in got.to_dict("records"):
        want = expected[row["user_id"]]
        assert (row["clicks_1h"], row["sessions_1h"]) == (want["clicks_1h"], want["sessions_1h"])
        assert row["event_timestamp"] == want["event_timestamp"]

    everything = DeltaOfflineStore.pull_all_from_table_or_query(
        store.config, source, ["user_id"], ACTIVITY_FEATURES, "event_timestamp", "created", start, end
    ).to_df()
    assert len(everything) == sum(start <= r["event_timestamp"] <= end for r in feature_repo.activity)


# --------------------------------------------------------------------------- Delta log semantics


def test_overwrites_deletes_and_compaction_never_yield_stale_rows(tmp_path):
    """Feast's file store reads every parquet file in the directory; the Delta log must win."""
    uri = str(tmp_path / "lake" / "user_activity")
    profile_uri = str(tmp_path / "lake" / "user_profile")
    rows_frame([], {"user_id": pl.String, "event_timestamp": pl.Datetime("us", "UTC"), "segment": pl.String,
                    "lifetime_value": pl.Float64}).write_delta(profile_uri)

    def commit(rows, mode):
        rows_frame(rows, ACTIVITY_SCHEMA).write_delta(uri, mode=mode)

    def rows(tag, users, late=False):
        return [
            {"user_id": u, "event_timestamp": hours(h), "created": hours(h + (48 if late else 0)) + timedelta(microseconds=k),
             "clicks_1h": float(k), "sessions_1h": k if not late else -k}
            for k, (u, h) in enumerate((u, h) for u in users for h in (tag, tag + 2))
        ]

    v0 = rows(1, USERS[:4])
    commit(v0, "error")                                              # version 0
    late = rows(1, USERS[:4], late=True)                             # same event times, created later
    commit(late, "append")                                           # version 1
    v2 = rows(3, USERS[:2])
    commit(v2, "overwrite")                                          # version 2: replaces everything
    v3 = rows(3, USERS[2:3])
    commit(v3, "append")                                             # version 3
    DeltaTable(uri).delete("user_id = 'u0'")                         # version 4
    current = [r for r in v2 + v3 if r["user_id"] != "u0"]
    metrics = DeltaTable(uri).optimize.compact()                     # version 5
    assert metrics["numFilesRemoved"] >= 2 and DeltaTable(uri).version() == 5
    # the trap is real: the directory still holds removed files with stale rows
    assert pads.dataset(uri, format="parquet", exclude_invalid_files=True).count_rows() > len(current)

    entities = [{"user_id": u, "event_timestamp": hours(h), "label": 0} for u in USERS[:5] for h in (0, 1.5, 2, 3.5, 6)]

    def historical(version):
        repo = write_feature_repo(tmp_path / f"repo_v{version}", "delta_log", table_specs(uri, profile_uri, version),
                                  {"type": "sqlite", "path": str(tmp_path / "online.db")})
        store = apply_feature_repo(repo)
        return store.get_historical_features(
            entity_df=entity_frame(entities), features=[f"user_activity:{f}" for f in ACTIVITY_FEATURES]
        ).to_df()

    latest = historical(None)
    assert_matches_oracle(latest, entities, [activity_oracle(current)], [ACTIVITY_FEATURES])
    assert latest.loc[latest.user_id == "u0", "clicks_1h"].isna().all()       # deleted
    assert (latest["sessions_1h"].dropna() >= 0).all()                       # no pre-overwrite late rows

    # time travel: version 1 holds v0 plus the late corrections, which win the ties
    pinned = historical(1)
    assert_matches_oracle(pinned, entities, [activity_oracle(v0 + late)], [ACTIVITY_FEATURES])
    assert (pinned["sessions_1h"].dropna() <= 0).all() and pinned["sessions_1h"].notna().any()
    assert_matches_oracle(historical(0), entities, [activity_oracle(v0)], [ACTIVITY_FEATURES])


def test_offline_write_batch_appends_to_the_delta_table(tmp_path, feature_repo, store):
    uri = str(tmp_path / "appended")
    write_deltalake(uri, rows_frame([], ACTIVITY_SCHEMA).to_arrow())
    fv = store.get_feature_view("user_activity")
    fv.batch_source = DeltaSource(name="appended", path=uri, timestamp_field="event_timestamp",
                                  created_timestamp_column="created")
    batch = rows_frame(feature_repo.activity[:5], ACTIVITY_SCHEMA).to_arrow()
    DeltaOfflineStore.offline_write_batch(store.config, fv, batch, None)
    assert DeltaTable(uri).version() == 1
    assert pl.read_delta(uri).height == 5


def test_retrieval_without_entity_df_gives_each_key_its_latest_value_at_end_date(feature_repo, store):
    start, end = hours(20), hours(30)
    df = store.get_historical_features(
        features=["user_activity:clicks_1h"], start_date=start, end_date=end
    ).to_df()
    in_window = [r for r in feature_repo.activity if start <= r["event_timestamp"] <= end]
    assert sorted(df["user_id"]) == sorted({r["user_id"] for r in in_window})
    assert (df["event_timestamp"] == pd.Timestamp(end)).all()
    oracle = activity_oracle(in_window)
    for row in df.to_dict("records"):
        allowed = oracle_join([{"user_id": row["user_id"], "event_timestamp": end}], [oracle])[0][0]
        assert (None if pd.isna(row["clicks_1h"]) else row["clicks_1h"],) in {a[:1] for a in allowed}
