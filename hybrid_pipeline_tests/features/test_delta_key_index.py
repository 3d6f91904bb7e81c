"""The Delta offline store with key indexes: built per table version, used only on that
version, giving the same rows as the scanning join through Feast's API."""

from __future__ import annotations

import random
import shutil
import warnings
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pandas as pd
import polars as pl
import pytest

from hybrid_pipeline.features.delta_offline_store import DeltaOfflineStore, _key_index_location, _spec_for, _view_source
from hybrid_pipeline.features.repo import FeatureTableSpec, apply_feature_repo, write_feature_repo

from .data import hours
from .oracle import OracleSource, oracle_join

SCHEMA = {"user_id": pl.Int64, "event_timestamp": pl.Datetime("us", "UTC"), "created": pl.Datetime("us", "UTC"),
          "score": pl.Float64, "visits": pl.Int64, "tier": pl.String}
FEATURES = ["score", "visits", "tier"]
TTL = timedelta(hours=30)


def feature_rows(seed: int, n: int, users: int = 12) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ts = hours(rng.randint(0, 60))
        rows.append({"user_id": rng.randrange(users), "event_timestamp": ts,
                     "created": ts + timedelta(minutes=rng.choice([0, 30, 600])) if rng.random() < 0.9 else None,
                     "score": rng.choice([None, round(rng.uniform(0, 1), 3)]), "visits": rng.randint(0, 9),
                     "tier": rng.choice(["a", "b", None])})
    return rows


def entity_rows(seed: int = 5, n: int = 80) -> list[dict]:
    rng = random.Random(seed)
    return [{"user_id": rng.randrange(15), "event_timestamp": hours(rng.uniform(-2, 70)), "label": i} for i in range(n)]


def entity_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [r["user_id"] for r in rows],
                         "event_timestamp": pd.to_datetime([r["event_timestamp"] for r in rows], utc=True),
                         "label": [r["label"] for r in rows]})


@pytest.fixture()
def lake(tmp_path):
    uri = str(tmp_path / "lake" / "user_scores")
    rows = feature_rows(1, 150)
    for chunk in (rows[:50], rows[50:100], rows[100:]):  # three files, in log order
        pl.DataFrame(chunk, schema=SCHEMA, orient="row").write_delta(uri, mode="append")
    spec = FeatureTableSpec(name="user_scores", delta_uri=uri, entity_key="user_id", entity_value_type="int64",
                            timestamp_field="event_timestamp", created_timestamp_field="created",
                            features={"score": "Float64", "visits": "Int64", "tier": "String"}, ttl=TTL)
    repo = write_feature_repo(tmp_path / "repo", "indexed", [spec], {"type": "sqlite", "path": str(tmp_path / "o.db")})
    return uri, rows, apply_feature_repo(repo)


def retrieve(store, entities) -> pd.DataFrame:
    return store.get_historical_features(entity_df=entity_frame(entities),
                                         features=[f"user_scores:{f}" for f in FEATURES]).to_df()


def assert_matches_oracle(df: pd.DataFrame, entities: list[dict], rows: list[dict]) -> None:
    assert df["label"].tolist() == [e["label"] for e in entities]
    expected = oracle_join(entities, [OracleSource(rows, ["user_id"], "event_timestamp", FEATURES, "created", TTL)])
    for i, row in enumerate(df.to_dict("records")):
        got = tuple(None if pd.isna(row[c]) else row[c] for c in FEATURES)
        assert got in expected[i][0], f"row {i}: {got} not in {expected[i][0]}"


def spec_of(store):
    view = store.get_feature_view("user_scores")
    return _spec_for(store.config, view, FEATURES)


def test_a_built_index_is_used_and_gives_the_rows_the_scan_gives(lake):
    uri, rows, store = lake
    entities = entity_rows()
    assert spec_of(store).key_index is None  # nothing built yet: the join scans
    scanned = retrieve(store, entities)

    built = DeltaOfflineStore.build_key_index(store.config, store.get_feature_view("user_scores"))
    assert built["rows"] == len(rows) and built["version"] == 2
    assert sorted(built["features_kept"]) == ["score", "visits"]  # numbers are kept; "tier" is read from the files
    spec = spec_of(store)
    assert spec.key_index is not None and [p.rows for p in spec.parts] == [50, 50, 50]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rows read back hold what the index says: no fallback
        indexed = retrieve(store, entities)
    pd.testing.assert_frame_equal(indexed, scanned)
    assert_matches_oracle(indexed, entities, rows)


def test_an_index_is_never_used_on_a_later_version_and_old_indexes_are_pruned(lake):
    uri, rows, store = lake
    view = store.get_feature_view("user_scores")
    first = DeltaOfflineStore.build_key_index(store.config, view)
    # a later write: overwrite with new rows (the old index would point at rows that are gone)
    newer = feature_rows(2, 90)
    pl.DataFrame(newer, schema=SCHEMA, orient="row").write_delta(uri, mode="overwrite")
    assert spec_of(store).key_index is None
    entities = entity_rows(seed=9)
    assert_matches_oracle(retrieve(store, entities), entities, newer)

    for _ in range(3):  # three more versions, each indexed: only the newest three indexes stay
        pl.DataFrame(feature_rows(3, 5), schema=SCHEMA, orient="row").write_delta(uri, mode="append")
        last = DeltaOfflineStore.build_key_index(store.config, view)
    kept = sorted(p.name.split("-")[0] for p in Path(last["path"]).parent.iterdir())
    assert len(kept) == 3 and f"v{first['version']:010d}" not in kept
    assert spec_of(store).key_index is not None


def test_key_indexes_can_be_turned_off_in_the_store_config(lake):
    _, _, store = lake
    DeltaOfflineStore.build_key_index(store.config, store.get_feature_view("user_scores"))
    store.config.offline_store.key_index = False
    try:
        assert spec_of(store).key_index is None
        assert DeltaOfflineStore.build_key_index(store.config, store.get_feature_view("user_scores")) is None
    finally:
        store.config.offline_store.key_index = True


def test_to_df_shows_missing_floats_as_nan_exactly_as_pandas_shows_arrow_nulls(lake):
    _, _, store = lake
    DeltaOfflineStore.build_key_index(store.config, store.get_feature_view("user_scores"))
    job = store.get_historical_features(entity_df=entity_frame(entity_rows()),
                                        features=[f"user_scores:{f}" for f in FEATURES])
    table = job.to_arrow()
    assert table.column("score").null_count > 0  # arrow keeps nulls
    pd.testing.assert_frame_equal(job.to_df(), table.to_pandas())


def test_keeping_features_in_the_index_can_be_turned_off_and_a_kept_index_is_rebuilt_to_match(lake):
    _, rows, store = lake
    view = store.get_feature_view("user_scores")
    entities = entity_rows(seed=11)
    keeping = DeltaOfflineStore.build_key_index(store.config, view)
    assert DeltaOfflineStore.build_key_index(store.config, view, rebuild=False)["reused"]
    with_values = retrieve(store, entities)
    store.config.offline_store.key_index_features = False
    try:
        plain = DeltaOfflineStore.build_key_index(store.config, view, rebuild=False)  # the kept index does not fit
        assert "reused" not in plain and plain["features_kept"] == [] and plain["bytes"] < keeping["bytes"]
        assert spec_of(store).key_index.blocks == ()
        pd.testing.assert_frame_equal(retrieve(store, entities), with_values)
    finally:
        store.config.offline_store.key_index_features = True
    assert_matches_oracle(with_values, entities, rows)


def test_a_view_renaming_other_columns_never_shares_an_index_whose_kept_features_it_would_misname(lake):
    _, _, store = lake
    source = _view_source(store.config, store.get_feature_view("user_scores"))
    path, fingerprint = _key_index_location(store.config, source)
    # same table version, but "score" would now be the table's "visits" column
    other_path, other_fingerprint = _key_index_location(store.config, replace(source, renames={"visits": "score"}))
    assert other_fingerprint != fingerprint and other_path != path


def test_features_all_kept_in_the_index_are_retrieved_with_only_one_files_keys_read(lake):
    _, rows, store = lake
    numbers = ["score", "visits"]  # both kept: no feature is read from the files
    entities = entity_rows(seed=13)
    job = lambda: store.get_historical_features(entity_df=entity_frame(entities),  # noqa: E731
                                                features=[f"user_scores:{f}" for f in numbers])
    scanned = job().to_df()
    DeltaOfflineStore.build_key_index(store.config, store.get_feature_view("user_scores"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the one-file check passes: no fallback
        indexed, arrow = job().to_df(), job().to_arrow()
    pd.testing.assert_frame_equal(indexed, scanned)
    assert arrow.column("score").null_count > 0  # nulls stay nulls in arrow, NaN in pandas
    expected = oracle_join(entities, [OracleSource(rows, ["user_id"], "event_timestamp", numbers, "created", TTL)])
    for i, row in enumerate(indexed.to_dict("records")):
        assert tuple(None if pd.isna(row[c]) else row[c] for c in numbers) in expected[i][0]


def test_views_sharing_a_table_keep_each_others_features_and_a_recreated_table_keeps_its_new_index(lake, tmp_path):
    uri, _, store = lake
    view = store.get_feature_view("user_scores")
    first = DeltaOfflineStore.build_key_index(store.config, view)
    narrow = view.__copy__()
    narrow.features = [f for f in view.features if f.name == "visits"]
    # another view of the same table asking for less: the index it finds serves it, kept as is
    assert DeltaOfflineStore.build_key_index(store.config, narrow, rebuild=False)["reused"]
    assert sorted(DeltaOfflineStore.build_key_index(store.config, narrow)["features_kept"]) == sorted(first["features_kept"])

    # the table deleted and written again: version 0, below the old index's version 2
    shutil.rmtree(uri)
    pl.DataFrame(feature_rows(4, 30), schema=SCHEMA, orient="row").write_delta(uri)
    rebuilt = DeltaOfflineStore.build_key_index(store.config, view, keep=1)
    assert rebuilt["version"] == 0 and Path(rebuilt["path"]).is_dir()
    assert [p.name.split("-")[0] for p in Path(rebuilt["path"]).parent.iterdir()] == ["v0000000000"]
    assert spec_of(store).key_index is not None


def known_at_oracle(rows: list[dict], features: list[str] = FEATURES) -> OracleSource:
    return OracleSource(rows, ["user_id"], "event_timestamp", features, "created", TTL, as_known_at=True)


def test_as_known_at_through_feasts_api_equals_the_oracle_with_and_without_the_index(lake):
    """``filter_by_created_timestamp=True``: rows written (created) after an entity timestamp
    (30 min and 10 h late corrections, rows without a created timestamp) are not seen."""
    _, rows, store = lake
    entities = entity_rows(seed=17, n=120)
    refs = [f"user_scores:{f}" for f in FEATURES]

    def known_at() -> pd.DataFrame:
        return store.get_historical_features(entity_df=entity_frame(entities), features=refs,
                                             filter_by_created_timestamp=True).to_df()

    assert spec_of(store).key_index is None
    scanned = known_at()
    DeltaOfflineStore.build_key_index(store.config, store.get_feature_view("user_scores"))
    index = spec_of(store).key_index
    assert index is not None and index.created is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the index answers: no fallback to the scan
        indexed = known_at()
    pd.testing.assert_frame_equal(indexed, scanned)
    expected = oracle_join(entities, [known_at_oracle(rows)])
    for i, row in enumerate(indexed.to_dict("records")):
        got = tuple(None if pd.isna(row[c]) else row[c] for c in FEATURES)
        assert got in expected[i][0], f"row {i}: {got} not in {expected[i][0]}"
    # the late rows matter here: a plain retrieval of the same entity rows differs
    plain = retrieve(store, entities)
    assert not plain[FEATURES].fillna(-1).equals(indexed[FEATURES].fillna(-1))


def test_an_index_built_before_it_kept_created_timestamps_is_rebuilt_rather_than_reused(lake):
    _, _, store = lake
    view = store.get_feature_view("user_scores")
    built = DeltaOfflineStore.build_key_index(store.config, view)
    meta = Path(built["path"]) / "meta.json"
    import json

    record = json.loads(meta.read_text())
    record["created_unit"] = None  # as an index of the previous layout has it
    meta.write_text(json.dumps(record))
    assert spec_of(store).key_index.created is None
    assert "reused" not in DeltaOfflineStore.build_key_index(store.config, view, rebuild=False)
    assert spec_of(store).key_index.created is not None


@pytest.mark.parametrize("known_at", [False, True])
def test_retrieval_without_entity_df_through_the_index_equals_the_scan_and_the_oracle(lake, known_at):
    """Entity-less training data (``entity_df=None`` with ``start_date``/``end_date``): every
    key seen in the window, at ``end_date``, through the key index as through the scan."""
    _, rows, store = lake
    start, end = hours(20), hours(45)

    def entity_less() -> pd.DataFrame:
        return store.get_historical_features(features=[f"user_scores:{f}" for f in FEATURES], start_date=start,
                                             end_date=end, filter_by_created_timestamp=known_at).to_df()

    scanned = entity_less()
    DeltaOfflineStore.build_key_index(store.config, store.get_feature_view("user_scores"))
    assert spec_of(store).key_index is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        indexed = entity_less()
    pd.testing.assert_frame_equal(indexed, scanned)
    assert sorted(indexed["user_id"]) == sorted({r["user_id"] for r in rows if start <= r["event_timestamp"] <= end})
    assert (indexed["event_timestamp"] == pd.Timestamp(end)).all()
    # the window is the TTL: rows older than start_date are not candidates
    window = replace(known_at_oracle(rows), ttl=min(TTL, end - start), as_known_at=known_at)
    for row in indexed.to_dict("records"):
        allowed = oracle_join([{"user_id": row["user_id"], "event_timestamp": end}], [window])[0][0]
        assert tuple(None if pd.isna(row[c]) else row[c] for c in FEATURES) in allowed
