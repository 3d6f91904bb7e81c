"""Specification of gold analytics on a small silver frame computed by hand: ``transforms.gold``
and the star-schema definitions shared by both engines (``engines.shared``, run here on polars)."""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timezone

import polars as pl
import pytest

from hybrid_pipeline.engines.shared import run_on
from hybrid_pipeline.transforms.gold import DAILY_METRICS_SCHEMA, date_key, dim_date, user_keys

from .factories import silver


def daily_metrics(rows: pl.LazyFrame) -> pl.DataFrame:
    return run_on("polars", "daily_metrics", rows)


def fact_events(rows: pl.DataFrame) -> pl.DataFrame:
    return run_on("polars", "fact_events", rows)


def summaries(rows: pl.DataFrame) -> pl.DataFrame:
    return run_on("polars", "user_landing_summary", rows)


def dim_user(rows: pl.DataFrame) -> pl.DataFrame:
    return run_on("polars", "dim_user", summaries(rows))

UTC = timezone.utc


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2024, 1, day, hour, minute, tzinfo=UTC)


# Saturday 6th, Sunday 7th, Monday 8th of January 2024.
# u1 buys twice on the 6th as "new" and is "loyal" by the 7th; u3 moves from casual to loyal.
SILVER = silver(
    [
        {"event_id": "e1", "user_id": "u1", "event_type": "view", "timestamp": at(6, 10), "user_segment": "new", "email_hash": "h1", "landing_date": "2024-01-06"},
        {"event_id": "e2", "user_id": "u1", "event_type": "purchase", "timestamp": at(6, 10, 5), "revenue": 10.10, "user_segment": "new", "email_hash": "h1", "landing_date": "2024-01-06"},
        {"event_id": "e3", "user_id": "u1", "event_type": "purchase", "timestamp": at(6, 11), "revenue": 0.20, "user_segment": "new", "email_hash": "h1", "landing_date": "2024-01-06"},
        {"event_id": "e4", "user_id": "u2", "event_type": "view", "timestamp": at(6, 11), "user_segment": "new", "landing_date": "2024-01-06"},
        {"event_id": "e5", "user_id": "u3", "event_type": "click", "timestamp": at(6, 12), "user_segment": "casual", "email_hash": "h3", "landing_date": "2024-01-06"},
        {"event_id": "e6", "user_id": "u3", "event_type": "purchase", "timestamp": at(7, 9), "revenue": 5.5, "user_segment": "loyal", "email_hash": "h3", "landing_date": "2024-01-07"},
        {"event_id": "e7", "user_id": "u1", "event_type": "view", "timestamp": at(7, 12), "user_segment": "loyal", "email_hash": None, "landing_date": "2024-01-08"},
        {"event_id": "e8", "user_id": "u4", "event_type": "view", "timestamp": at(8, 23, 59), "user_segment": "casual", "landing_date": "2024-01-08"},
    ]
)  # fmt: skip


def test_daily_metrics_per_date_and_segment_match_a_hand_count() -> None:
    metrics = daily_metrics(SILVER.lazy())

    assert metrics.schema == pl.Schema(DAILY_METRICS_SCHEMA)
    assert metrics.rows() == [
        # date, segment, events, unique users, purchases, purchasing users, revenue, conversion
        (date(2024, 1, 6), "casual", 1, 1, 0, 0, 0.0, 0.0),
        (date(2024, 1, 6), "new", 4, 2, 2, 1, 10.3, 0.5),
        (date(2024, 1, 7), "loyal", 2, 2, 1, 1, 5.5, 0.5),
        (date(2024, 1, 8), "casual", 1, 1, 0, 0, 0.0, 0.0),
    ]


def test_daily_revenue_is_summed_exactly_to_the_cent() -> None:
    rows = silver(
        [
            {"event_id": f"e{i}", "user_id": f"u{i}", "event_type": "purchase", "timestamp": at(6, 10), "revenue": 0.1, "user_segment": "new"}
            for i in range(3)
        ]
    )  # fmt: skip

    (total,) = daily_metrics(rows.lazy())["total_revenue"].to_list()

    assert 0.1 + 0.1 + 0.1 != 0.3  # float addition alone would not give 0.3
    assert total == 0.3


def test_daily_metrics_of_no_silver_rows_is_empty() -> None:
    assert daily_metrics(SILVER.head(0).lazy()).height == 0


def test_a_date_key_is_the_date_as_yyyymmdd() -> None:
    frame = pl.DataFrame({"d": [date(2024, 1, 6), date(1999, 12, 31)]})

    assert frame.select(date_key("d"))["date_key"].to_list() == [20240106, 19991231]


def test_fact_events_has_one_row_per_event_keyed_to_date_and_user() -> None:
    facts = fact_events(SILVER)

    assert facts["event_id"].to_list() == [f"e{i}" for i in range(1, 9)]
    assert facts["date_key"].to_list() == [20240106] * 5 + [20240107] * 2 + [20240108]
    keys = dict(zip(facts["event_id"], facts["user_key"], strict=True))
    assert keys["e1"] == keys["e2"] == keys["e3"] == keys["e7"]  # all u1
    assert len({keys["e1"], keys["e4"], keys["e5"], keys["e8"]}) == 4  # u1..u4 distinct
    assert keys["e5"] == keys["e6"]


def test_fact_revenue_is_zero_rather_than_null_outside_purchases() -> None:
    facts = fact_events(SILVER)

    assert facts["revenue"].to_list() == [0.0, 10.10, 0.20, 0.0, 0.0, 5.5, 0.0, 0.0]


def test_fact_events_keep_the_landing_date_that_owns_them() -> None:
    assert fact_events(SILVER)["landing_date"].to_list() == ["2024-01-06"] * 5 + ["2024-01-07", "2024-01-08", "2024-01-08"]


def test_user_keys_are_stable_across_calls_and_frames() -> None:
    alone = user_keys(pl.Series(["u3"]))[0]
    together = user_keys(pl.Series(["u1", "u3", "u3", None]))

    assert together.to_list()[1] == together.to_list()[2] == alone
    assert together.to_list()[3] is None
    assert fact_events(SILVER)["user_key"].to_list() == fact_events(SILVER.reverse()).sort("event_id")["user_key"].to_list()


def test_a_user_key_is_the_non_negative_63_bit_blake2b_of_the_user_id() -> None:
    expected = int.from_bytes(hashlib.blake2b(b"u1", digest_size=8).digest(), "big") >> 1

    (key,) = user_keys(pl.Series(["u1"])).to_list()

    assert key == expected
    assert 0 <= key < 2**63


def test_dim_user_takes_the_latest_segment_and_the_first_and_last_timestamps() -> None:
    users = dim_user(SILVER)

    assert users.columns == ["user_key", "user_id", "user_segment", "email_hash", "first_seen", "last_seen", "lifetime_events"]
    assert users.drop("user_key").rows() == [
        ("u1", "loyal", "h1", at(6, 10), at(7, 12), 4),
        ("u2", "new", None, at(6, 11), at(6, 11), 1),
        ("u3", "loyal", "h3", at(6, 12), at(7, 9), 2),
        ("u4", "casual", None, at(8, 23, 59), at(8, 23, 59), 1),
    ]
    assert users["user_key"].to_list() == user_keys(users["user_id"]).to_list()


def test_dim_user_does_not_depend_on_the_order_of_silver_rows() -> None:
    assert dim_user(SILVER.reverse()).equals(dim_user(SILVER))


def test_a_landing_day_summary_keeps_what_makes_its_values_newest() -> None:
    day = summaries(SILVER.filter(pl.col("landing_date") == "2024-01-06"))

    assert day.filter(pl.col("user_id") == "u1").drop("landing_date", "user_id").rows() == [
        # events, first seen, last seen, newest event, its segment, newest e-mail, when, which event
        (3, at(6, 10), at(6, 11), "e3", "new", "h1", at(6, 11), "e3"),
    ]
    assert day["user_id"].to_list() == ["u1", "u2", "u3"]


def test_dim_user_from_landing_day_summaries_equals_dim_user_over_all_events() -> None:
    """The daily runs summarise each landing day once and compose the summaries; a later landing
    day may carry older events (late arrivals), which must not win the newest segment."""
    late = silver(
        [{"event_id": "e0", "user_id": "u3", "event_type": "view", "timestamp": at(5, 8), "user_segment": "new", "email_hash": "old", "landing_date": "2024-01-09"}]
    )  # fmt: skip
    everything = pl.concat([SILVER, late])
    per_day = pl.concat([summaries(everything.filter(pl.col("landing_date") == d)) for d in everything["landing_date"].unique()])

    composed = run_on("polars", "dim_user", per_day)

    assert composed.equals(dim_user(everything))
    assert composed.filter(pl.col("user_id") == "u3").select("user_segment", "email_hash", "first_seen", "lifetime_events").row(0) == (
        "loyal",
        "h3",
        at(5, 8),
        3,
    )


def test_the_newest_non_null_email_wins_even_when_the_newest_event_has_none() -> None:
    users = dim_user(SILVER)

    # u1's newest event (e7, landed on the 8th) has no e-mail: the hash of the 6th stays
    assert users.filter(pl.col("user_id") == "u1")["email_hash"].to_list() == ["h1"]


@pytest.mark.parametrize(
    ("day", "row"),
    [
        # date_key, year, quarter, month, day, ISO weekday, ISO week, weekend
        (date(2024, 1, 5), (20240105, 2024, 1, 1, 5, 5, 1, False)),
        (date(2024, 1, 6), (20240106, 2024, 1, 1, 6, 6, 1, True)),
        (date(2024, 1, 7), (20240107, 2024, 1, 1, 7, 7, 1, True)),
        (date(2024, 1, 8), (20240108, 2024, 1, 1, 8, 1, 2, False)),
        (date(2024, 8, 15), (20240815, 2024, 3, 8, 15, 4, 33, False)),
        (date(2024, 12, 30), (20241230, 2024, 4, 12, 30, 1, 1, False)),  # ISO week 1 of 2025
    ],
)
def test_dim_date_attributes(day: date, row: tuple) -> None:
    (got,) = dim_date([day]).rows(named=True)

    assert got["date"] == day
    assert (
        got["date_key"], got["year"], got["quarter"], got["month"], got["day"], got["day_of_week"], got["iso_week"], got["is_weekend"]
    ) == row  # fmt: skip


def test_dim_date_has_one_row_per_distinct_date_in_order() -> None:
    dims = dim_date([date(2024, 1, 7), date(2024, 1, 5), date(2024, 1, 7)])

    assert dims["date"].to_list() == [date(2024, 1, 5), date(2024, 1, 7)]
    assert dims.columns == ["date_key", "date", "year", "quarter", "month", "day", "day_of_week", "iso_week", "is_weekend"]
