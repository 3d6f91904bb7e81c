"""Which landing day owns an event is a rule of the data, never of the order days are processed in.

Of all valid records carrying an event_id, silver keeps the first in (landing day, source file,
line) order. Whatever the order in which landing days are processed (a backfill out of order, two
partitions launched together), whatever reruns happen in between, and whichever file of a day
lands late, the silver and gold tables end up identical, row for row, to processing every day
once in date order; and each landing day's rows are conserved
(bronze == silver + quarantine + duplicates).
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from hybrid_pipeline.dagster_support.keys import DAILY_METRICS, DIM_DATE, DIM_USER, FACT_EVENTS, USER_LANDING_SUMMARY
from hybrid_pipeline.defs.gold_analytics.assets import Rehomed, affected_dates, build_day
from hybrid_pipeline.engines.compute import ComputeEngine, PolarsEngine, SilverWritten
from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.sources.landing import BRONZE_SCHEMA
from hybrid_pipeline.transforms import features

from .conftest import SALT

DAYS = ["2024-05-01", "2024-05-02", "2024-05-03", "2024-05-04"]
FILES = ("a.jsonl", "b.jsonl")  # a sorts first: it owns a repeat that b also carries
SILVER = {"events": "silver/events", "quarantine": "silver/events_quarantine", "duplicates": "silver/events_duplicates"}
GOLD = ["gold/fact_events", "gold/user_landing_summary", "gold/dim_user", "gold/daily_metrics", "gold/dim_date", "gold/user_features"]
GOLD_KEYS = {DAILY_METRICS, FACT_EVENTS, USER_LANDING_SUMMARY, DIM_USER, DIM_DATE}
UTC = timezone.utc


# -- a small landing zone full of conflicts ----------------------------------------------------


def _record(event_id: str, user: str, at: datetime, rng: random.Random, **extra: object) -> str:
    kind = rng.choice(["view", "click", "add_to_cart", "purchase"])
    return json.dumps(
        {
            "event_id": event_id,
            "user_id": user,
            "session_id": f"s-{user}-{at:%d}",
            "event_type": kind,
            "timestamp": at.isoformat(),
            "product_id": f"p{rng.randrange(9)}",
            "session_duration": round(rng.uniform(0, 900), 3),
            "revenue": round(rng.uniform(1, 99), 2) if kind == "purchase" else None,
            "user_segment": rng.choice(["new", "loyal"]),
            "email": f"{user}@example.com",
            **extra,
        }
    )


def _landing() -> dict[str, dict[str, list[str]]]:
    """day -> file -> payload lines. Each conflict is a different record under the same event_id
    (another user, another time), so where it is kept shows in every table."""
    rng = random.Random(20240501)
    out: dict[str, dict[str, list[str]]] = {d: {f: [] for f in FILES} for d in DAYS}
    for n, day in enumerate(DAYS):
        noon = datetime.fromisoformat(day).replace(hour=12, tzinfo=UTC)
        for i in range(10):
            out[day][FILES[i % 2]].append(_record(f"{day}-{i}", f"u{i % 4}", noon + timedelta(minutes=7 * i), rng))
        out[day]["b.jsonl"].append(_record(f"{day}-late", "u1", noon - timedelta(days=3 + n), rng))  # late event
        out[day]["a.jsonl"].append("{not json")
        out[day]["b.jsonl"].append(_record(f"{day}-bad", "u2", noon, rng, event_type="hover"))
        # the same event in both files of the day: a's copy is kept, wherever it sits in the file
        out[day]["b.jsonl"].insert(0, _record(f"{day}-twice", "u3", noon, rng))
        out[day]["a.jsonl"].append(_record(f"{day}-twice", "u0", noon + timedelta(hours=1), rng))
    for n, day in enumerate(DAYS):
        noon = datetime.fromisoformat(day).replace(hour=12, tzinfo=UTC)
        # one event on every day: day 1 owns it, the others are its duplicates
        out[day]["b.jsonl"].append(_record("everywhere", f"u{n}", noon + timedelta(hours=2), rng))
        if n:
            # an earlier day's event again, carried by a user seen nowhere else, on a date of its own
            out[day]["a.jsonl"].append(_record(f"{DAYS[n - 1]}-3", f"loner{n}", noon - timedelta(days=9), rng))
            # an event the earlier day has in both files: the copy here points at the one kept there
            out[day]["b.jsonl"].append(_record(f"{DAYS[n - 1]}-twice", f"u{n}", noon + timedelta(hours=4), rng))
        if n < len(DAYS) - 1:
            # a later day's event landing early: this day owns it
            out[day]["b.jsonl"].append(_record(f"{DAYS[n + 1]}-4", "u2", noon + timedelta(hours=3), rng))
    return out


LANDING = _landing()


def bronze_file(day: str, name: str) -> pl.DataFrame:
    lines = LANDING[day][name]
    return pl.DataFrame(
        {
            "landing_date": [day] * len(lines),
            "source_file": [f"events/{day}/{name}"] * len(lines),
            "line_number": list(range(1, len(lines) + 1)),
            "source_format": ["jsonl"] * len(lines),
            "file_sha256": [f"{day}/{name}".ljust(64, "0")] * len(lines),
            "payload": lines,
            "ingested_at": [datetime(2024, 6, 1, tzinfo=UTC)] * len(lines),
        },
        schema_overrides={"line_number": pl.Int64},
    ).select(list(BRONZE_SCHEMA)).cast(BRONZE_SCHEMA)


def land(lh: Lakehouse, day: str, name: str) -> None:
    lh.append("bronze/events", bronze_file(day, name), partition_by=["landing_date"])


# -- running days as the daily runs do ---------------------------------------------------------


@dataclass
class Lake:
    lh: Lakehouse
    engine: ComputeEngine = field(default_factory=PolarsEngine)
    gold: bool = False

    def run(self, day: str) -> SilverWritten:
        """The day's silver step, then (with ``gold``) its gold steps, told what silver re-homed."""
        written = self.engine.write_silver(self.lh, day, SALT)
        if self.gold:
            rehomed = Rehomed(
                tuple(written.rehomed_landing_days), tuple(date.fromisoformat(d) for d in written.rehomed_event_dates)
            )
            list(build_day(self.lh, self.engine, day, GOLD_KEYS, threads=1, rehomed=rehomed))
            dates = sorted(set(affected_dates(self.lh, day)) | set(rehomed.event_dates))
            last = self.lh.scan("silver/events").select(pl.col("event_date").max()).collect().item()
            self.engine.write_user_features(self.lh, *features.feature_window(dates, last))
        return written

    def tables(self, names: list[str]) -> dict[str, pl.DataFrame]:
        return {t: self.lh.read(t).sort(pl.all()) for t in names}


def in_date_order(root: Path, gold: bool) -> Lake:
    lake = Lake(Lakehouse(str(root)), gold=gold)
    for day in DAYS:
        for name in FILES:
            land(lake.lh, day, name)
    for day in DAYS:
        lake.run(day)
    return lake


class Tables(dict):
    """Tables by name (a short repr: hypothesis prints the arguments of a failing example)."""

    def __repr__(self) -> str:
        return f"Tables({sorted(self)})"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Tables:
    """Every file landed, every day processed once, in date order."""
    lake = in_date_order(tmp_path_factory.mktemp("in_date_order"), gold=True)
    return Tables(lake.tables([*SILVER.values(), *GOLD]))


@dataclass(frozen=True)
class Schedule:
    """Days processed in ``order``; for each day in ``late``, its file a lands only after the
    day's first processing. A day with a file landed since it last ran runs again at the end
    (as the landing sensor would have it)."""

    order: tuple[int, ...]
    late: frozenset[int]

    def steps(self) -> list[tuple[str, str]]:
        """("run", day) and ("land", day) in the order they happen."""
        steps: list[tuple[str, str]] = []
        waiting, stale = set(self.late), set()
        for i in self.order:
            steps.append(("run", DAYS[i]))
            stale.discard(i)
            if i in waiting:
                waiting.discard(i)
                steps.append(("land", DAYS[i]))
                stale.add(i)
        steps += [("land", DAYS[i]) for i in sorted(waiting)]
        steps += [("run", DAYS[i]) for i in sorted(stale | waiting)]
        return steps


schedules = st.builds(
    Schedule,
    order=st.permutations(range(len(DAYS))).flatmap(
        lambda perm: st.lists(st.integers(0, len(DAYS) - 1), max_size=3).map(lambda extra: tuple(perm) + tuple(extra))
    ),
    late=st.frozensets(st.integers(0, len(DAYS) - 1), max_size=2),
)


def replay(root: Path, schedule: Schedule, gold: bool, engine: ComputeEngine | None = None) -> Lake:
    lake = Lake(Lakehouse(str(root)), engine or PolarsEngine(), gold=gold)
    for i in range(len(DAYS)):
        if i not in schedule.late:
            land(lake.lh, DAYS[i], "a.jsonl")
        land(lake.lh, DAYS[i], "b.jsonl")
    for action, day in schedule.steps():
        if action == "land":
            land(lake.lh, day, "a.jsonl")
        else:
            lake.run(day)
    return lake


def assert_same_tables(got: dict[str, pl.DataFrame], reference: dict[str, pl.DataFrame]) -> None:
    for table, frame in got.items():
        expected = reference[table]
        try:
            assert_frame_equal(frame.select(expected.columns).sort(pl.all()), expected, check_exact=True)
        except AssertionError as error:
            raise AssertionError(f"{table} differs from processing in date order: {error}") from None


def assert_conserved(lh: Lakehouse) -> None:
    def per_day(table: str) -> dict[str, int]:
        return dict(lh.read(table).group_by("landing_date").len().rows())

    bronze = per_day("bronze/events")
    kept, quarantined, duplicates = (per_day(t) for t in SILVER.values())
    for day in DAYS:
        assert bronze[day] == kept.get(day, 0) + quarantined.get(day, 0) + duplicates.get(day, 0), day
    assert lh.read("silver/events")["event_id"].is_unique().all()


# -- the data really has what the property is about ---------------------------------------------


def test_the_landing_zone_has_cross_day_and_cross_file_conflicts(reference: dict[str, pl.DataFrame]) -> None:
    dups = reference["silver/events_duplicates"]
    assert dups.filter(pl.col("kept_landing_date") < pl.col("landing_date")).height >= 2 * (len(DAYS) - 1)
    assert dups.filter(pl.col("event_id") == "everywhere")["landing_date"].to_list() == DAYS[1:]
    assert dups.filter(pl.col("kept_source_file").str.ends_with("a.jsonl") & pl.col("source_file").str.ends_with("b.jsonl")).height >= len(DAYS)
    # the later day's event that landed a day early belongs to the early day
    events = reference["silver/events"]
    assert events.filter(pl.col("event_id") == f"{DAYS[2]}-4")["landing_date"].to_list() == [DAYS[1]]
    assert not reference["gold/dim_user"]["user_id"].str.starts_with("loner").any()


# -- the property -----------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(schedule=schedules)
def test_silver_is_the_same_whatever_order_days_are_processed_in(reference: dict[str, pl.DataFrame], schedule: Schedule) -> None:
    with tempfile.TemporaryDirectory() as root:
        lake = replay(Path(root), schedule, gold=False)
        assert_same_tables(lake.tables(list(SILVER.values())), reference)
        assert_conserved(lake.lh)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(schedule=schedules)
def test_gold_is_the_same_whatever_order_days_are_processed_in(reference: dict[str, pl.DataFrame], schedule: Schedule) -> None:
    with tempfile.TemporaryDirectory() as root:
        lake = replay(Path(root), schedule, gold=True)
        assert_same_tables(lake.tables([*SILVER.values(), *GOLD]), reference)


# -- the cases, spelled out ---------------------------------------------------------------------


def test_a_day_processed_after_a_later_one_takes_its_events_back(tmp_path: Path, reference) -> None:
    lake = replay(tmp_path, Schedule((0, 2, 3), frozenset()), gold=False)
    taken = f"{DAYS[1]}-3"  # day 3 kept it while day 2 was not processed
    assert lake.lh.read("silver/events").filter(pl.col("event_id") == taken)["landing_date"].to_list() == [DAYS[2]]

    written = lake.run(DAYS[1])

    assert written.rehomed_landing_days == [DAYS[2]] and written.rehomed_rows >= 1
    assert lake.lh.read("silver/events").filter(pl.col("event_id") == taken)["landing_date"].to_list() == [DAYS[1]]
    moved = lake.lh.read("silver/events_duplicates").filter((pl.col("event_id") == taken) & (pl.col("landing_date") == DAYS[2]))
    assert moved.select("kept_landing_date", "kept_source_file").rows() == [(DAYS[1], f"events/{DAYS[1]}/b.jsonl")]
    assert moved["file_sha256"].to_list() == [f"{DAYS[2]}/a.jsonl".ljust(64, "0")]  # from bronze
    assert_same_tables(lake.tables(list(SILVER.values())), reference)
    assert_conserved(lake.lh)


def test_duplicates_of_later_days_follow_the_event_to_its_new_owner(tmp_path: Path, reference) -> None:
    lake = replay(tmp_path, Schedule((3, 2, 1), frozenset()), gold=False)
    before = lake.lh.read("silver/events_duplicates").filter(pl.col("event_id") == "everywhere")
    assert set(before["kept_landing_date"]) == {DAYS[1]}

    lake.run(DAYS[0])

    after = lake.lh.read("silver/events_duplicates").filter(pl.col("event_id") == "everywhere").sort("landing_date")
    assert after["landing_date"].to_list() == DAYS[1:] and set(after["kept_landing_date"]) == {DAYS[0]}
    assert_same_tables(lake.tables(list(SILVER.values())), reference)


def _pointer(lh: Lakehouse, day: str, event_id: str) -> list[tuple[str, str]]:
    dups = lh.read("silver/events_duplicates").filter((pl.col("landing_date") == day) & (pl.col("event_id") == event_id))
    return dups.select("kept_landing_date", "kept_source_file").rows()


def test_a_late_file_that_sorts_first_moves_the_kept_record_and_the_pointers_to_it(tmp_path: Path, reference) -> None:
    lake = Lake(Lakehouse(str(tmp_path)))
    for day in DAYS:
        for name in FILES:
            if (day, name) != (DAYS[0], "a.jsonl"):
                land(lake.lh, day, name)
    for day in DAYS:
        lake.run(day)
    twice = f"{DAYS[0]}-twice"
    assert _pointer(lake.lh, DAYS[1], twice) == [(DAYS[0], f"events/{DAYS[0]}/b.jsonl")]

    land(lake.lh, DAYS[0], "a.jsonl")  # sorts before b.jsonl and carries the same event
    lake.run(DAYS[0])

    kept = lake.lh.read("silver/events").filter(pl.col("event_id") == twice)
    assert kept["source_file"].to_list() == [f"events/{DAYS[0]}/a.jsonl"]
    assert _pointer(lake.lh, DAYS[1], twice) == [(DAYS[0], f"events/{DAYS[0]}/a.jsonl")]
    assert_same_tables(lake.tables(list(SILVER.values())), reference)
    assert_conserved(lake.lh)


def test_rerunning_every_day_in_reverse_moves_nothing(tmp_path: Path, reference) -> None:
    lake = in_date_order(tmp_path, gold=False)
    for day in reversed(DAYS):
        assert lake.run(day).rehomed_rows == 0
    assert_same_tables(lake.tables(list(SILVER.values())), reference)


# -- a crash between the commits of a step that re-homes ---------------------------------------


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("crash_before", ["silver/events_duplicates", "silver/events"])
def test_a_crash_between_commits_loses_no_row_and_a_rerun_repairs_it(
    tmp_path: Path, reference, monkeypatch: pytest.MonkeyPatch, crash_before: str
) -> None:
    lake = replay(tmp_path, Schedule((3, 2, 0), frozenset()), gold=False)
    original = Lakehouse.replace_where

    def crashing(self, table, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if table == crash_before:
            raise Crash(f"killed before committing {table}")
        return original(self, table, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Lakehouse, "replace_where", crashing)
        with pytest.raises(Crash):
            lake.run(DAYS[1])  # takes events back from day 3

    bronze = lake.lh.read("bronze/events").group_by("landing_date").len()
    accounted = pl.concat([lake.lh.read(t).select("landing_date") for t in SILVER.values()]).group_by("landing_date").len()
    joined = bronze.join(accounted, on="landing_date", how="left", suffix="_accounted").fill_null(0)
    processed = joined.filter(pl.col("landing_date") != DAYS[1])
    assert (processed["len_accounted"] >= processed["len"]).all()  # counted twice at worst, never lost

    lake.run(DAYS[1])

    assert_same_tables(lake.tables(list(SILVER.values())), reference)
    assert_conserved(lake.lh)


# -- Spark: the same rule, the same tables ------------------------------------------------------


def test_spark_out_of_order_with_a_late_file_gives_the_date_order_tables(spark, tmp_path: Path, reference) -> None:
    from hybrid_pipeline.engines.compute import SparkEngine

    lake = replay(tmp_path, Schedule((3, 1, 2, 0), frozenset({1})), gold=False, engine=SparkEngine(spark))
    assert_same_tables(lake.tables(list(SILVER.values())), reference)
    assert_conserved(lake.lh)
