"""Re-homing: a landing day processed after a later one takes back the events it owns.

Silver keeps, per event_id, the first valid record in (landing day, source file, line) order
(:func:`hybrid_pipeline.transforms.silver.deduplicate`). When landing day L is cleaned after a
later day L' that kept an event_id L also carries (an out-of-order backfill, or two partitions
launched together), L keeps it now and L''s row becomes a duplicate pointing at L's record.
The same holds for a file of L that lands late and sorts before the one that was kept: the
later days' duplicates must point at the new record. The final tables therefore depend only on
the data, never on the order in which days were processed.

What the silver step of L writes (both engines, three commits, in this order)
    1. ``silver/events_quarantine``: L's rows (predicate ``landing_date = L``).
    2. ``silver/events_duplicates``: L's rows, plus every duplicate row of later days whose
       event_id L now owns: the displaced silver rows as new duplicates, and the existing
       duplicates of those ids pointing at L's record (one replace: ``landing_date = L OR
       (landing_date IN later days AND event_id IN ids)``).
    3. ``silver/events``: L's rows, minus the displaced rows of later days (one replace:
       ``landing_date = L OR (event_date IN .. AND landing_date IN .. AND event_id IN ..)``,
       partition- and statistics-pruned to the files that hold them).

Why a crash between commits is recovered by rerunning L
    Each commit is one atomic Delta version. After (1) only L's quarantine changed, recomputed
    the same by the rerun. After (2) a displaced row is counted twice (still in L''s silver and
    already in its duplicates) but never lost: the rerun finds it in L''s silver again, displaces
    it again and rewrites the later days' duplicates from what they hold, one row per record
    (rows are unique on landing day, file and line), so nothing is added twice; then (3)
    removes it from silver. Writing silver first instead would lose the row until L' was rerun.

What it costs
    Only conflicting rows are read beyond what dedup reads anyway: the displaced rows come out of
    dedup's own lookup; the later days' duplicates are read from the partitions after L (none
    exist when days are processed in order), filtered to the ids concerned; the bronze file hash
    of a displaced row is looked up in its landing day's bronze partition only when there is one.

What gold must then recompute (reported by the silver step as ``rehomed_landing_days`` and
``rehomed_event_dates``): the per-landing-day tables of the days that lost rows, and the
per-date tables on the event dates of those rows (see ``hybrid_pipeline.defs.gold_analytics.assets``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import polars as pl

from hybrid_pipeline.lakehouse import catalog
from hybrid_pipeline.transforms.silver import DISPLACED_SCHEMA, DUPLICATES_SCHEMA, OWNERSHIP_ORDER

if TYPE_CHECKING:  # pragma: no cover - typing only
    from hybrid_pipeline.lakehouse import Lakehouse

BRONZE_EVENTS = catalog.BRONZE_EVENTS.name
SILVER_DUPLICATES = catalog.SILVER_EVENTS_DUPLICATES.name
# Predicates are read by delta-rs (DataFusion SQL) on the polars path and by Spark SQL on the
# Spark path; the two escape a quote in a string literal differently.
Dialect = Literal["delta-rs", "spark"]
KeeperLookup = Callable[[list[str]], pl.DataFrame]


def sql_string(value: str, dialect: Dialect) -> str:
    """A SQL string literal for ``value`` in the dialect that will parse it."""
    if dialect == "spark":
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "'" + value.replace("'", "''") + "'"


def sql_in(column: str, values: Iterable[str], dialect: Dialect) -> str:
    """``column IN ('a', 'b', ...)`` with each value quoted for ``dialect``."""
    return f"{column} IN ({', '.join(sql_string(v, dialect) for v in values)})"


def _sorted(values: Iterable[object]) -> list[str]:
    return sorted({str(v) for v in values if v is not None})


@dataclass(frozen=True)
class Rehoming:
    """What a landing day's silver step changes in the rows of later landing days."""

    landing_day: str
    # silver rows of later days that the day owns now (DISPLACED_SCHEMA)
    displaced: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=DISPLACED_SCHEMA))
    # every duplicates row of later days for ``ids``, as it must be after this step (DUPLICATES_SCHEMA)
    duplicates: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=DUPLICATES_SCHEMA))
    ids: list[str] = field(default_factory=list)

    @property
    def landing_days(self) -> list[str]:
        """Later landing days whose silver rows move to their duplicates."""
        return _sorted(self.displaced["landing_date"])

    @property
    def event_dates(self) -> list[str]:
        """Event dates (ISO text) of the rows that leave silver."""
        return _sorted(d.isoformat() for d in self.displaced["event_date"].drop_nulls())

    def _own(self) -> str:
        return f"landing_date = '{self.landing_day}'"

    def events_predicate(self, dialect: Dialect) -> str:
        """The rows of ``silver/events`` the day's write replaces: its own and the displaced ones."""
        if self.displaced.is_empty():
            return self._own()
        # The displaced rows' event dates and landing days prune the rewrite to the files holding them.
        moved = " AND ".join(
            [
                sql_in("event_date", self.event_dates, dialect),
                sql_in("landing_date", self.landing_days, dialect),
                sql_in("event_id", _sorted(self.displaced["event_id"]), dialect),
            ]
        )
        return f"{self._own()} OR ({moved})"

    def duplicates_predicate(self, dialect: Dialect) -> str:
        """The rows of ``silver/events_duplicates`` the day's write replaces: its own and the
        later days' duplicates of ``ids`` (all of them are in ``duplicates``)."""
        if not self.ids:
            return self._own()
        days = _sorted(self.duplicates["landing_date"])
        return f"{self._own()} OR ({sql_in('landing_date', days, dialect)} AND {sql_in('event_id', self.ids, dialect)})"


def _with_file_hashes(lh: Lakehouse, displaced: pl.DataFrame) -> pl.DataFrame:
    """The displaced rows as duplicates rows: silver has no file hash, bronze has (its landing
    day's partition, read for the few files concerned)."""
    days, files = _sorted(displaced["landing_date"]), _sorted(displaced["source_file"])
    hashes = (
        lh.scan(BRONZE_EVENTS)
        .filter(pl.col("landing_date").is_in(days) & pl.col("source_file").is_in(files))
        .select(*OWNERSHIP_ORDER, "file_sha256")
        .join(displaced.lazy().select(*OWNERSHIP_ORDER), on=list(OWNERSHIP_ORDER), how="semi")
        .sort(*OWNERSHIP_ORDER, "file_sha256")
        .unique(list(OWNERSHIP_ORDER), keep="first", maintain_order=True)
        .collect()
    )
    return displaced.join(hashes, on=list(OWNERSHIP_ORDER), how="left").select(list(DUPLICATES_SCHEMA))


def plan_rehoming(lh: Lakehouse, landing_day: str, displaced: pl.DataFrame, keepers: KeeperLookup) -> Rehoming:
    """The later days' rows that change when ``landing_day`` is written.

    ``displaced`` comes from dedup (``SilverBatch.displaced``). ``keepers(ids)`` gives the day's
    kept records of those ids (``event_id``, ``source_file``, ``line_number``): later days'
    duplicates already pointing at the day are checked against them, which catches a kept
    record that changed because a file of the day landed late.
    """
    later = (
        lh.scan(SILVER_DUPLICATES).filter(pl.col("landing_date") > landing_day)
        if lh.exists(SILVER_DUPLICATES)
        else pl.LazyFrame(schema=DUPLICATES_SCHEMA)
    )
    pointing = (
        later.filter(pl.col("kept_landing_date") == landing_day)
        .select("event_id", "kept_source_file", "kept_line_number")
        .unique()
        .collect()
    )
    # the day's record of each event id whose later duplicates must point at it
    owners = displaced.select("event_id", *[f"kept_{c}" for c in OWNERSHIP_ORDER])
    if pointing.height:
        current = keepers(pointing["event_id"].unique().to_list()).select(
            "event_id",
            pl.lit(landing_day).alias("kept_landing_date"),
            pl.col("source_file").alias("kept_source_file"),
            pl.col("line_number").cast(pl.Int64).alias("kept_line_number"),
        )
        wrong = pointing.join(current, on=["event_id", "kept_source_file", "kept_line_number"], how="anti")
        stale = current.join(wrong, on="event_id", how="semi")
        owners = pl.concat([owners, stale]).unique("event_id", keep="first", maintain_order=True)
    if owners.is_empty():
        return Rehoming(landing_day)
    ids = _sorted(owners["event_id"])
    repointed = (
        later.filter(pl.col("event_id").is_in(ids))
        .drop(*[f"kept_{c}" for c in OWNERSHIP_ORDER])
        .collect()
        .join(owners, on="event_id", how="inner")
        .select(list(DUPLICATES_SCHEMA))
    )
    moved = _with_file_hashes(lh, displaced) if displaced.height else pl.DataFrame(schema=DUPLICATES_SCHEMA)
    # One row per record: a rerun after a crash finds the moved rows among the duplicates already.
    duplicates = (
        pl.concat([moved, repointed.cast(DUPLICATES_SCHEMA)])
        .unique(list(OWNERSHIP_ORDER), keep="first", maintain_order=True)
        .sort(*OWNERSHIP_ORDER)
    )
    return Rehoming(landing_day, displaced, duplicates, ids)
