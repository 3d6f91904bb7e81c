"""The eager point-in-time join's own paths: integer key codes, hash-joined key codes, the
dense-rank fallback for timestamp spans too wide for the sort key, ties on the created
timestamp, and the chunk-aware gather. Each is held against a brute-force answer and
against the lazy ``join_asof`` plan."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid_pipeline.features.pit import (
    FeatureSourceSpec,
    PitJoinError,
    fetch_rows,
    gather_rows,
    match_rows,
    point_in_time_join,
    point_in_time_join_lazy,
)

from .oracle import OracleSource, oracle_join

UTC = timezone.utc
BASE = datetime(2024, 1, 1, tzinfo=UTC)
I64 = np.iinfo(np.int64)


# --------------------------------------------------------------------------- match_rows


def brute_force_matches(left_code, left_ts, right_code, right_ts, right_created, ttl) -> list[set[int]]:
    """Acceptable right rows per left row ({-1}: none)."""
    out = []
    for code, t in zip(left_code, left_ts):
        cands = [
            j
            for j in range(len(right_code))
            if code >= 0 and right_code[j] == code and right_ts[j] <= t and (ttl is None or right_ts[j] >= t - ttl)
        ]
        if not cands:
            out.append({-1})
            continue
        best_ts = max(right_ts[j] for j in cands)
        best = [j for j in cands if right_ts[j] == best_ts]
        if right_created is not None:
            top = max(right_created[j] for j in best)
            best = [j for j in best if right_created[j] == top]
        out.append(set(best))
    return out


@st.composite
def match_case(draw):
    n_codes = draw(st.integers(1, 5))
    # narrow spans (exact offsets) and spans of the whole int64 range (dense-rank fallback)
    wide = draw(st.booleans())
    ts = st.integers(I64.min // 2, I64.max // 2) if wide else st.integers(-5, 20)
    n_right = draw(st.integers(1, 25))
    right_code = [draw(st.integers(0, n_codes - 1)) for _ in range(n_right)]
    right_ts = [draw(ts) for _ in range(n_right)]
    if draw(st.booleans()) and n_right > 1:  # force ties on (code, ts)
        right_code[1], right_ts[1] = right_code[0], right_ts[0]
    right_created = (
        [draw(st.sampled_from([I64.min, 0, 1, 2, 3])) for _ in range(n_right)] if draw(st.booleans()) else None
    )
    n_left = draw(st.integers(0, 15))
    left_code = [draw(st.integers(-1, n_codes)) for _ in range(n_left)]
    left_ts = [draw(st.one_of(ts, st.sampled_from(right_ts))) for _ in range(n_left)]
    ttl = draw(st.one_of(st.none(), st.integers(0, 6), st.just(I64.max // 4)))
    return left_code, left_ts, right_code, right_ts, right_created, ttl


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(match_case())
def test_match_rows_picks_an_acceptable_row(case):
    left_code, left_ts, right_code, right_ts, right_created, ttl = case
    got = match_rows(
        np.array(left_code, dtype=np.int64),
        np.array(left_ts, dtype=np.int64),
        np.array(right_code, dtype=np.int64),
        np.array(right_ts, dtype=np.int64),
        None if right_created is None else np.array(right_created, dtype=np.int64),
        ttl,
    )
    expected = brute_force_matches(left_code, left_ts, right_code, right_ts, right_created, ttl)
    assert len(got) == len(left_code)
    for i, (g, allowed) in enumerate(zip(got.tolist(), expected)):
        assert g in allowed, f"left row {i}: got {g}, allowed {allowed}"


def test_sparse_codes_and_wide_spans_fall_back_to_dense_codes_and_ranks():
    # codes up to 2^40 next to a span of 2^41 units do not fit 63 bits: codes are recoded
    right_code = np.array([0, 1 << 40, 1 << 40], dtype=np.int64)
    right_ts = np.array([0, -(1 << 40), 1 << 40], dtype=np.int64)
    left_code = np.array([1 << 40, 1 << 40, 0, 5, -1], dtype=np.int64)
    left_ts = np.array([0, 1 << 41, -1, 0, 0], dtype=np.int64)
    assert match_rows(left_code, left_ts, right_code, right_ts).tolist() == [1, 2, -1, -1, -1]
    # 4 dense codes next to a span of 2^62: timestamps are ranked
    right_code = np.array([0, 1, 2, 3, 3], dtype=np.int64)
    right_ts = np.array([-(1 << 61), 0, 1 << 61, 5, 1 << 61], dtype=np.int64)
    left_code = np.array([3, 3, 3, 0, 2], dtype=np.int64)
    left_ts = np.array([4, 5, 1 << 62, -(1 << 61) - 1, 1 << 61], dtype=np.int64)
    assert match_rows(left_code, left_ts, right_code, right_ts, ttl=1 << 62).tolist() == [-1, 3, 4, -1, 2]


# --------------------------------------------------------------------------- gather_rows


def test_gather_rows_reads_across_chunks_in_any_order_with_misses():
    parts = [pl.DataFrame({"a": np.arange(i * 10, i * 10 + 10), "s": [f"r{j}" for j in range(i * 10, i * 10 + 10)]}) for i in range(4)]
    frame = pl.concat(parts, rechunk=False)
    assert frame["a"].n_chunks() == 4
    rows = np.array([39, -1, 0, 10, 9, 39, 25, -1, 11], dtype=np.int64)
    got = gather_rows(frame, rows)
    assert got["a"].to_list() == [None if r < 0 else r for r in rows.tolist()]
    assert got["s"].to_list() == [None if r < 0 else f"r{r}" for r in rows.tolist()]
    assert gather_rows(frame, np.array([-1, -1], dtype=np.int64)).to_dict(as_series=False) == {"a": [None, None], "s": [None, None]}
    assert gather_rows(frame, np.array([], dtype=np.int64)).height == 0
    assert gather_rows(frame, np.array([3, 2], dtype=np.int64))["a"].to_list() == [3, 2]


# --------------------------------------------------------------------------- whole join, integer keys


@st.composite
def int_key_case(draw):
    dtype = draw(st.sampled_from([pl.Int64, pl.Int32, pl.UInt64, pl.UInt8]))
    if dtype == pl.UInt64:
        keys = [0, 2**63 + 5, 2**64 - 1]
    elif dtype == pl.UInt8:
        keys = [0, 7, 255]
    elif dtype == pl.Int32:
        keys = [-(2**31), 0, 2**31 - 1]
    else:
        keys = [-(2**62), 3, 2**62 - 1]  # offset codes up to 2^63 - 1: recoded densely
    unit = draw(st.sampled_from(["us", "ns"]))
    rows = [
        {
            "user_id": draw(st.sampled_from([*keys, None])),
            "ts": BASE + timedelta(hours=draw(st.integers(0, 12))),
            "created": BASE + timedelta(hours=draw(st.integers(0, 3))) if draw(st.booleans()) else None,
            "v": i,
        }
        for i in range(draw(st.integers(0, 20)))
    ]
    entity_keys = [*keys, None] + ([1, 254] if dtype == pl.UInt8 else [1])  # some unknown to the source
    entities = [
        {"user_id": draw(st.sampled_from(entity_keys)), "event_timestamp": BASE + timedelta(hours=draw(st.integers(-1, 14)))}
        for _ in range(draw(st.integers(0, 12)))
    ]
    ttl = draw(st.one_of(st.none(), st.integers(0, 5).map(lambda h: timedelta(hours=h))))
    with_created = draw(st.booleans())
    rescannable = draw(st.booleans())
    return dtype, unit, rows, entities, ttl, with_created, rescannable


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(int_key_case())
def test_integer_keys_of_every_width_match_the_oracle_and_the_lazy_plan(case):
    dtype, unit, rows, entities, ttl, with_created, rescannable = case
    frame = pl.DataFrame(
        {
            "user_id": pl.Series([r["user_id"] for r in rows], dtype=dtype),
            "ts": pl.Series([r["ts"] for r in rows], dtype=pl.Datetime("us", "UTC")).dt.cast_time_unit(unit),
            "created": pl.Series([r["created"] for r in rows], dtype=pl.Datetime("us", "UTC")),
            "v": pl.Series([r["v"] for r in rows], dtype=pl.Int64),
        }
    )
    created = "created" if with_created else None
    spec = FeatureSourceSpec(
        "fv", frame.lazy(), ["user_id"], "ts", ["v"], created_timestamp_field=created, ttl=ttl, rescannable=rescannable
    )
    entity_df = pl.DataFrame(
        {
            "user_id": pl.Series([r["user_id"] for r in entities], dtype=dtype),
            "event_timestamp": pl.Series([r["event_timestamp"] for r in entities], dtype=pl.Datetime("us", "UTC"))
            .dt.cast_time_unit(unit),
        }
    )
    expected = oracle_join(entities, [OracleSource(rows, ["user_id"], "ts", ["v"], created, ttl)])
    # the eager join and the lazy plan both give acceptable answers (ties left open by the
    # semantics may be broken differently)
    for out in (point_in_time_join(entity_df, [spec]), point_in_time_join_lazy(entity_df, [spec]).collect()):
        assert out["user_id"].to_list() == [r["user_id"] for r in entities]
        for i, value in enumerate(out["v"].to_list()):
            assert (value,) in expected[i][0], f"row {i}: got {value}, allowed {expected[i][0]}"


def test_several_keys_and_string_keys_use_hash_joined_codes():
    feats = pl.DataFrame(
        {
            "user_id": ["a", "a", "b", "a", None],
            "region": ["eu", "us", "eu", "eu", "eu"],
            "ts": [BASE + timedelta(hours=h) for h in (1, 1, 2, 3, 0)],
            "value": [1, 2, 3, 4, 5],
        }
    )
    spec = FeatureSourceSpec("fv", feats.lazy(), ["user_id", "region"], "ts", ["value"])
    entities = pl.DataFrame(
        {
            "user_id": ["a", "a", "a", "b", "b", None, "c"],
            "region": ["eu", "eu", "us", "eu", "us", "eu", "eu"],
            "event_timestamp": [BASE + timedelta(hours=h) for h in (2, 3, 9, 2, 9, 9, 9)],
        }
    )
    out = point_in_time_join(entities, [spec])
    assert out["value"].to_list() == [1, 4, 2, 3, None, None, None]
    assert out.equals(point_in_time_join_lazy(entities, [spec]).collect())


def test_sources_read_in_many_chunks_and_both_engines_agree(tmp_path):
    rng = np.random.default_rng(3)
    n = 20_000
    uri = str(tmp_path / "t")
    for part in range(4):  # four files -> a multi-chunk frame after the scan
        pl.DataFrame(
            {
                "user_id": rng.integers(0, 500, n // 4),
                "ts": pl.Series(rng.integers(0, 10**6, n // 4) * 10**6).cast(pl.Datetime("us", "UTC")),
                "created": pl.Series(rng.integers(0, 3, n // 4)).cast(pl.Datetime("us", "UTC")),
                "f": rng.standard_normal(n // 4),
            }
        ).write_delta(uri, mode="append")
    entities = pl.DataFrame(
        {
            "user_id": rng.integers(0, 520, 3_000),
            "event_timestamp": pl.Series(rng.integers(0, 11 * 10**5, 3_000) * 10**6).cast(pl.Datetime("us", "UTC")),
        }
    )
    spec = FeatureSourceSpec(
        "fv", pl.scan_delta(uri), ["user_id"], "ts", ["f"], created_timestamp_field="created", ttl=timedelta(days=2)
    )
    reference = point_in_time_join_lazy(entities, [spec]).collect()
    assert reference["f"].null_count() not in (0, reference.height)
    for engine in ("in-memory", "streaming"):
        assert point_in_time_join(entities, [spec], engine=engine).equals(reference)
        # two passes over a fixed version: keys first, then the winning rows only
        pinned = FeatureSourceSpec(
            "fv", pl.scan_delta(uri, version=3), ["user_id"], "ts", ["f"], created_timestamp_field="created",
            ttl=timedelta(days=2), rescannable=True,
        )
        assert point_in_time_join(entities, [pinned], engine=engine).equals(reference)


def test_fetch_rows_reads_the_requested_rows_and_refuses_a_source_that_changed():
    numbered = pl.LazyFrame({"v": [10, 11, 12, 13, 14]}).with_row_index("__pit_source_row")
    got = fetch_rows(numbered, ["v"], np.array([4, -1, 0, 4, 2], dtype=np.int64))
    assert got["v"].to_list() == [14, None, 10, 14, 12]
    assert fetch_rows(numbered, ["v"], np.array([-1], dtype=np.int64))["v"].to_list() == [None]
    with pytest.raises(PitJoinError, match="second read"):
        fetch_rows(numbered, ["v"], np.array([1, 7], dtype=np.int64))  # row 7 is gone


def test_a_source_already_in_key_and_time_order_is_not_sorted_again_and_matches_the_same():
    rng = np.random.default_rng(7)
    code = np.repeat(np.arange(50, dtype=np.int64), 40)
    ts = np.sort(rng.integers(0, 10**9, (50, 40)), axis=1).reshape(-1)
    left_code = rng.integers(-1, 52, 500)
    left_ts = rng.integers(0, 10**9, 500)
    in_order = match_rows(left_code, left_ts, code, ts, ttl=10**8)
    shuffle = rng.permutation(len(code))
    shuffled = match_rows(left_code, left_ts, code[shuffle], ts[shuffle], ttl=10**8)
    assert (in_order >= 0).any() and (in_order < 0).any()
    assert np.array_equal(np.where(shuffled >= 0, shuffle[np.maximum(shuffled, 0)], -1), in_order)


def test_coarse_sort_keys_with_many_rows_per_bucket_are_put_in_exact_order():
    # a span of 2^62 leaves the packed sort key no room for the low offset bits: clusters of
    # timestamps a few units apart share a coarse key and must be ordered exactly
    rng = np.random.default_rng(11)
    centres = rng.integers(-(2**61), 2**61, 40)
    right_ts = (np.repeat(centres, 50) + rng.integers(0, 1_000, 2_000)).astype(np.int64)
    right_code = rng.integers(0, 3, 2_000).astype(np.int64)
    right_created = rng.integers(0, 3, 2_000).astype(np.int64)
    left_code = rng.integers(-1, 4, 300).astype(np.int64)
    left_ts = (centres[rng.integers(0, 40, 300)] + rng.integers(-10, 1_010, 300)).astype(np.int64)
    got = match_rows(left_code, left_ts, right_code, right_ts, right_created, ttl=500)
    expected = brute_force_matches(
        left_code.tolist(), left_ts.tolist(), right_code.tolist(), right_ts.tolist(), right_created.tolist(), 500
    )
    assert (got >= 0).sum() > 100
    assert all(g in allowed for g, allowed in zip(got.tolist(), expected))


def test_nanosecond_timestamps_of_whole_microseconds_match_like_microseconds():
    rng = np.random.default_rng(5)
    n = 5_000
    right_code = rng.integers(0, 1 << 20, n).astype(np.int64)  # 2^20 codes: ns offsets would not fit
    right_us = rng.integers(0, 30 * 86_400 * 10**6, n).astype(np.int64)
    left_code = np.concatenate([right_code[:2_000], rng.integers(0, 1 << 20, 500)]).astype(np.int64)
    left_us = np.concatenate([right_us[:2_000] + rng.integers(-5, 10**9, 2_000), rng.integers(0, 10**13, 500)]).astype(np.int64)
    ttl_us = 3_600 * 10**6
    in_us = match_rows(left_code, left_us, right_code, right_us, ttl=ttl_us)
    # entity timestamps with sub-microsecond parts: floor division keeps ts <= t exact
    left_ns = left_us * 1_000 + rng.integers(0, 1_000, len(left_us))
    in_ns = match_rows(left_code, left_ns, right_code, right_us * 1_000, ttl=ttl_us * 1_000)
    assert (in_us >= 0).sum() > 1_000
    assert np.array_equal(in_us, in_ns)
