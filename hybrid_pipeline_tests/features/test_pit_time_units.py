"""Entity and feature timestamps in different units are compared at the finer of the two.

A feature row written at 12:00:00.000100 is later than an entity row at 12:00:00.000 (a
millisecond entity frame) and must not match it; rows within one entity unit keep their
order; TTL bounds are exact at the finer unit. The same holds on every path: the scanning
join (eager and lazy plan) and the join through a key index, which serves coarser entity
units too instead of falling back to the scan. The entity timestamp column keeps its unit.
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

T0 = datetime(2024, 1, 1, 12, tzinfo=timezone.utc)
US, MS = timedelta(microseconds=1), timedelta(milliseconds=1)
ENTITY_UNITS = ["s", "ms", "us", "ns"]  # pandas units; polars holds seconds as milliseconds
POLARS_UNIT = {"s": "ms", "ms": "ms", "us": "us", "ns": "ns"}


def table(rows: list[tuple], unit: str = "us", created: bool = False) -> pl.DataFrame:
    """Feature rows ``(key, ts[, created], v)`` with timestamps in ``unit``."""
    columns = ["k", "ts", "created", "v"] if created else ["k", "ts", "v"]
    frame = pl.DataFrame(rows, schema=columns, orient="row")
    return frame.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")).dt.cast_time_unit(unit))  # type: ignore[arg-type]


def entities(keys: list[int], instants: list[datetime], unit: str) -> pd.DataFrame:
    """An entity frame as users pass it: pandas, timestamps as ``datetime64[<unit>, UTC]``."""
    return pd.DataFrame({"k": keys, "event_timestamp": pd.to_datetime(instants, utc=True).astype(f"datetime64[{unit}, UTC]")})


# --------------------------------------------------------------------------- worked examples


@pytest.mark.parametrize("unit", ENTITY_UNITS)
def test_a_feature_row_a_fraction_of_a_unit_after_the_entity_timestamp_does_not_match_it(unit):
    feats = table([(1, T0 - timedelta(seconds=10), 0), (1, T0 + 100 * US, 1)])
    spec = FeatureSourceSpec("fv", feats.lazy(), ["k"], "ts", ["v"])
    entity_df = entities([1, 1], [T0, T0 + timedelta(hours=1)], unit)
    for path, out in every_path(entity_df, spec, feats).items():
        assert out["v"].to_list() == [0, 1], path
        # the entity timestamps come back as given, in their own unit
        assert out.schema["event_timestamp"] == pl.Datetime(POLARS_UNIT[unit], "UTC"), path
        assert out["event_timestamp"].to_list() == [T0, T0 + timedelta(hours=1)], path


@pytest.mark.parametrize("unit", ["s", "ms"])
def test_rows_within_one_entity_unit_keep_their_order_at_the_finer_unit(unit):
    # both rows fall in the second and millisecond before the entity row; the later event
    # wins although its created timestamp is earlier (created only breaks equal events)
    second = timedelta(seconds=1) if unit == "s" else MS
    feats = table(
        [(1, T0 - second + 100 * US, T0 + timedelta(days=1), "early event, late created"),
         (1, T0 - second + 900 * US, T0, "late event, early created")],
        created=True,
    ).with_columns(pl.col("created").cast(pl.Datetime("us", "UTC")))
    spec = FeatureSourceSpec("fv", feats.lazy(), ["k"], "ts", ["v"], created_timestamp_field="created")
    entity_df = entities([1], [T0], unit)
    for path, out in every_path(entity_df, spec, feats).items():
        assert out["v"].to_list() == ["late event, early created"], path


@pytest.mark.parametrize("unit", ["ms", "us", "ns"])
def test_ttl_bounds_are_exact_at_the_finer_unit(unit):
    # a TTL of 1 h 500 us from entity rows at T0 + 1 h reaches back to T0 - 500 us, also
    # from a millisecond entity frame
    ttl = timedelta(hours=1, microseconds=500)
    feats = table([(1, T0 - 500 * US, 1), (2, T0 - 501 * US, 2), (3, T0 + timedelta(hours=1) + US, 3)])
    spec = FeatureSourceSpec("fv", feats.lazy(), ["k"], "ts", ["v"], ttl=ttl)
    entity_df = entities([1, 2, 3], [T0 + timedelta(hours=1)] * 3, unit)
    for path, out in every_path(entity_df, spec, feats).items():
        # inclusive at exactly t - ttl, expired a microsecond before, a microsecond late is future
        assert out["v"].to_list() == [1, None, None], path


def test_nanosecond_entity_rows_see_nanosecond_feature_rows_up_to_their_own_instant():
    ns = pl.Series([T0], dtype=pl.Datetime("ns", "UTC")).to_physical()
    feats = pl.DataFrame({"k": [1, 1], "ts": (ns + pl.Series([0, 500])).cast(pl.Datetime("ns", "UTC")), "v": [0, 1]})
    spec = FeatureSourceSpec("fv", feats.lazy(), ["k"], "ts", ["v"])
    entity_df = pl.DataFrame({"k": [1, 1], "event_timestamp": (ns + pl.Series([499, 700])).cast(pl.Datetime("ns", "UTC"))})
    for path, out in every_path(entity_df, spec, feats).items():
        assert out["v"].to_list() == [0, 1], path  # 500 ns is after 499 ns and before 700 ns


def test_entity_instants_the_finer_unit_cannot_hold_are_refused_plainly():
    feats = pl.DataFrame({"k": [1], "ts": pl.Series([T0], dtype=pl.Datetime("ns", "UTC")), "v": [1]})
    spec = FeatureSourceSpec("fv", feats.lazy(), ["k"], "ts", ["v"])
    far = pl.DataFrame({"k": [1], "event_timestamp": pl.Series([datetime(2300, 1, 1, tzinfo=timezone.utc)], dtype=pl.Datetime("ms", "UTC"))})
    for join in (point_in_time_join, lambda e, s: point_in_time_join_lazy(e, s).collect()):
        with pytest.raises(PitJoinError, match="cannot be compared with feature timestamps in ns"):
            join(far, [spec])


@pytest.mark.parametrize("indexed", [False, True])
@pytest.mark.parametrize("unit", ["s", "ms"])
def test_historical_retrieval_from_delta_compares_a_coarse_entity_frame_at_the_tables_microseconds(tmp_path, unit, indexed):
    feats = table([(1, T0 - timedelta(seconds=10), 0), (1, T0 + 100 * US, 1), (1, T0 + timedelta(hours=1) - 100 * US, 2)])
    store = delta_feature_store(tmp_path, feats, "int64", ttl=timedelta(hours=1))
    if indexed:
        assert DeltaOfflineStore.build_key_index(store.config, store.get_feature_view("fv")) is not None
    entity_df = entities([1, 1], [T0, T0 + timedelta(hours=1)], unit)
    with index_only() if indexed else nullcontext():  # the index serves it: no scan
        df = store.get_historical_features(entity_df=entity_df, features=["fv:v"]).to_df()
    assert df["v"].tolist() == [0, 2]
    assert str(df["event_timestamp"].dtype) == "datetime64[ms, UTC]"  # a seconds frame comes back in ms
    assert df["event_timestamp"].tolist() == entity_df["event_timestamp"].tolist()


# --------------------------------------------------------------------------- property


def _instant(second: int, ms: int, us: int, ns: int) -> pd.Timestamp:
    return pd.Timestamp(T0) + pd.Timedelta(seconds=second, milliseconds=ms, microseconds=us, nanoseconds=ns)


def _floor(value: pd.Timestamp, unit: str) -> pd.Timestamp:
    return value.floor(unit)


# instants a few seconds apart, with parts below every unit, so that rows and entity rows
# often share a second or a millisecond without being equal
instants = st.builds(_instant, st.integers(0, 3), st.sampled_from([0, 1, 999]), st.sampled_from([0, 100, 999]),
                     st.sampled_from([0, 1, 500]))


@st.composite
def unit_case(draw):
    entity_unit = draw(st.sampled_from(ENTITY_UNITS))
    table_unit = draw(st.sampled_from(["ms", "us", "ns"]))
    rows = [
        {
            "k": draw(st.sampled_from([1, 2, None])),
            "ts": _floor(draw(instants), table_unit),
            # created in microseconds, unrelated to the event order
            "created": _floor(draw(instants), "us") if draw(st.booleans()) else None,
            "v": i,
        }
        for i in range(draw(st.integers(0, 16)))
    ]
    entity_rows = [
        {"k": draw(st.sampled_from([1, 2, 3])), "event_timestamp": _floor(draw(instants), entity_unit)}
        for _ in range(draw(st.integers(1, 10)))
    ]
    ttl = draw(st.sampled_from([None, timedelta(0), MS, timedelta(microseconds=1_500), timedelta(seconds=1, microseconds=100)]))
    return entity_unit, table_unit, rows, entity_rows, ttl, draw(st.booleans())


def _datetimes(values: list[pd.Timestamp | None], unit: str) -> pl.Series:
    """``values`` (whole ``unit``s) as a ``Datetime(unit, "UTC")`` column, exactly."""
    ns = pl.Series([None if v is None else v.value for v in values], dtype=pl.Int64)
    return ns.cast(pl.Datetime("ns", "UTC")).dt.cast_time_unit(unit)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unit_case())
def test_every_entity_unit_matches_the_oracle_at_full_precision_on_every_path(case):
    entity_unit, table_unit, rows, entity_rows, ttl, with_created = case
    feats = pl.DataFrame(
        {
            "k": pl.Series([r["k"] for r in rows], dtype=pl.Int64),
            "ts": _datetimes([r["ts"] for r in rows], table_unit),
            "created": _datetimes([r["created"] for r in rows], "us"),
            "v": pl.Series([r["v"] for r in rows], dtype=pl.Int64),
        }
    )
    created = "created" if with_created else None
    spec = FeatureSourceSpec("fv", feats.lazy(), ["k"], "ts", ["v"], created_timestamp_field=created, ttl=ttl)
    entity_df = pd.DataFrame(
        {
            "k": [e["k"] for e in entity_rows],
            "event_timestamp": pd.Series([e["event_timestamp"] for e in entity_rows]).astype(f"datetime64[{entity_unit}, UTC]"),
        }
    )
    # the oracle compares pandas timestamps, exact to the nanosecond
    expected = oracle_join(entity_rows, [OracleSource(rows, ["k"], "ts", ["v"], created, ttl)])
    given_ts = pl.from_pandas(entity_df)["event_timestamp"]
    results = every_path(entity_df, spec, feats)
    for path, out in results.items():
        assert out["event_timestamp"].dtype == pl.Datetime(POLARS_UNIT[entity_unit], "UTC"), path
        assert out["event_timestamp"].to_physical().to_list() == given_ts.to_physical().to_list(), path
        for i, value in enumerate(out["v"].to_list()):
            assert (value,) in expected[i][0], f"{path}, row {i}: got {value}, allowed {expected[i][0]}"
    # ties left open by the semantics are broken the same way by the scan and the index
    assert results["key index"].equals(results["scan"])
