"""Join keys of different numeric types compare by value; a key the table cannot hold is unknown.

An entity key that the table's key type cannot hold (3,000,000,000 against an ``Int32``
column, a ``UInt64`` key above the ``Int64`` range) cannot be in the table: its row gets
nulls, like any unknown key, and every other row its features. Keys of a numeric type
against a non-numeric one (integers against strings) are refused, whatever their values.
"""

from __future__ import annotations

from contextlib import nullcontext
from datetime import datetime, timedelta, timezone

import pandas as pd
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid_pipeline.features.delta_offline_store import DeltaOfflineStore
from hybrid_pipeline.features.pit import FeatureSourceSpec, PitJoinError, point_in_time_join, point_in_time_join_lazy

from .oracle import OracleSource, oracle_join
from .paths import delta_feature_store, every_path, index_only

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
RANGES = {
    pl.Int8: (-(2**7), 2**7 - 1),
    pl.Int32: (-(2**31), 2**31 - 1),
    pl.Int64: (-(2**63), 2**63 - 1),
    pl.UInt8: (0, 2**8 - 1),
    pl.UInt32: (0, 2**32 - 1),
    pl.UInt64: (0, 2**64 - 1),
}
# values at and beyond the edges of every type above
KEYS = sorted({v for lo, hi in RANGES.values() for v in (lo, hi, lo - 1, hi + 1)} | {0, 1, 3_000_000_000})


def holds(dtype: pl.DataType, value: int) -> bool:
    lo, hi = RANGES[dtype]  # type: ignore[index]
    return lo <= value <= hi


def keyed(keys: list[int | None], dtype: pl.DataType, hours: list[int], **columns) -> pl.DataFrame:
    return pl.DataFrame(
        {"k": pl.Series(keys, dtype=dtype), "ts": [T0 + timedelta(hours=h) for h in hours], **columns}
    ).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))


# --------------------------------------------------------------------------- worked examples


@pytest.mark.parametrize(
    ("table_dtype", "entity_dtype", "unknown"),
    [(pl.Int32, pl.Int64, 3_000_000_000), (pl.Int64, pl.UInt64, 2**63 + 5), (pl.UInt8, pl.Int64, -1)],
)
def test_an_entity_key_the_tables_key_type_cannot_hold_gets_nulls_and_the_other_rows_their_features(
    table_dtype, entity_dtype, unknown
):
    feats = keyed([1, 2], table_dtype, [0, 0], v=[10, 20])
    spec = FeatureSourceSpec("fv", feats.lazy(), ["k"], "ts", ["v"])
    entity_df = keyed([1, unknown, 2, None], entity_dtype, [1, 1, 1, 1]).rename({"ts": "event_timestamp"})
    for path, out in every_path(entity_df, spec, feats).items():
        assert out["v"].to_list() == [10, None, 20, None], path
        assert out["k"].dtype == entity_dtype and out["k"].to_list() == [1, unknown, 2, None], path


def test_entity_keys_none_of_which_the_table_can_hold_give_nulls_only():
    feats = keyed([1, 2], pl.Int32, [0, 0], v=[10, 20])
    spec = FeatureSourceSpec("fv", feats.lazy(), ["k"], "ts", ["v"])
    entity_df = keyed([2**40, -(2**40)], pl.Int64, [1, 1]).rename({"ts": "event_timestamp"})
    for path, out in every_path(entity_df, spec, feats).items():
        assert out["v"].to_list() == [None, None], path


@pytest.mark.parametrize(
    ("table_keys", "entity_keys"),
    [([1, 2], ["1", "x"]), ([1, 2], ["1"]), (["1", "2"], [1, 2])],
    ids=["strings against integers", "strings that parse as integers", "integers against strings"],
)
def test_numeric_keys_against_non_numeric_keys_are_refused_whatever_the_values(table_keys, entity_keys):
    feats = pl.DataFrame({"k": table_keys, "ts": [T0] * len(table_keys), "v": list(range(len(table_keys)))})
    spec = FeatureSourceSpec("fv", feats.lazy(), ["k"], "ts", ["v"], rescannable=True)
    entity_df = pl.DataFrame({"k": entity_keys, "event_timestamp": [T0] * len(entity_keys)})
    for join in (point_in_time_join, lambda e, s: point_in_time_join_lazy(e, s).collect()):
        with pytest.raises(PitJoinError, match="join key 'k': entity dtype .* cannot be compared with"):
            join(entity_df, [spec])


# --------------------------------------------------------------------------- property


@st.composite
def key_case(draw):
    table_dtype = draw(st.sampled_from(list(RANGES)))
    entity_dtype = draw(st.sampled_from(list(RANGES)))
    table_keys = [k for k in KEYS if holds(table_dtype, k)]
    entity_keys = [k for k in KEYS if holds(entity_dtype, k)]
    rows = [
        {"k": draw(st.sampled_from([*table_keys, None])), "ts": T0 + timedelta(hours=draw(st.integers(0, 4))), "v": i}
        for i in range(draw(st.integers(0, 12)))
    ]
    entity_rows = [
        {"k": draw(st.sampled_from([*entity_keys, None])), "event_timestamp": T0 + timedelta(hours=draw(st.integers(0, 5)))}
        for _ in range(draw(st.integers(1, 10)))
    ]
    return table_dtype, entity_dtype, rows, entity_rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key_case())
def test_integer_keys_of_any_two_types_compare_by_value_on_every_path(case):
    table_dtype, entity_dtype, rows, entity_rows = case
    feats = pl.DataFrame(
        {
            "k": pl.Series([r["k"] for r in rows], dtype=table_dtype),
            "ts": pl.Series([r["ts"] for r in rows], dtype=pl.Datetime("us", "UTC")),
            "v": pl.Series([r["v"] for r in rows], dtype=pl.Int64),
        }
    )
    spec = FeatureSourceSpec("fv", feats.lazy(), ["k"], "ts", ["v"])
    entity_df = pl.DataFrame(
        {
            "k": pl.Series([e["k"] for e in entity_rows], dtype=entity_dtype),
            "event_timestamp": pl.Series([e["event_timestamp"] for e in entity_rows], dtype=pl.Datetime("us", "UTC")),
        }
    )
    expected = oracle_join(entity_rows, [OracleSource(rows, ["k"], "ts", ["v"])])
    # tables with keys more than 63 bits apart have no key index
    for path, out in every_path(entity_df, spec, feats, indexable=False).items():
        assert out["k"].to_list() == [e["k"] for e in entity_rows], path
        for i, value in enumerate(out["v"].to_list()):
            assert (value,) in expected[i][0], f"{path}, row {i}: got {value}, allowed {expected[i][0]}"


# --------------------------------------------------------------------------- through Feast


@pytest.mark.parametrize("indexed", [False, True])
@pytest.mark.parametrize(
    ("table_dtype", "value_type", "entity_keys"),
    [
        (pl.Int32, "int32", pd.Series([1, 3_000_000_000, 2], dtype="int64")),
        (pl.Int64, "int64", pd.Series([1, 2**64 - 1, 2], dtype="uint64")),
    ],
    ids=["int64 entity keys against an Int32 column", "uint64 entity keys against an Int64 column"],
)
def test_historical_retrieval_gives_an_entity_key_the_table_cannot_hold_nulls(
    tmp_path, table_dtype, value_type, entity_keys, indexed
):
    store = delta_feature_store(tmp_path, keyed([1, 2], table_dtype, [0, 0], v=[10, 20]), value_type)
    if indexed:
        assert DeltaOfflineStore.build_key_index(store.config, store.get_feature_view("fv")) is not None
    entity_df = pd.DataFrame({"k": entity_keys, "event_timestamp": pd.to_datetime([T0 + timedelta(hours=1)] * 3, utc=True)})
    with index_only() if indexed else nullcontext():  # the index serves it: no scan
        df = store.get_historical_features(entity_df=entity_df, features=["fv:v"]).to_df()
    assert df["k"].tolist() == entity_keys.tolist()
    assert [None if pd.isna(v) else v for v in df["v"]] == [10, None, 20]
