"""The compute engine behind the silver and gold assets: one interface, polars or Spark behind it.

Assets call ``engine.write_silver(...)``, ``engine.daily_metrics(...)``, ... and never ask which
engine runs; this module is the one place where the choice (``HYBRID_ENGINE``) is dispatched
(:func:`make_engine`). Both engines produce the same rows and schemas (the equivalence tests in
``hybrid_pipeline_tests/engines`` hold them to it).

Inputs and outputs
    * ``write_silver(lh, landing_day, pii_salt) -> SilverWritten``: what the silver asset calls.
      Polars reads the day's bronze records and cleans them in process; Spark reads the bronze
      and silver snapshots itself, cleans in its tasks and writes through ``delta_commit``
      (nothing is collected to the driver but counts, reasons, drift keys and the few rows
      re-homing moves). Both keep, per event_id, the first record in (landing day, source
      file, line) order, whatever order the days are processed in; a day processed after a
      later one takes back what it owns (:mod:`hybrid_pipeline.engines.rehoming`).
    * ``clean_events(bronze, existing, pii_salt) -> SilverBatch``: the same cleaning on frames
      handed in (polars in, polars out), for callers that hold the records already.
    * The gold operations take the :class:`~hybrid_pipeline.lakehouse.Lakehouse` and say *what*
      to compute (event dates, a landing day, a feature window). Each engine reads silver
      natively: polars through ``pl.scan_delta``, Spark through the pinned-snapshot reader of
      :mod:`hybrid_pipeline.engines.delta_commit` (or ``format("delta")`` with the jars).
    * Small results (``daily_metrics``: dates x segments; ``dim_user``: one row per touched
      user, from the per-(user, landing day) summaries) come back as polars frames; the asset
      writes them (replace-where / merge through delta-rs, the same code for both engines).
    * Large results (``fact_events``: a landing day's events; ``user_landing_summary``: a
      landing day's users; ``user_features``: users x days) are written by the engine itself
      (``write_fact_events``, ``write_user_landing_summary``, ``write_user_features``): on Spark
      the executors write Parquet files and the driver commits them (no rows pass through the
      driver); a :class:`Written` summary comes back for the asset's metadata.

What stays on the driver whatever the engine: planning queries that read one or two columns
(the event dates a landing day touches, the newest event date), ``dim_date`` (one row per date)
and the Delta commits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import polars as pl

from hybrid_pipeline.engines.shared import (
    DIM_USER_SCHEMA,
    FACT_EVENTS_SCHEMA,
    USER_LANDING_SUMMARY_SCHEMA,
    Engine,
    EngineName,
    run_on,
)
from hybrid_pipeline.engines.rehoming import Rehoming, plan_rehoming
from hybrid_pipeline.lakehouse import catalog
from hybrid_pipeline.lakehouse.event_index import COMMIT_DAYS_KEY, EventIndex
from hybrid_pipeline.transforms import features, gold
from hybrid_pipeline.transforms import silver as polars_silver
from hybrid_pipeline.transforms.contract import silver_schema

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pyspark.sql import DataFrame as SparkDataFrame
    from pyspark.sql import SparkSession

    from hybrid_pipeline.engines.delta_commit import SparkLakehouse
    from hybrid_pipeline.lakehouse import Lakehouse

BRONZE_EVENTS = catalog.BRONZE_EVENTS.name
SILVER_EVENTS = catalog.SILVER_EVENTS.name
_SILVER = {"events": catalog.SILVER_EVENTS, "quarantine": catalog.SILVER_EVENTS_QUARANTINE,
           "duplicates": catalog.SILVER_EVENTS_DUPLICATES}
SILVER_TABLES = {name: table.name for name, table in _SILVER.items()}
# As the catalog declares: events by their true date (late events included), the set-asides by
# the day that landed them.
SILVER_PARTITIONS = {name: list(table.partition_by) for name, table in _SILVER.items()}
FACT_EVENTS = catalog.GOLD_FACT_EVENTS.name
FACT_EVENTS_PARTITIONS = list(catalog.GOLD_FACT_EVENTS.partition_by)
USER_LANDING_SUMMARY = catalog.GOLD_USER_LANDING_SUMMARY.name
USER_FEATURES = catalog.GOLD_USER_FEATURES.name
# What dedup reads of other landing days' silver rows (event_date dates the rows it displaces).
EXISTING_COLUMNS = ("event_id", "landing_date", "source_file", "line_number", "event_date")
# What the event index keeps of a landing day's kept events.
INDEX_COLUMNS = ("event_id", "source_file", "line_number", "event_date")
# Commit order of a silver step: a crash between commits is recovered by a rerun (engines.rehoming).
WRITE_ORDER = ("quarantine", "duplicates", "events")


@dataclass(frozen=True)
class Written:
    """What an engine wrote: the table version, the rows it replaced the predicate's rows with,
    and small figures for the asset's metadata (e.g. distinct users)."""

    version: int | None
    rows: int
    schema: dict[str, pl.DataType]
    figures: dict[str, Any] = field(default_factory=dict)


def in_dates(column: str, dates: list[date]) -> str:
    """SQL predicate ``column IN ('2024-01-01', ...)`` (delta-rs and Spark both read it)."""
    return f"{column} IN ({', '.join(repr(d.isoformat()) for d in dates)})"


@dataclass(frozen=True)
class SilverWritten:
    """What a landing day's silver step wrote: rows in and out (row conservation), the tables'
    versions, quarantine reasons, schema drift and the event dates the kept events fall on.

    ``rehomed_*``: the later landing days whose silver rows this day took over (they became
    duplicates of their day) and those rows' event dates; gold must recompute them too.
    """

    bronze_rows: int
    rows: dict[str, int]
    versions: dict[str, int]
    reasons: dict[str, int]
    drift: dict[str, int]
    event_dates: list[str]
    rehomed_rows: int = 0
    rehomed_landing_days: list[str] = field(default_factory=list)
    rehomed_event_dates: list[str] = field(default_factory=list)


def landing_day_rows(lh: Lakehouse, table: str, landing_day: str) -> int:
    """Rows of ``table`` that ``landing_day`` owns (0 before the table exists)."""
    if not lh.exists(table):
        return 0
    return int(lh.scan(table).filter(pl.col("landing_date") == landing_day).select(pl.len()).collect().item())


def landing_day_event_dates(lh: Lakehouse, landing_day: str) -> list[str]:
    """The event dates (ISO text) of the silver events ``landing_day`` owns."""
    if not lh.exists(SILVER_EVENTS):
        return []
    dates = lh.scan(SILVER_EVENTS).filter(pl.col("landing_date") == landing_day).select(pl.col("event_date").unique())
    return sorted(str(d) for d in dates.collect()["event_date"].to_list())


def _rehomed(rehoming: Rehoming) -> dict[str, Any]:
    """The ``rehomed_*`` figures of :class:`SilverWritten`."""
    return {
        "rehomed_rows": rehoming.displaced.height,
        "rehomed_landing_days": rehoming.landing_days,
        "rehomed_event_dates": rehoming.event_dates,
    }


@runtime_checkable
class ComputeEngine(Protocol):
    """What the silver and gold assets ask of an engine."""

    name: EngineName

    def clean_events(self, bronze: pl.DataFrame, existing: pl.LazyFrame, pii_salt: str) -> polars_silver.SilverBatch:
        """Bronze records of one batch -> typed, validated, deduplicated silver + quarantine + duplicates."""
        ...

    def write_silver(self, lh: Lakehouse, landing_day: str, pii_salt: str) -> SilverWritten:
        """Clean the landing day's bronze records and replace its rows of the three silver tables;
        rows of later days whose event_id the day owns become their duplicates (engines.rehoming)."""
        ...

    def daily_metrics(self, lh: Lakehouse, dates: list[date]) -> pl.DataFrame:
        """gold/daily_metrics rows for exactly ``dates`` (all of silver on those event dates)."""
        ...

    def write_fact_events(self, lh: Lakehouse, landing_day: str) -> Written:
        """Replace the landing day's rows of gold/fact_events with its silver events, keyed."""
        ...

    def write_user_landing_summary(self, lh: Lakehouse, landing_day: str) -> Written:
        """Replace the landing day's rows of gold/user_landing_summary with its per-user summary."""
        ...

    def dim_user(self, lh: Lakehouse, landing_day: str, users: Sequence[str] = ()) -> pl.DataFrame:
        """gold/dim_user rows of the users the landing day touched (and of ``users``), over their
        whole history (from their landing-day summaries: a day's work does not grow with the
        history). A user without any summary has no row."""
        ...

    def write_user_features(self, lh: Lakehouse, start: date, end: date) -> Written:
        """Replace gold/user_features rows from ``start`` on with the feature rows of ``start``..``end``."""
        ...


# ---------------------------------------------------------------------------------------------
# polars (the embedded default)
# ---------------------------------------------------------------------------------------------


class PolarsEngine:
    """In-process polars on delta-rs snapshots: silver from :mod:`hybrid_pipeline.transforms.silver`,
    gold from the definitions both engines share (:mod:`hybrid_pipeline.engines.shared`)."""

    name: EngineName = "polars"

    def clean_events(self, bronze: pl.DataFrame, existing: pl.LazyFrame, pii_salt: str) -> polars_silver.SilverBatch:
        return polars_silver.clean_events(bronze, existing, pii_salt)

    def write_silver(self, lh: Lakehouse, landing_day: str, pii_salt: str) -> SilverWritten:
        from hybrid_pipeline.sources.landing import BRONZE_SCHEMA

        bronze = lh.scan_or_empty(BRONZE_EVENTS, BRONZE_SCHEMA).filter(pl.col("landing_date") == landing_day).collect()
        # Other days' records of the day's ids come from the event index (checked against silver's
        # version and caught up first), not from a scan of every stored id.
        index = EventIndex(lh, SILVER_EVENTS).current()
        before = index.version
        batch = self.clean_events(bronze, lambda ids: index.lookup(ids, exclude_day=landing_day), pii_salt)

        def keepers(ids: list[str]) -> pl.DataFrame:
            return batch.events.filter(pl.col("event_id").is_in(ids)).select("event_id", "source_file", "line_number")

        rehoming = plan_rehoming(lh, landing_day, batch.displaced, keepers)
        rows = {
            "quarantine": (batch.quarantine, f"landing_date = '{landing_day}'"),
            "duplicates": (pl.concat([batch.duplicates, rehoming.duplicates]), rehoming.duplicates_predicate("delta-rs")),
            "events": (batch.events, rehoming.events_predicate("delta-rs")),
        }
        touched = [landing_day, *rehoming.landing_days]

        def write(name: str) -> int:
            # silver/events names the landing days it changes, so the index can catch up after a crash
            props = {COMMIT_DAYS_KEY: json.dumps(touched)} if name == "events" else None
            return lh.replace_where(
                SILVER_TABLES[name], rows[name][0], rows[name][1], partition_by=SILVER_PARTITIONS[name], commit_properties=props
            )

        versions = {name: write(name) for name in WRITE_ORDER}
        index.record(
            before,
            versions["events"],
            {landing_day: batch.events.select(INDEX_COLUMNS), **{day: None for day in rehoming.landing_days}},
        )
        return SilverWritten(
            bronze_rows=bronze.height,
            rows={name: getattr(batch, name).height for name in SILVER_TABLES},
            versions=versions,
            reasons=batch.reasons(),
            drift=batch.drift,
            event_dates=sorted({str(d) for d in batch.events["event_date"].unique().to_list()}),
            **_rehomed(rehoming),
        )

    def _silver(self, lh: Lakehouse) -> pl.LazyFrame:
        return lh.scan_or_empty(SILVER_EVENTS, silver_schema())

    def daily_metrics(self, lh: Lakehouse, dates: list[date]) -> pl.DataFrame:
        if not dates:
            return pl.DataFrame(schema=gold.DAILY_METRICS_SCHEMA)
        return run_on("polars", "daily_metrics", self._silver(lh).filter(pl.col("event_date").is_in(dates)))

    def write_fact_events(self, lh: Lakehouse, landing_day: str) -> Written:
        own = self._silver(lh).filter(pl.col("landing_date") == landing_day)
        facts = run_on("polars", "fact_events", own)
        version = lh.replace_where(FACT_EVENTS, facts, f"landing_date = '{landing_day}'", partition_by=FACT_EVENTS_PARTITIONS)
        return Written(version, facts.height, dict(facts.schema))

    def write_user_landing_summary(self, lh: Lakehouse, landing_day: str) -> Written:
        own = self._silver(lh).filter(pl.col("landing_date") == landing_day)
        rows = run_on("polars", "user_landing_summary", own)
        version = lh.replace_where(USER_LANDING_SUMMARY, rows, f"landing_date = '{landing_day}'")
        return Written(version, rows.height, dict(rows.schema))

    def dim_user(self, lh: Lakehouse, landing_day: str, users: Sequence[str] = ()) -> pl.DataFrame:
        summaries = lh.scan_or_empty(USER_LANDING_SUMMARY, USER_LANDING_SUMMARY_SCHEMA)
        touched = summaries.filter(pl.col("landing_date") == landing_day).select("user_id")
        if users:
            touched = pl.concat([touched, pl.LazyFrame({"user_id": list(users)}, schema={"user_id": pl.String()})])
        return run_on("polars", "dim_user", summaries.join(touched, on="user_id", how="semi"))

    def write_user_features(self, lh: Lakehouse, start: date, end: date) -> Written:
        rows = run_on("polars", "user_features", self._silver(lh), start=start, end=end)
        version = lh.replace_where(USER_FEATURES, rows, f"event_date >= '{start.isoformat()}'")
        return Written(version, rows.height, dict(rows.schema), {"users": rows["user_id"].n_unique()})


# ---------------------------------------------------------------------------------------------
# Spark (scale-out)
# ---------------------------------------------------------------------------------------------


class SparkEngine:
    """The same operations on a SparkSession: Spark silver, the narwhals-shared gold, Delta through
    :class:`~hybrid_pipeline.engines.delta_commit.SparkLakehouse`."""

    name: EngineName = "spark"

    def __init__(self, spark: SparkSession) -> None:
        from hybrid_pipeline.engines.spark_session import prepare_executors

        # On a cluster: the executors' Python environment, checked within a bounded time (once).
        prepare_executors(spark)
        self.spark = spark
        self.shared = Engine("spark", spark)

    def lakehouse(self, lh: Lakehouse) -> SparkLakehouse:
        from hybrid_pipeline.engines.delta_commit import SparkLakehouse

        return SparkLakehouse(lh, self.spark)

    def _frame(self, df: pl.DataFrame) -> SparkDataFrame:
        return self.spark.createDataFrame(df.to_arrow(compat_level=pl.CompatLevel.oldest()))

    def _silver(self, lh: Lakehouse, predicate: str | None = None) -> SparkDataFrame:
        from hybrid_pipeline.engines.shared import to_spark_schema

        if not lh.exists(SILVER_EVENTS):
            return to_spark_schema(self._frame(pl.DataFrame(schema=silver_schema())), silver_schema())
        return self.lakehouse(lh).scan(SILVER_EVENTS, predicate=predicate)

    def clean_events(self, bronze: pl.DataFrame, existing: pl.LazyFrame, pii_salt: str) -> polars_silver.SilverBatch:
        from hybrid_pipeline.engines.spark_silver import clean_events

        schema = silver_schema()
        columns = [c for c in EXISTING_COLUMNS if c in existing.collect_schema().names()]
        ids = existing.select(*columns).collect().cast({c: schema[c] for c in columns})
        batch = clean_events(self._frame(bronze), self._frame(ids), pii_salt)
        try:
            return batch.to_polars()
        finally:
            batch.unpersist()

    def write_silver(self, lh: Lakehouse, landing_day: str, pii_salt: str) -> SilverWritten:
        """Spark reads the bronze and silver snapshots itself, its tasks write the Parquet files and
        the driver commits them: no record passes through the driver but the few that re-homing
        moves (engines.rehoming)."""
        from pyspark.sql import functions as F

        from hybrid_pipeline.engines.shared import to_spark_schema
        from hybrid_pipeline.engines.spark_silver import clean_events, collect
        from hybrid_pipeline.sources.landing import BRONZE_SCHEMA
        from hybrid_pipeline.transforms.silver import DUPLICATES_SCHEMA

        where = f"landing_date = '{landing_day}'"
        slh = self.lakehouse(lh)
        if lh.exists(BRONZE_EVENTS):
            bronze = slh.scan(BRONZE_EVENTS, predicate=where)
        else:
            bronze = self._frame(pl.DataFrame(schema=BRONZE_SCHEMA))
        schema = silver_schema()
        if lh.exists(SILVER_EVENTS):
            existing = slh.scan(SILVER_EVENTS, predicate=f"landing_date != '{landing_day}'").select(*EXISTING_COLUMNS)
        else:
            existing = self._frame(pl.DataFrame(schema={c: schema[c] for c in EXISTING_COLUMNS}))
        batch = clean_events(bronze, existing, pii_salt)
        try:

            def keepers(ids: list[str]) -> pl.DataFrame:
                lineage = {c: schema[c] for c in ("event_id", "source_file", "line_number")}
                return collect(batch.events.filter(F.col("event_id").isin(ids)), lineage)

            rehoming = plan_rehoming(lh, landing_day, batch.displaced_rows(), keepers)
            duplicates = batch.duplicates
            if rehoming.duplicates.height:
                moved = to_spark_schema(self._frame(rehoming.duplicates), DUPLICATES_SCHEMA)
                duplicates = duplicates.unionByName(moved)
            rows = {
                "quarantine": (batch.quarantine, where),
                "duplicates": (duplicates, rehoming.duplicates_predicate("spark")),
                "events": (batch.events, rehoming.events_predicate("spark")),
            }
            versions = {
                name: slh.replace_where(SILVER_TABLES[name], rows[name][0], rows[name][1], partition_by=SILVER_PARTITIONS[name])
                for name in WRITE_ORDER
            }
            reasons = batch.reasons()
        finally:
            batch.unpersist()
        return SilverWritten(
            bronze_rows=landing_day_rows(lh, BRONZE_EVENTS, landing_day),
            rows={name: landing_day_rows(lh, table, landing_day) for name, table in SILVER_TABLES.items()},
            versions=versions,
            reasons=reasons,
            drift=dict(batch.drift),
            event_dates=landing_day_event_dates(lh, landing_day),
            **_rehomed(rehoming),
        )

    def daily_metrics(self, lh: Lakehouse, dates: list[date]) -> pl.DataFrame:
        if not dates:
            return pl.DataFrame(schema=gold.DAILY_METRICS_SCHEMA)
        return run_on(self.shared, "daily_metrics", self._silver(lh, in_dates("event_date", dates)))

    def write_fact_events(self, lh: Lakehouse, landing_day: str) -> Written:
        where = f"landing_date = '{landing_day}'"
        facts = run_on(self.shared, "fact_events", self._silver(lh, where), collect=False)
        version = self.lakehouse(lh).replace_where(FACT_EVENTS, facts, where, partition_by=FACT_EVENTS_PARTITIONS)
        rows = lh.scan(FACT_EVENTS).filter(pl.col("landing_date") == landing_day).select(pl.len()).collect().item()
        return Written(version, int(rows), dict(FACT_EVENTS_SCHEMA))

    def write_user_landing_summary(self, lh: Lakehouse, landing_day: str) -> Written:
        where = f"landing_date = '{landing_day}'"
        rows = run_on(self.shared, "user_landing_summary", self._silver(lh, where), collect=False)
        version = self.lakehouse(lh).replace_where(USER_LANDING_SUMMARY, rows, where)
        written = lh.scan(USER_LANDING_SUMMARY).filter(pl.col("landing_date") == landing_day).select(pl.len()).collect().item()
        return Written(version, int(written), dict(USER_LANDING_SUMMARY_SCHEMA))

    def dim_user(self, lh: Lakehouse, landing_day: str, users: Sequence[str] = ()) -> pl.DataFrame:
        from hybrid_pipeline.engines.shared import to_spark_schema

        if not lh.exists(USER_LANDING_SUMMARY):
            return pl.DataFrame(schema=DIM_USER_SCHEMA)
        summaries = to_spark_schema(self.lakehouse(lh).scan(USER_LANDING_SUMMARY), USER_LANDING_SUMMARY_SCHEMA)
        touched = summaries.filter(summaries["landing_date"] == landing_day).select("user_id")
        if users:
            touched = touched.unionByName(self._frame(pl.DataFrame({"user_id": list(users)}, schema={"user_id": pl.String()})))
        return run_on(self.shared, "dim_user", summaries.join(touched, on="user_id", how="left_semi"))

    def write_user_features(self, lh: Lakehouse, start: date, end: date) -> Written:
        rows = run_on(self.shared, "user_features", self._silver(lh), collect=False, start=start, end=end)
        where = f"event_date >= '{start.isoformat()}'"
        version = self.lakehouse(lh).replace_where(USER_FEATURES, rows, where)
        written = lh.scan(USER_FEATURES).filter(pl.col("event_date") >= start)
        stats = written.select(pl.len().alias("rows"), pl.col("user_id").n_unique().alias("users")).collect()
        return Written(version, int(stats["rows"][0]), dict(features.FEATURES_SCHEMA), {"users": int(stats["users"][0])})


# ---------------------------------------------------------------------------------------------
# the one dispatch
# ---------------------------------------------------------------------------------------------


def make_engine(name: EngineName, spark: SparkSession | Callable[[], SparkSession] | None = None) -> ComputeEngine:
    """The engine called ``name`` (``polars`` or ``spark``).

    ``spark`` is a session or a function returning one, called only when the engine is Spark
    (so that a polars deployment never starts a JVM).
    """
    if name == "polars":
        return PolarsEngine()
    if name == "spark":
        session = spark() if callable(spark) else spark
        if session is None:
            raise ValueError("the spark engine needs a SparkSession")
        return SparkEngine(session)
    raise ValueError(f"engine must be 'polars' or 'spark', got {name!r}")
