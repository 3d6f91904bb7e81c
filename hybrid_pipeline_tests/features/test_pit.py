"""Specification of ``point_in_time_join`` (Feast's historical retrieval semantics)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid_pipeline.features.pit import (
    FeatureSourceSpec,
    PitJoinError,
    point_in_time_join,
    point_in_time_join_lazy,
)

from .oracle import OracleSource, oracle_join

UTC = timezone.utc
BASE = datetime(2024, 1, 1, tzinfo=UTC)
USERS = ["a", "b", "c"]


def at(hours: int) -> datetime:
    return BASE + timedelta(hours=hours)


def _ts_column(values: list[datetime | None], representation: str, unit: str) -> pl.Series:
    """The same instants as naive-UTC, aware-UTC or aware-Paris polars datetimes."""
    s = pl.Series("x", values, dtype=pl.Datetime("us", "UTC")).dt.cast_time_unit(unit)  # type: ignore[arg-type]
    if representation == "naive":
        return s.dt.replace_time_zone(None)
    if representation == "paris":
        return s.dt.convert_time_zone("Europe/Paris")
    return s


# --------------------------------------------------------------------------- property test


@st.composite
def pit_case(draw):
    full_feature_names = draw(st.booleans())
    n_sources = draw(st.integers(1, 3))
    sources = []
    for j in range(n_sources):
        with_created = draw(st.booleans())
        rows = []
        for i in range(draw(st.integers(0, 14))):
            rows.append(
                {
                    "user_id": draw(st.sampled_from([*USERS, None])),
                    "ts": at(draw(st.integers(0, 12))),  # few distinct hours -> many ties
                    # created long after the event = a late row; None loses every tie
                    "created": at(draw(st.integers(0, 40))) if with_created and draw(st.booleans()) else None,
                    "v": i,
                    "s": f"src{j}-row{i}",
                }
            )
        rows = list(draw(st.permutations(rows)))  # arrival order unrelated to event time
        ttl = draw(st.one_of(st.none(), st.integers(0, 6).map(lambda h: timedelta(hours=h))))
        sources.append(
            {
                "rows": rows,
                "with_created": with_created,
                "ttl": ttl,
                "repr": draw(st.sampled_from(["utc", "naive", "paris"])),
                "unit": draw(st.sampled_from(["us", "ns", "ms"])),
                "created_unit": draw(st.sampled_from(["us", "ns", "ms"])),  # a unit of their own
                "names": ("v", "s") if full_feature_names else (f"v{j}", f"s{j}"),
                # as-known-at (filter_by_created_timestamp): late corrections, ties, nulls
                "known": draw(st.booleans()),
            }
        )
    entity_rows = [
        {"user_id": draw(st.sampled_from([*USERS, "z", None])), "event_timestamp": at(draw(st.integers(-2, 16)))}
        for _ in range(draw(st.integers(0, 10)))
    ]
    # duplicate entity rows on purpose
    entity_rows += [dict(r) for r in draw(st.lists(st.sampled_from(entity_rows), max_size=3))] if entity_rows else []
    for i, row in enumerate(entity_rows):
        row["tag"] = i
    entity_repr = draw(st.sampled_from(["utc", "naive", "paris"]))
    engine = draw(st.sampled_from(["in-memory", "streaming"]))
    # in-memory source frames are read in two passes (keys first, then the winning rows)
    for src in sources:
        src["eager"] = draw(st.booleans())
    return full_feature_names, sources, entity_rows, entity_repr, engine


def _build(sources):
    specs, oracles = [], []
    for j, src in enumerate(sources):
        rows = src["rows"]
        vname, sname = src["names"]
        frame = pl.DataFrame(
            {
                "user_id": pl.Series([r["user_id"] for r in rows], dtype=pl.String),
                "ts": _ts_column([r["ts"] for r in rows], src["repr"], src["unit"]),
                "created": _ts_column([r["created"] for r in rows], src["repr"], src.get("created_unit", src["unit"])),
                vname: pl.Series([r["v"] for r in rows], dtype=pl.Int64),
                sname: pl.Series([r["s"] for r in rows], dtype=pl.String),
                "unrelated": pl.Series([0.5] * len(rows), dtype=pl.Float64),
            }
        )
        created = "created" if src["with_created"] else None
        specs.append(
            FeatureSourceSpec(
                name=f"view{j}",
                frame=frame if src.get("eager") else frame.lazy(),
                join_keys=["user_id"],
                timestamp_field="ts",
                feature_columns=[vname, sname],
                created_timestamp_field=created,
                ttl=src["ttl"],
                as_known_at=src.get("known", False),
            )
        )
        oracle_rows = [{"user_id": r["user_id"], "ts": r["ts"], "created": r["created"], vname: r["v"], sname: r["s"]} for r in rows]
        oracles.append(
            OracleSource(oracle_rows, ["user_id"], "ts", [vname, sname], created, src["ttl"], as_known_at=src.get("known", False))
        )
    return specs, oracles


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pit_case())
def test_point_in_time_join_matches_brute_force_oracle(case):
    full_feature_names, sources, entity_rows, entity_repr, engine = case
    specs, oracles = _build(sources)
    entity_df = pl.DataFrame(
        {
            "user_id": pl.Series([r["user_id"] for r in entity_rows], dtype=pl.String),
            "event_timestamp": _ts_column([r["event_timestamp"] for r in entity_rows], entity_repr, "us"),
            "tag": pl.Series([r["tag"] for r in entity_rows], dtype=pl.Int64),
        }
    )

    out = point_in_time_join(entity_df, specs, full_feature_names=full_feature_names, engine=engine)
    expected = oracle_join(entity_rows, oracles)
    _assert_oracle_answers(out, entity_rows, specs, expected, full_feature_names)
    # the lazy plan (join_asof) is a second implementation of the same semantics
    lazy = point_in_time_join_lazy(entity_df, specs, full_feature_names=full_feature_names).collect()
    _assert_oracle_answers(lazy, entity_rows, specs, expected, full_feature_names)


def _assert_oracle_answers(out, entity_rows, specs, expected, full_feature_names):

    # every entity row, duplicates included, in the original order, extra columns kept
    assert out.height == len(entity_rows)
    assert out["tag"].to_list() == [r["tag"] for r in entity_rows]
    assert out["user_id"].to_list() == [r["user_id"] for r in entity_rows]
    assert out.schema["event_timestamp"] == pl.Datetime("us", "UTC")
    assert out["event_timestamp"].to_list() == [r["event_timestamp"] for r in entity_rows]
    for i, row in enumerate(out.iter_rows(named=True)):
        for j, (spec, allowed) in enumerate(zip(specs, expected[i])):
            names = [spec.output_column(f, full_feature_names) for f in spec.feature_columns]
            got = tuple(row[n] for n in names)
            assert got in allowed, f"entity row {i} source {j}: got {got}, allowed {allowed}"


# --------------------------------------------------------------------------- worked examples


def _features(rows: list[tuple], created: bool = False) -> pl.LazyFrame:
    cols = ["user_id", "ts", "created", "value"] if created else ["user_id", "ts", "value"]
    return pl.DataFrame(rows, schema=cols, orient="row").lazy()


def _entities(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["user_id", "event_timestamp"], orient="row")


def test_latest_row_at_or_before_the_entity_timestamp_wins():
    feats = _features([("a", at(1), 1), ("a", at(3), 3), ("a", at(5), 5)])
    spec = FeatureSourceSpec("fv", feats, ["user_id"], "ts", ["value"])
    out = point_in_time_join(_entities([("a", at(0)), ("a", at(3)), ("a", at(4)), ("a", at(9))]), [spec])
    assert out["value"].to_list() == [None, 3, 3, 5]


def test_ttl_window_is_inclusive_at_both_ends():
    feats = _features([("a", at(2), 2)])
    spec = FeatureSourceSpec("fv", feats, ["user_id"], "ts", ["value"], ttl=timedelta(hours=3))
    out = point_in_time_join(_entities([("a", at(2)), ("a", at(5)), ("a", at(5) + timedelta(microseconds=1))]), [spec])
    assert out["value"].to_list() == [2, 2, None]


def test_expired_latest_row_does_not_fall_back_to_an_older_one():
    feats = _features([("a", at(0), 0), ("a", at(1), 1)])
    spec = FeatureSourceSpec("fv", feats, ["user_id"], "ts", ["value"], ttl=timedelta(hours=2))
    out = point_in_time_join(_entities([("a", at(2)), ("a", at(4))]), [spec])
    assert out["value"].to_list() == [1, None]


def test_equal_event_timestamps_are_broken_by_the_latest_created_timestamp():
    feats = _features(
        [("a", at(1), at(9), "late correction"), ("a", at(1), at(1), "original"), ("a", at(1), None, "no created")],
        created=True,
    )
    spec = FeatureSourceSpec("fv", feats, ["user_id"], "ts", ["value"], created_timestamp_field="created")
    out = point_in_time_join(_entities([("a", at(2))]), [spec])
    assert out["value"].to_list() == ["late correction"]


def test_entity_rows_keep_order_duplicates_and_extra_columns():
    feats = _features([("a", at(1), 1), ("b", at(1), 10)])
    spec = FeatureSourceSpec("fv", feats, ["user_id"], "ts", ["value"])
    entities = pl.DataFrame(
        {
            "user_id": ["b", "a", "b", "a", "zz"],
            "event_timestamp": [at(2), at(0), at(2), at(0), at(2)],
            "label": [1.0, 0.0, 1.0, 0.0, None],
        }
    )
    out = point_in_time_join(entities, [spec])
    assert out.columns == ["user_id", "event_timestamp", "label", "value"]
    assert out["user_id"].to_list() == ["b", "a", "b", "a", "zz"]
    assert out["label"].to_list() == [1.0, 0.0, 1.0, 0.0, None]
    assert out["value"].to_list() == [10, None, 10, None, None]


def test_naive_timestamps_are_read_as_utc_and_aware_ones_are_converted():
    paris = pl.DataFrame({"user_id": ["a"], "ts": [at(1)], "value": [1]}).with_columns(
        pl.col("ts").dt.convert_time_zone("Europe/Paris")
    )
    spec = FeatureSourceSpec("fv", paris.lazy(), ["user_id"], "ts", ["value"])
    naive_entities = pl.DataFrame({"user_id": ["a", "a"], "event_timestamp": [datetime(2024, 1, 1, 0, 59), datetime(2024, 1, 1, 1, 0)]})
    out = point_in_time_join(naive_entities, [spec])
    assert out["value"].to_list() == [None, 1]
    assert out.schema["event_timestamp"] == pl.Datetime("us", "UTC")


def test_full_feature_names_prefix_with_the_view_name_and_collisions_are_refused():
    a = FeatureSourceSpec("views_a", _features([("a", at(1), 1)]), ["user_id"], "ts", ["value"])
    b = FeatureSourceSpec("views_b", _features([("a", at(1), 2)]), ["user_id"], "ts", ["value"])
    out = point_in_time_join(_entities([("a", at(2))]), [a, b], full_feature_names=True)
    assert out.select("views_a__value", "views_b__value").row(0) == (1, 2)
    with pytest.raises(PitJoinError, match="ambiguous"):
        point_in_time_join(_entities([("a", at(2))]), [a, b])


def test_entity_join_keys_map_feature_keys_onto_differently_named_entity_columns():
    feats = pl.DataFrame({"user_id": [7], "region": ["eu"], "ts": [at(1)], "value": [1]}).lazy()
    spec = FeatureSourceSpec(
        "fv", feats, ["user_id", "region"], "ts", ["value"], entity_join_keys=["author_id", "zone"]
    )
    entities = pl.DataFrame({"author_id": [7, 7], "zone": ["eu", "us"], "event_timestamp": [at(2), at(2)]})
    out = point_in_time_join(entities, [spec])
    assert out.columns == ["author_id", "zone", "event_timestamp", "value"]
    assert out["value"].to_list() == [1, None]


def test_missing_columns_are_reported():
    spec = FeatureSourceSpec("fv", _features([("a", at(1), 1)]), ["user_id"], "ts", ["nope"])
    with pytest.raises(PitJoinError, match="nope"):
        point_in_time_join(_entities([("a", at(2))]), [spec])


def test_sources_are_scanned_with_projection_and_key_and_time_predicates(tmp_path):
    """The source is read lazily: only the needed columns, filtered on keys and time."""
    table = pl.DataFrame(
        {
            "user_id": ["a", "b", "c"],
            "ts": [at(1), at(2), at(3)],
            "value": [1, 2, 3],
            "wide_unused": ["x", "y", "z"],
        }
    )
    table.write_delta(tmp_path / "t")
    spec = FeatureSourceSpec(
        "fv", pl.scan_delta(str(tmp_path / "t")), ["user_id"], "ts", ["value"], ttl=timedelta(hours=1)
    )
    plan = point_in_time_join_lazy(_entities([("a", at(2))]), [spec]).explain()
    scan = plan[plan.index("Parquet SCAN") :]
    assert "PROJECT 3/4 COLUMNS" in scan
    selection = scan[scan.index("SELECTION") :].splitlines()[0]
    assert 'col("user_id").is_in' in selection
    assert 'col("ts") <=' in selection and 'col("ts") >=' in selection


# --------------------------------------------------------------------------- as-known-at


def _known_at_spec(rows: list[tuple], **kwargs) -> FeatureSourceSpec:
    return FeatureSourceSpec("fv", _features(rows, created=True), ["user_id"], "ts", ["value"],
                             created_timestamp_field="created", as_known_at=True, **kwargs)


def _both_joins(entities: pl.DataFrame, spec: FeatureSourceSpec) -> list[list]:
    eager = point_in_time_join(entities, [spec])["value"].to_list()
    lazy = point_in_time_join_lazy(entities, [spec]).collect()["value"].to_list()
    assert eager == lazy
    return eager


def test_as_known_at_a_late_correction_is_invisible_until_it_was_written():
    # day 1's row was rewritten at hour 30 by a late event; before that only day 0's row was known
    spec = _known_at_spec([("a", at(0), at(0), "day 0"), ("a", at(24), at(30), "day 1, corrected")])
    entities = _entities([("a", at(25)), ("a", at(30)), ("a", at(40))])
    assert _both_joins(entities, spec) == ["day 0", "day 1, corrected", "day 1, corrected"]
    plain = point_in_time_join(entities, [replace(spec, as_known_at=False)])["value"].to_list()
    assert plain == ["day 1, corrected"] * 3  # what a plain point-in-time join leaks


def test_as_known_at_ties_on_event_time_go_to_the_newest_row_known_then():
    spec = _known_at_spec([("a", at(1), at(1), "original"), ("a", at(1), at(9), "late correction")])
    assert _both_joins(_entities([("a", at(2)), ("a", at(9))]), spec) == ["original", "late correction"]


def test_as_known_at_a_row_without_created_timestamp_is_never_known():
    spec = _known_at_spec([("a", at(0), at(0), "dated"), ("a", at(1), None, "undated")])
    assert _both_joins(_entities([("a", at(5))]), spec) == ["dated"]
    assert point_in_time_join(_entities([("a", at(5))]), [replace(spec, as_known_at=False)])["value"].to_list() == ["undated"]


def test_as_known_at_keeps_the_ttl_and_never_falls_back_past_it():
    spec = _known_at_spec([("a", at(0), at(0), "old"), ("a", at(4), at(5), "late")], ttl=timedelta(hours=2))
    # at 04:30 the hour-4 row is not known yet and the hour-0 row is past the TTL
    assert _both_joins(_entities([("a", at(4.5)), ("a", at(5)), ("a", at(1))]), spec) == [None, "late", "old"]


def test_as_known_at_compares_created_timestamps_finer_than_the_entity_timestamps_exactly():
    created = pl.Series([at(0), at(2)], dtype=pl.Datetime("ns", "UTC")) + pl.Series([0, 1], dtype=pl.Duration("ns"))
    feats = pl.DataFrame({"user_id": ["a", "a"], "ts": [at(0), at(1)], "created": created, "value": ["first", "second"]})
    spec = FeatureSourceSpec("fv", feats.lazy(), ["user_id"], "ts", ["value"], created_timestamp_field="created",
                             as_known_at=True)
    entities = _entities([("a", at(2)), ("a", at(2) + timedelta(microseconds=1))])  # microseconds
    assert _both_joins(entities, spec) == ["first", "second"]  # 1 ns after hour 2 is not known at hour 2


def test_as_known_at_leaves_sources_without_created_timestamps_alone():
    spec = FeatureSourceSpec("fv", _features([("a", at(1), 1)]), ["user_id"], "ts", ["value"], as_known_at=True)
    assert _both_joins(_entities([("a", at(2))]), spec) == [1]
