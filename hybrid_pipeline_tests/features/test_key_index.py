"""Specification of the key index: a join through it gives what the scanning join gives,
it refuses what it cannot serve, it is never used on a table it does not describe."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid_pipeline.features.key_index import MappedRows, build_key_index, load_key_index, save_key_index
from hybrid_pipeline.features.pit import FeatureSourceSpec, PitJoinError, SourcePart, fetch_rows, point_in_time_join

from .oracle import OracleSource, oracle_join

BASE = datetime(2024, 1, 1, tzinfo=timezone.utc)


def at(hours: float) -> datetime:
    return BASE + timedelta(hours=hours)


@st.composite
def indexed_case(draw):
    key_dtype = draw(st.sampled_from([pl.Int64, pl.Int32, pl.UInt8, pl.String]))
    keys = {pl.UInt8: [0, 3, 200], pl.String: ["a", "b", "zz"]}.get(key_dtype, [-7, 0, 3, 200])
    unknown = "m" if key_dtype == pl.String else 1
    table_unit = draw(st.sampled_from(["ms", "us", "ns"]))
    entity_unit = draw(st.sampled_from(["ms", "us", "ns"]))
    rows = [
        {
            "user_id": draw(st.sampled_from([*keys, None])),
            "ts": at(draw(st.integers(0, 12))) + timedelta(milliseconds=draw(st.sampled_from([0, 0, 1]))),
            # created up to a day later: late corrections that as-known-at retrieval must not see early
            "created": at(draw(st.sampled_from([0, 1, 2, 3, 8, 13, 24]))) if draw(st.booleans()) else None,
            "v": i,
            "x": draw(st.sampled_from([None, float("nan"), 0.5, -1.0])),
            "flag": draw(st.sampled_from([None, True, False])),
        }
        for i in range(draw(st.integers(0, 25)))
    ]
    entities = [
        {"user_id": draw(st.sampled_from([*keys, unknown, None])),
         "event_timestamp": at(draw(st.integers(-1, 14))) + timedelta(milliseconds=draw(st.sampled_from([0, 1, 2])))}
        for _ in range(draw(st.integers(0, 12)))
    ]
    ttl = draw(st.one_of(st.none(), st.integers(0, 5).map(lambda h: timedelta(hours=h))))
    created_unit = draw(st.sampled_from(["ms", "us", "ns"]))
    return key_dtype, table_unit, entity_unit, rows, entities, ttl, draw(st.booleans()), created_unit, draw(st.booleans())


def _frames(key_dtype, table_unit, entity_unit, rows, entities, created_unit="us"):
    table = pl.DataFrame(
        {
            "user_id": pl.Series([r["user_id"] for r in rows], dtype=key_dtype),
            "ts": pl.Series([r["ts"] for r in rows], dtype=pl.Datetime("us", "UTC")).dt.cast_time_unit(table_unit),
            "created": pl.Series([r["created"] for r in rows], dtype=pl.Datetime("us", "UTC")).dt.cast_time_unit(created_unit),
            "v": pl.Series([r["v"] for r in rows], dtype=pl.Int64),
            "x": pl.Series([r["x"] for r in rows], dtype=pl.Float64),
            "flag": pl.Series([r["flag"] for r in rows], dtype=pl.Boolean),
        }
    )
    entity_df = pl.DataFrame(
        {
            "user_id": pl.Series([r["user_id"] for r in entities], dtype=key_dtype),
            "event_timestamp": pl.Series([r["event_timestamp"] for r in entities], dtype=pl.Datetime("us", "UTC"))
            .dt.cast_time_unit(entity_unit),
        }
    )
    return table, entity_df


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(indexed_case())
def test_a_join_through_the_index_equals_the_scanning_join_and_the_oracle(case):
    key_dtype, table_unit, entity_unit, rows, entities, ttl, with_created, created_unit, known_at = case
    table, entity_df = _frames(key_dtype, table_unit, entity_unit, rows, entities, created_unit)
    created = "created" if with_created else None
    spec = FeatureSourceSpec("fv", table.lazy(), ["user_id"], "ts", ["v", "x", "flag"], created_timestamp_field=created,
                             ttl=ttl, rescannable=True, as_known_at=known_at)
    index = build_key_index(table, "user_id", "ts", created)
    assert index is not None and len(index) == sum(r["user_id"] is not None for r in rows)
    keeping = build_key_index(table, "user_id", "ts", created, values=["v", "x", "flag"])
    assert {c for b in keeping.blocks for c in b.columns} == {"v", "x", "flag"}

    for missing in ("null", "nan"):
        scanned = point_in_time_join(entity_df, [spec], missing_floats=missing)
        indexed = point_in_time_join(entity_df, [replace(spec, key_index=index)], missing_floats=missing)
        assert indexed.equals(scanned)  # same winners, ties included
        # features taken from the index: the same values, nulls and NaNs as read from the table
        assert point_in_time_join(entity_df, [replace(spec, key_index=keeping)], missing_floats=missing).equals(scanned)
    indexed = point_in_time_join(entity_df, [replace(spec, key_index=index)])
    # the join is exact at the table's unit: the oracle compares instants at that resolution
    unit_table = table.with_columns(pl.col("ts").dt.cast_time_unit("us"))
    oracle_rows = [dict(r, ts=t) for r, t in zip(rows, unit_table["ts"].to_list())]
    truncated = entity_df["event_timestamp"].dt.cast_time_unit("us").to_list()
    expected = oracle_join([dict(e, event_timestamp=t) for e, t in zip(entities, truncated)],
                           [OracleSource(oracle_rows, ["user_id"], "ts", ["v"], created, ttl, as_known_at=known_at)])
    for i, value in enumerate(indexed["v"].to_list()):
        assert (value,) in expected[i][0], f"row {i}: got {value}, allowed {expected[i][0]}"


def test_the_index_serves_integer_keys_at_the_tables_unit_or_a_finer_one():
    table = pl.DataFrame({"user_id": [1, 2], "ts": [at(0), at(1)], "v": [1.0, 2.0]},
                         schema={"user_id": pl.Int64, "ts": pl.Datetime("us", "UTC"), "v": pl.Float64})
    index = build_key_index(table, "user_id", "ts")
    assert index.serves(pl.Int32, "us") and index.serves(pl.UInt64, "ns")
    # a coarser entity unit is not searched as such: the join converts it to the table's first
    assert not index.serves(pl.Int64, "ms")
    assert not index.serves(pl.String, "us")


def test_string_keys_are_coded_by_their_place_among_the_tables_keys():
    table = pl.DataFrame({"user_id": ["u2", "u10", None, "u2"], "ts": [at(0), at(1), at(1), at(2)]})
    index = build_key_index(table, "user_id", "ts")
    assert index.dictionary.to_list() == ["u10", "u2"] and len(index) == 3
    assert index.codes(pl.Series(["u2", "u10", "nope", None])).to_list() == [1, 0, None, None]
    assert index.serves(pl.String, "ns") and not index.serves(pl.Int64, "us")


def test_tables_that_cannot_be_indexed_get_no_index():
    floats = pl.DataFrame({"user_id": [1.5], "ts": [at(0)]})
    assert build_key_index(floats, "user_id", "ts") is None
    # keys 2^62 apart and timestamps over a decade: more than 63 bits together
    wide = pl.DataFrame({"user_id": [-(2**62), 2**62], "ts": [at(0), at(24 * 3650)]})
    assert build_key_index(wide, "user_id", "ts") is None
    huge = pl.DataFrame({"user_id": pl.Series([2**64 - 1], dtype=pl.UInt64), "ts": [at(0)]})
    assert build_key_index(huge, "user_id", "ts") is None


def test_an_index_is_loaded_back_only_for_the_fingerprint_it_was_saved_with(tmp_path):
    table = pl.DataFrame({"user_id": ["c", "a", "c"], "ts": [at(2), at(1), at(0)]})
    index = build_key_index(table, "user_id", "ts", fingerprint={"table": "t", "version": 4})
    path = save_key_index(index, tmp_path / "idx" / "v4")
    loaded = load_key_index(path, {"table": "t", "version": 4})
    assert loaded is not None and np.array_equal(loaded.keys, index.keys) and np.array_equal(loaded.rows, index.rows)
    assert loaded.dictionary.equals(index.dictionary)
    assert load_key_index(path, {"table": "t", "version": 5}) is None
    assert load_key_index(tmp_path / "idx" / "absent", {"table": "t", "version": 4}) is None
    save_key_index(index, path)  # rebuilt in place: replaced whole
    assert load_key_index(path, {"table": "t", "version": 4}) is not None
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps(dict(meta, format=999)))
    assert load_key_index(path, {"table": "t", "version": 4}) is None
    (path / "meta.json").write_text("{not json")
    assert load_key_index(path, {"table": "t", "version": 4}) is None


def test_an_index_of_another_table_is_caught_by_the_rows_read_back_and_the_join_scans():
    table = pl.DataFrame({"user_id": [1, 1, 2, 2], "ts": [at(0), at(2), at(0), at(2)], "v": [10, 12, 20, 22]})
    shuffled = table.reverse()  # same rows, other row numbers: the index points at wrong rows
    stale = build_key_index(table, "user_id", "ts")
    entities = pl.DataFrame({"user_id": [1, 2], "event_timestamp": [at(1), at(3)]})
    spec = FeatureSourceSpec("fv", shuffled.lazy(), ["user_id"], "ts", ["v"], rescannable=True, key_index=stale)
    with pytest.warns(RuntimeWarning, match="key index does not describe"):
        out = point_in_time_join(entities, [spec])
    assert out["v"].to_list() == [10, 22]


def test_parts_read_only_the_pieces_holding_wanted_rows_and_give_the_same_rows():
    frame = pl.DataFrame({"v": np.arange(10, dtype=np.float64), "s": [f"r{i}" for i in range(10)]})
    unreadable = pl.LazyFrame({"v": ["x"], "s": ["y"]}).with_columns(pl.col("v").cast(pl.Float64))  # fails if read
    parts = [SourcePart(0, 4, frame.slice(0, 4).lazy()), SourcePart(4, 3, frame.slice(4, 3).lazy()),
             SourcePart(7, 3, unreadable)]
    numbered = frame.lazy().with_row_index("__pit_source_row")
    rows = np.array([5, -1, 0, 5, 3])
    whole = fetch_rows(numbered, ["v", "s"], rows)
    assert whole.equals(fetch_rows(numbered, ["v", "s"], rows, parts=parts))
    assert whole["s"].to_list() == ["r5", None, "r0", "r5", "r3"]
    with pytest.raises(PitJoinError, match="parts"):
        fetch_rows(numbered, ["v"], np.array([8]), parts=parts[:2])  # no part holds row 8
    short = [*parts[:2], SourcePart(7, 3, pl.LazyFrame(schema=frame.schema))]  # claims rows it lacks
    with pytest.raises(PitJoinError, match="different rows"):
        fetch_rows(numbered, ["v"], np.array([8]), parts=short)


def test_missing_float_features_can_come_back_as_nan_for_pandas():
    table = pl.DataFrame({"user_id": [1, 1], "ts": [at(0), at(1)], "x": [0.5, None], "n": [1, 2], "s": ["a", "b"]})
    entities = pl.DataFrame({"user_id": [1, 1, 9], "event_timestamp": [at(0), at(2), at(2)]})
    spec = FeatureSourceSpec("fv", table, ["user_id"], "ts", ["x", "n", "s"])
    nulls = point_in_time_join(entities, [spec])
    nans = point_in_time_join(entities, [spec], missing_floats="nan")
    assert nulls["x"].to_list() == [0.5, None, None]
    assert nans["x"].is_nan().to_list() == [False, True, True] and nans["x"].null_count() == 0
    assert nans.drop("x").equals(nulls.drop("x"))  # other types keep their nulls
    indexed = replace(spec, key_index=build_key_index(table, "user_id", "ts"))
    assert point_in_time_join(entities, [indexed], missing_floats="nan").equals(nans)


def test_equal_event_timestamps_are_ordered_by_created_in_the_index():
    # the later-created row comes first in the table: only the index's tie order can pick it
    table = pl.DataFrame({"user_id": [1, 1, 1], "ts": [at(1), at(1), at(1)],
                          "created": [at(5), at(3), None], "v": ["late", "early", "unknown"]})
    entities = pl.DataFrame({"user_id": [1], "event_timestamp": [at(2)]})
    index = build_key_index(table, "user_id", "ts", "created")
    spec = FeatureSourceSpec("fv", table, ["user_id"], "ts", ["v"], created_timestamp_field="created", key_index=index)
    assert point_in_time_join(entities, [spec])["v"].to_list() == ["late"]


def test_a_writer_losing_the_rename_race_keeps_the_index_already_in_place(tmp_path, monkeypatch):
    index = build_key_index(pl.DataFrame({"user_id": [1, 2], "ts": [at(0), at(1)]}), "user_id", "ts", fingerprint={"v": 1})
    path = tmp_path / "v1"
    real_replace = os.replace

    def racing(src, dst):
        if Path(dst) == path and not path.exists():
            shutil.copytree(src, path)  # another writer's identical index lands first
            raise OSError(39, "Directory not empty")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", racing)
    save_key_index(index, path)
    assert load_key_index(path, {"v": 1}) is not None
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]  # no staging directory left behind


def _kept_table() -> pl.DataFrame:
    rng = np.random.default_rng(3)
    n = 40
    return pl.DataFrame(
        {
            "user_id": rng.integers(0, 6, n),
            "ts": [at(int(h)) for h in rng.integers(0, 30, n)],
            "x": pl.Series(np.where(rng.random(n) < 0.2, np.nan, rng.standard_normal(n))).set(pl.Series(rng.random(n) < 0.2), None),
            "k": pl.Series(rng.integers(-5, 5, n), dtype=pl.Int32),
            "s": [f"s{i}" for i in range(n)],
        }
    )


def test_kept_features_come_from_the_index_and_only_the_smallest_part_with_winners_is_read_to_check_it():
    table = _kept_table()
    entities = pl.DataFrame({"user_id": [0, 1, 2, 3, 4, 5, 9], "event_timestamp": [at(29)] * 7})
    spec = FeatureSourceSpec("fv", table.lazy(), ["user_id"], "ts", ["x", "k"], rescannable=True)
    expected = point_in_time_join(entities, [spec])
    unreadable = pl.col("user_id", "x").cast(pl.String).str.replace(".*", "not a number").cast(pl.Int64)

    def part(start: int, rows: int, readable_keys: bool) -> SourcePart:
        piece = table.slice(start, rows).lazy().with_columns(pl.col("x").cast(pl.String).str.replace(".*", "?").cast(pl.Float64))
        return SourcePart(start, rows, piece if readable_keys else piece.with_columns(unreadable))

    # the middle part is the smallest: the only one read, and only its keys and timestamps
    parts = [part(0, 24, False), part(24, 4, True), part(28, 12, False)]
    index = build_key_index(table, "user_id", "ts", values=["x", "k", "s"])
    assert index.covers("x", pl.Float64) and index.covers("k", pl.Int32) and not index.covers("s", pl.String)
    winners = index.match(entities["user_id"], entities["event_timestamp"].to_physical().to_numpy(), "us", None)[0]
    assert all(((winners >= p.start) & (winners < p.start + p.rows)).any() for p in parts), "winners in every part"
    with pytest.raises(pl.exceptions.PolarsError):
        parts[0].frame.collect()  # reading it would fail the join
    out = point_in_time_join(entities, [replace(spec, key_index=index, parts=parts)])
    assert out.equals(expected)


def test_a_feature_that_is_the_timestamp_column_is_read_for_every_winner_beside_kept_features():
    table = pl.DataFrame({"user_id": [1, 2, 3, 4], "ts": [at(h) for h in range(4)], "v": [1.0, 2.0, 3.0, 4.0]})
    parts = [SourcePart(0, 1, table.slice(0, 1).lazy()), SourcePart(1, 3, table.slice(1, 3).lazy())]
    entities = pl.DataFrame({"user_id": [1, 2, 3, 4], "event_timestamp": [at(9)] * 4})
    spec = FeatureSourceSpec("fv", table.lazy(), ["user_id"], "ts", ["v", "ts"], rescannable=True, parts=parts)
    # "v" comes from the index; "ts" is read with the check, so it must be read for all winners
    indexed = replace(spec, key_index=build_key_index(table, "user_id", "ts", values=["v"]))
    assert point_in_time_join(entities, [indexed]).equals(point_in_time_join(entities, [spec]))
    assert point_in_time_join(entities, [indexed])["ts"].null_count() == 0


def test_an_index_keeping_features_of_another_row_order_is_caught_and_the_join_scans():
    table = pl.DataFrame({"user_id": [1, 1, 2, 2], "ts": [at(0), at(2), at(0), at(2)], "v": [10, 12, 20, 22]})
    stale = build_key_index(table, "user_id", "ts", values=["v"])
    shuffled = table.reverse()
    entities = pl.DataFrame({"user_id": [1, 2], "event_timestamp": [at(1), at(3)]})
    parts = [SourcePart(0, 2, shuffled.slice(0, 2).lazy()), SourcePart(2, 2, shuffled.slice(2, 2).lazy())]
    for pieces in (None, parts):  # whole-table check, and the one-part check
        spec = FeatureSourceSpec("fv", shuffled.lazy(), ["user_id"], "ts", ["v"], rescannable=True, key_index=stale,
                                 parts=pieces)
        with pytest.warns(RuntimeWarning, match="key index does not describe"):
            out = point_in_time_join(entities, [spec])
        assert out["v"].to_list() == [10, 22]


def test_an_index_keeping_features_of_a_longer_table_is_caught_even_when_its_extra_rows_fall_past_every_part():
    longer = pl.DataFrame({"user_id": [1, 2, 3, 4, 5, 6], "ts": [at(0)] * 6, "v": [10, 20, 30, 40, 50, 60]})
    stale = build_key_index(longer, "user_id", "ts", values=["v"])
    table = longer.head(4).with_columns(pl.col("user_id") + 10)  # the table now read: 4 other rows
    entities = pl.DataFrame({"user_id": [1, 6], "event_timestamp": [at(1), at(1)]})
    parts = [SourcePart(0, 3, table.slice(0, 3).lazy()), SourcePart(3, 1, table.slice(3, 1).lazy())]
    spec = FeatureSourceSpec("fv", table.lazy(), ["user_id"], "ts", ["v"], rescannable=True, key_index=stale, parts=parts)
    with pytest.warns(RuntimeWarning, match="key index does not describe"):
        out = point_in_time_join(entities, [spec])
    assert out["v"].to_list() == [None, None]  # the scan's answer: users 1 and 6 are not in the table


def test_kept_features_are_read_back_from_a_saved_index_one_window_at_a_time(tmp_path, monkeypatch):
    import hybrid_pipeline.features.key_index as key_index

    table = _kept_table()
    built = build_key_index(table, "user_id", "ts", values=["x", "k"], fingerprint={"v": 1})
    path = save_key_index(built, tmp_path / "v1")
    loaded = load_key_index(path, {"v": 1})
    assert isinstance(loaded.blocks[0].values, MappedRows)
    shutil.rmtree(path)  # pruned or rebuilt while a join holds it: the mapping stays readable
    monkeypatch.setattr(key_index, "_WINDOW_BYTES", 24)  # windows of 3 float rows, 6 int rows
    dense = np.arange(len(built))
    sparse = np.array([0, 0, 7, 21, 39])
    for pos in (dense, sparse, dense[:0]):
        got, want = loaded.values(pos, ["k", "x"]), built.values(pos, ["k", "x"])
        assert got.equals(want) and got.height == len(pos)
    first = table.slice(int(built.rows[0]), 1).select(pl.col("x").alias("x"))
    assert built.values(sparse[:2], ["x"]).equals(pl.concat([first, first]))  # the index's first row, twice
    entities = pl.DataFrame({"user_id": [0, 1, 2, 3, 4, 5, 9] * 3,
                             "event_timestamp": [at(h) for h in (3, 10, 29) for _ in range(7)]})
    spec = FeatureSourceSpec("fv", table.lazy(), ["user_id"], "ts", ["x", "k"], rescannable=True)
    assert point_in_time_join(entities, [replace(spec, key_index=loaded)]).equals(point_in_time_join(entities, [spec]))


def test_an_index_whose_value_block_does_not_fit_its_metadata_is_not_loaded(tmp_path):
    built = build_key_index(_kept_table(), "user_id", "ts", values=["x"], fingerprint={"v": 1})
    path = save_key_index(built, tmp_path / "v1")
    np.save(path / "values_0.npy", np.zeros((3, 1)))  # a block of another length
    assert load_key_index(path, {"v": 1}) is None
