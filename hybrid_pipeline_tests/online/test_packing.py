"""The packed record format: values survive a round trip, the header orders records."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid_pipeline.online.packing import (
    FORMAT_VERSION,
    HEADER_SIZE,
    from_epoch_us,
    pack_record,
    to_epoch_us,
    unpack_features,
    unpack_record,
)

UTC = timezone.utc
T0 = datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)


def test_every_supported_value_kind_round_trips():
    features = {
        "null": None,
        "float": 0.1,
        "neg_zero": -0.0,
        "tiny": 5e-324,
        "int": 42,
        "int_min": -(2**63),
        "int_max": 2**63 - 1,
        "u64": 2**64 - 1,
        "bool": True,
        "string": "héllo wörld ✓",
        "empty_string": "",
        "strings": ["a", "", "ünï"],
        "empty_list": [],
        "list_with_null": ["a", None],
        "floats": [1.5, -2.25],
        "bytes": b"\x00\xffraw",
        "nested": {"k": [1, {"x": None}]},
        "ts": datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    }
    record = unpack_record(pack_record(features, T0))
    assert record.features == features
    assert type(record.features["int"]) is int and type(record.features["float"]) is float
    assert math.copysign(1.0, record.features["neg_zero"]) == -1.0
    assert record.features["ts"].tzinfo is not None


def test_nan_and_infinities_are_kept_not_nulled():
    record = unpack_record(pack_record({"nan": math.nan, "inf": math.inf, "ninf": -math.inf}, T0))
    assert math.isnan(record.features["nan"])
    assert record.features["inf"] == math.inf and record.features["ninf"] == -math.inf


def test_naive_datetimes_are_utc_dates_isoformat_tuples_and_sets_lists():
    naive = datetime(2024, 5, 6, 7, 8, 9)
    record = unpack_record(pack_record({"ts": naive, "day": date(2024, 5, 6), "pair": ("a", "b"), "one": {"x"}}, naive))
    assert record.features["ts"] == naive.replace(tzinfo=UTC)
    assert record.features["day"] == "2024-05-06"
    assert record.features["pair"] == ["a", "b"] and record.features["one"] == ["x"]
    assert record.event_ts == naive.replace(tzinfo=UTC)


def test_timestamps_survive_with_microseconds_and_created_ts_may_be_absent():
    created = T0 + timedelta(seconds=3)
    record = unpack_record(pack_record({}, T0, created))
    assert (record.event_ts, record.created_ts) == (T0, created)
    assert record.event_ts_us == to_epoch_us(T0)
    assert unpack_record(pack_record({}, T0)).created_ts is None


def test_timestamps_before_the_epoch_round_trip():
    early = datetime(1950, 6, 1, 0, 0, 0, 1, tzinfo=UTC)
    assert unpack_record(pack_record({}, early, early)).event_ts == early
    assert from_epoch_us(to_epoch_us(early)) == early


def test_layout_is_versioned_with_a_fixed_header():
    blob = pack_record({"a": 1}, T0)
    assert blob[0] == FORMAT_VERSION
    assert unpack_features(blob) == {"a": 1}
    assert len(blob) < HEADER_SIZE + 8  # compact: {"a": 1} is 4 bytes of msgpack


def test_other_versions_and_garbage_are_refused():
    blob = bytearray(pack_record({"a": 1}, T0))
    blob[0] = FORMAT_VERSION + 1
    with pytest.raises(ValueError, match="version"):
        unpack_record(bytes(blob))
    with pytest.raises(ValueError, match="version"):
        unpack_features(bytes(blob))
    with pytest.raises(ValueError):
        unpack_record(b"\x01abc")


def test_unpackable_values_and_missing_event_ts_are_errors():
    with pytest.raises(TypeError, match="object"):
        pack_record({"x": object()}, T0)
    with pytest.raises(ValueError, match="event timestamp"):
        pack_record({"x": 1}, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pack_record({"x": 1}, True)  # type: ignore[arg-type]


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=16), json_like, max_size=12), st.integers(-(2**62), 2**62))
def test_random_feature_dicts_round_trip(features, event_us):
    record = unpack_record(pack_record(features, event_us))
    assert record.features == features
    assert record.event_ts_us == event_us


stamps = st.integers(-(2**62), 2**62)


@settings(max_examples=300, deadline=None)
@given(stamps, st.none() | stamps, stamps, st.none() | stamps)
def test_header_bytes_order_records_like_event_then_created_ts(e1, c1, e2, c2):
    """The Redis Lua compare-and-set compares header bytes; they must order like the tuples."""
    a, b = pack_record({}, e1, c1), pack_record({}, e2, c2)
    low = -(2**63)
    expected = (e1, low if c1 is None else c1) >= (e2, low if c2 is None else c2)
    assert (a[1:HEADER_SIZE] >= b[1:HEADER_SIZE]) is expected
