"""Specification of the synthetic clickstream generator (``hybrid_pipeline.sources.generator``)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from hybrid_pipeline.sources.generator import (
    DIRT_KINDS,
    EVENT_TYPES,
    DayBatch,
    EventGenerator,
    GeneratorConfig,
    file_format_for,
    generate,
)
from hybrid_pipeline.sources.landing import collect_landing, landed_dates
from hybrid_pipeline.transforms.silver import clean_events

START = date(2024, 1, 1)
TS_FORMAT = "%Y-%m-%dT%H:%M:%S%.3fZ"
FUNNEL_RANK = {t: i for i, t in enumerate(EVENT_TYPES)}


def config(**kw: object) -> GeneratorConfig:
    base = {"days": 2, "events_per_day": 2000, "seed": 7, "dirty_rate": 0.05, "start_date": START}
    base.update(kw)
    return GeneratorConfig(**base)  # type: ignore[arg-type]


def batches(**kw: object) -> list[DayBatch]:
    return list(EventGenerator(config(**kw)).days())


@pytest.fixture(scope="module")
def dirty_batches() -> list[DayBatch]:
    return batches(days=3, dirty_rate=0.1)


@pytest.fixture(scope="module")
def clean_week() -> list[DayBatch]:
    return batches(days=7, dirty_rate=0.0)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def parsed_timestamps(batch: DayBatch) -> pl.Series:
    return batch.events["timestamp"].str.to_datetime(TS_FORMAT, time_zone="UTC")


# -- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw", [{"days": 0}, {"events_per_day": 0}, {"dirty_rate": -0.1}, {"dirty_rate": 1.5}]
)
def test_an_invalid_configuration_is_rejected(kw: dict) -> None:
    with pytest.raises(ValueError):
        EventGenerator(config(**kw))


def test_the_user_population_scales_with_daily_volume_with_a_floor_of_200() -> None:
    assert config(events_per_day=2000).users() == 200
    assert config(events_per_day=100_000).users() == 5000
    assert config(n_users=42).users() == 42


# -- determinism ----------------------------------------------------------------------


def test_the_same_seed_writes_byte_identical_landing_files(tmp_path: Path) -> None:
    generate(config(days=7, seed=11), tmp_path / "a")
    generate(config(days=7, seed=11), tmp_path / "b")

    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert len(a) == 7
    assert a == b


def test_a_different_seed_writes_different_files(tmp_path: Path) -> None:
    generate(config(days=2, seed=11), tmp_path / "a")
    generate(config(days=2, seed=12), tmp_path / "b")

    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[name] != b[name] for name in a)


# -- volume and formats ---------------------------------------------------------------


def test_every_day_has_exactly_events_per_day_clean_events(dirty_batches: list[DayBatch]) -> None:
    assert [b.events.height for b in dirty_batches] == [2000, 2000, 2000]
    assert [b.day for b in dirty_batches] == [START, START + timedelta(days=1), START + timedelta(days=2)]
    for b in dirty_batches:
        assert b.events["event_id"].n_unique() == 2000


def test_a_small_daily_volume_is_still_met_exactly() -> None:
    (batch,) = EventGenerator(GeneratorConfig(days=1, events_per_day=10, seed=0, start_date=START)).days()

    assert batch.events.height == 10


@pytest.mark.parametrize(
    ("day_index", "fmt"),
    [(0, "jsonl"), (4, "jsonl"), (5, "csv"), (6, "parquet"), (7, "jsonl"), (12, "csv"), (13, "parquet")],
)
def test_the_landing_format_depends_on_the_day_index(day_index: int, fmt: str) -> None:
    assert file_format_for(day_index) == fmt


def test_generate_writes_one_folder_per_day_in_that_days_format(tmp_path: Path) -> None:
    totals = generate(config(days=7), tmp_path)

    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("events-*"))
    assert names == [
        "events/2024-01-01/events-0000.jsonl",
        "events/2024-01-02/events-0000.jsonl",
        "events/2024-01-03/events-0000.jsonl",
        "events/2024-01-04/events-0000.jsonl",
        "events/2024-01-05/events-0000.jsonl",
        "events/2024-01-06/events-0000.csv",
        "events/2024-01-07/events-0000.parquet",
    ]
    assert totals["days"] == 7
    assert totals["files"] == 7
    assert totals["records"] == 7 * 2000 + totals["duplicates"]


def test_every_landed_record_is_counted_in_the_totals(tmp_path: Path) -> None:
    totals = generate(config(days=7), tmp_path)
    now = datetime(2024, 2, 1, tzinfo=timezone.utc)

    landed = sum(collect_landing(tmp_path, d, {}, now).records.height for d in landed_dates(tmp_path))

    assert landed == totals["records"]


# -- dirt -----------------------------------------------------------------------------


def test_each_kind_of_dirt_appears_at_roughly_its_share(dirty_batches: list[DayBatch]) -> None:
    kinds = Counter(kind for b in dirty_batches for _, kind in b.dirty)
    duplicates = sum(len(b.extra_rows) for b in dirty_batches)
    n_dirty = sum(kinds.values()) + duplicates

    for kind, share in DIRT_KINDS.items():
        if kind.startswith("duplicate"):
            continue
        assert kinds[kind] > 0, kind
        assert abs(kinds[kind] / n_dirty - share) < 0.05, (kind, kinds[kind], n_dirty)
    assert abs(duplicates / n_dirty - 0.2) < 0.07


def test_the_dirty_count_per_day_is_the_dirty_rate_of_the_volume(dirty_batches: list[DayBatch]) -> None:
    # Day 0 has no previous day to duplicate, so only later days carry the full share.
    for b in dirty_batches[1:]:
        assert len(b.dirty) + len(b.extra_rows) == round(2000 * 0.1)
    assert len(dirty_batches[0].dirty) + len(dirty_batches[0].extra_rows) <= round(2000 * 0.1)


def test_dirty_rows_are_written_as_the_dirt_they_were_assigned(tmp_path: Path) -> None:
    cfg = config(days=2, dirty_rate=0.1)
    gen = EventGenerator(cfg)
    gen_batches = list(gen.days())
    generate(cfg, tmp_path)
    lines = (tmp_path / "events" / "2024-01-02" / "events-0000.jsonl").read_text().splitlines()
    batch = gen_batches[1]
    kinds = dict(batch.dirty)

    assert len(lines) == 2000 + len(batch.extra_rows)
    for row, kind in kinds.items():
        line = lines[row]
        if kind == "malformed_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(line)
            continue
        rec = json.loads(line)
        expected = {
            "missing_timestamp": lambda r: "timestamp" not in r,
            "bad_timestamp": lambda r: r["timestamp"] == "31/02/2024 25:61",
            "wrong_type": lambda r: r["session_duration"] == "a while",
            "negative_revenue": lambda r: r["event_type"] == "purchase" and r["revenue"] < 0,
            "unknown_event_type": lambda r: r["event_type"] == "hover",
            "missing_user_id": lambda r: "user_id" not in r,
            "extra_field": lambda r: r["campaign"] == "autumn-sale",
        }[kind]
        assert expected(rec), (kind, line)
    untouched = [i for i in range(2000) if i not in kinds]
    assert all(json.loads(lines[i])["event_id"] == batch.events["event_id"][i] for i in untouched[:200])


def test_a_dirty_rate_of_zero_lands_only_valid_unique_records(tmp_path: Path) -> None:
    generate(config(days=7, dirty_rate=0.0), tmp_path)
    existing = pl.LazyFrame(
        schema={"event_id": pl.String, "landing_date": pl.String, "source_file": pl.String, "line_number": pl.Int64}
    )
    now = datetime(2024, 2, 1, tzinfo=timezone.utc)

    kept = 0
    for day in landed_dates(tmp_path):
        silver = clean_events(collect_landing(tmp_path, day, {}, now).records, existing, "salt")
        assert silver.quarantine.height == 0, (day, silver.reasons())
        assert silver.duplicates.height == 0
        assert silver.drift == {}
        kept += silver.events.height
        existing = pl.concat([existing, silver.events.lazy().select(existing.collect_schema().names())])

    assert kept == 7 * 2000


# -- realism --------------------------------------------------------------------------


def test_revenue_is_positive_on_purchases_and_null_on_every_other_event(clean_week: list[DayBatch]) -> None:
    events = pl.concat([b.events for b in clean_week])
    purchases = events.filter(pl.col("event_type") == "purchase")
    others = events.filter(pl.col("event_type") != "purchase")

    assert purchases.height > 0
    assert purchases["revenue"].null_count() == 0
    assert purchases["revenue"].min() > 0
    assert others["revenue"].null_count() == others.height


def test_every_event_type_occurs_and_views_dominate(clean_week: list[DayBatch]) -> None:
    counts = Counter(pl.concat([b.events for b in clean_week])["event_type"].to_list())

    assert set(counts) == set(EVENT_TYPES)
    assert counts["view"] > counts["click"] > counts["add_to_cart"] > counts["purchase"] > 0


def test_within_a_session_the_funnel_runs_view_click_cart_purchase_in_time(clean_week: list[DayBatch]) -> None:
    for b in clean_week:
        ts = parsed_timestamps(b)
        on_day = b.events.with_columns(ts.alias("ts")).filter(pl.col("ts").dt.date() == b.day)  # late events moved
        ordered = on_day.with_columns(pl.col("event_type").replace_strict(FUNNEL_RANK).alias("rank")).sort(
            "session_id", "ts", "rank"
        )
        out_of_order = ordered.filter(pl.col("rank").diff().over("session_id") < 0)
        assert out_of_order.height == 0, out_of_order.head()
        # Sessions do reach beyond views.
        assert ordered.group_by("session_id").agg(pl.col("rank").max())["rank"].max() == 3


def test_a_session_belongs_to_one_user(clean_week: list[DayBatch]) -> None:
    events = pl.concat([b.events for b in clean_week])

    assert events.group_by("session_id").agg(pl.col("user_id").n_unique())["user_id"].max() == 1


def test_late_events_carry_a_timestamp_one_to_three_days_before_the_landing_day(clean_week: list[DayBatch]) -> None:
    first = parsed_timestamps(clean_week[0]).dt.date()
    assert (first != clean_week[0].day).sum() == 0

    for b in clean_week[1:]:
        dates = parsed_timestamps(b).dt.date()
        late = dates.filter(dates != b.day)
        assert late.len() > 0, b.day
        lags = [(b.day - d).days for d in late]
        assert set(lags) <= {1, 2, 3}
        assert late.len() < 0.05 * b.events.height


def test_duplicates_of_a_previous_day_reuse_that_days_event_ids(dirty_batches: list[DayBatch]) -> None:
    for prev, cur in zip(dirty_batches, dirty_batches[1:], strict=False):
        today = set(cur.events["event_id"].to_list())
        yesterday = set(prev.events["event_id"].to_list())
        extra_ids = [r["event_id"] for r in cur.extra_rows]
        foreign = [i for i in extra_ids if i not in today]

        assert foreign, cur.day
        assert set(foreign) <= yesterday
    day0_ids = set(dirty_batches[0].events["event_id"].to_list())
    assert all(r["event_id"] in day0_ids for r in dirty_batches[0].extra_rows)


def test_users_with_more_past_carts_purchase_more_often_later() -> None:
    days = batches(days=6, events_per_day=5000, dirty_rate=0.0, seed=3)
    events = pl.concat([b.events.with_columns(pl.lit(i).alias("day")) for i, b in enumerate(days)])
    carts = events.filter(pl.col("day") < 3).group_by("user_id").agg(
        (pl.col("event_type") == "add_to_cart").sum().alias("carts")
    )
    buyers = events.filter((pl.col("day") >= 3) & (pl.col("event_type") == "purchase")).select("user_id").unique()
    users = carts.with_columns(pl.col("user_id").is_in(buyers["user_id"].implode()).alias("buys"))

    rate_none = users.filter(pl.col("carts") == 0)["buys"].mean()
    rate_some = users.filter(pl.col("carts").is_between(1, 2))["buys"].mean()
    rate_many = users.filter(pl.col("carts") >= 3)["buys"].mean()

    assert rate_none < rate_some < rate_many
    assert rate_many - rate_none > 0.3
