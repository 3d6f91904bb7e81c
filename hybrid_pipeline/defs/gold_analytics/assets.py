"""Gold analytics: daily metrics and the star schema (fact_events, dim_user, dim_date).

A landing day's run recomputes every event date that day's silver rows touch, so late
events are counted on their true date and earlier dates are corrected in place. The work runs
on the configured compute engine (:class:`~hybrid_pipeline.dagster_support.engine.EngineResource`,
``HYBRID_ENGINE``); dim_date is a handful of rows computed here.

Re-homed rows: when the day's silver step took events back from later landing days (the day
was processed after them; :mod:`hybrid_pipeline.engines.rehoming`), those days' rows left
silver. The day's run then also rewrites those days' fact_events and user_landing_summary
rows, their users' dim_user rows, and the per-date tables on the moved rows' event dates
(:class:`DayScope`). Which days and dates: the silver materializations of the day recorded
since these tables were last materialized for it (:func:`rehomed_since`); once moved, the rows
leave no trace in silver that would tell gold where they were.

dim_user is built from ``gold/user_landing_summary`` (one row per user and landing day), so a
day's run reads that day's events and the touched users' summaries, not their whole history.

The five tables are one subsettable multi-asset: each is its own asset in the graph and can be
materialized alone, but a day's run computes the independent ones side by side (two threads:
polars and delta-rs release the GIL, Spark takes concurrent jobs), where one step per asset
would run them one after another on an in-process executor while a core idles.
"""


import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dagster as dg
import polars as pl

from hybrid_pipeline.dagster_support.engine import ENGINE_TAG, EngineResource, engine_kinds, engine_pool
from hybrid_pipeline.dagster_support.keys import (
    DAILY_METRICS,
    DIM_DATE,
    DIM_USER,
    FACT_EVENTS,
    SILVER_EVENTS,
    USER_LANDING_SUMMARY,
    table_of,
)
from hybrid_pipeline.dagster_support.loading import current_settings, daily_partitions
from hybrid_pipeline.dagster_support.metadata import check_result, column_lineage, measured, table_metadata
from hybrid_pipeline.dagster_support.resources import LakehouseResource
from hybrid_pipeline.engines.compute import ComputeEngine, in_dates
from hybrid_pipeline.engines.shared import USER_LANDING_SUMMARY_SCHEMA
from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.transforms import gold, quality
from hybrid_pipeline.transforms.contract import silver_schema

GROUP = "gold_analytics"
_OWNERS = ["team:analytics"]
_TAGS = {"layer": "gold"}
# Tables whose work runs on the compute engine (their kinds and pool follow it: dagster_support/engine.py).
_ON_ENGINE_TAGS = {**_TAGS, **ENGINE_TAG}
# Worker threads for one day's gold tables: this machine class has two cores.
GOLD_THREADS = 2


def affected_dates(lh: Lakehouse, landing_day: str) -> list[dt.date]:
    """Event dates that the landing day's silver rows fall on (late events included)."""
    return (
        lh.scan_or_empty(table_of(SILVER_EVENTS), silver_schema())
        .filter(pl.col("landing_date") == landing_day)
        .select(pl.col("event_date").unique().sort())
        .collect()["event_date"]
        .to_list()
    )


@dataclass(frozen=True)
class Rehomed:
    """Later landing days whose silver rows a day's silver step took over, and their event dates."""

    landing_days: tuple[str, ...] = ()
    event_dates: tuple[dt.date, ...] = ()


def _listed(metadata: Mapping[str, dg.MetadataValue], name: str) -> list[str]:
    """A JSON list of text from materialization metadata ([] when absent, e.g. older runs)."""
    value = metadata.get(name)
    data = value.value if value is not None else None
    return [str(v) for v in data] if isinstance(data, list) else []


def rehomed_since(instance: dg.DagsterInstance, day: str, keys: Iterable[dg.AssetKey]) -> Rehomed:
    """What the silver runs of ``day`` re-homed since the least recent of ``keys`` was last
    materialized for ``day`` (all of them, if one never was).

    Every silver run in that span counts, not only the latest: a rerun finds nothing left to
    move, yet the gold tables may not have caught up with the run that moved the rows.
    """
    latest = [
        instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=[day]), limit=1).records
        for key in keys
    ]
    after = min(r[0].storage_id for r in latest) if latest and all(latest) else None
    days: set[str] = set()
    dates: set[str] = set()
    cursor = None
    while True:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=SILVER_EVENTS, asset_partitions=[day], after_storage_id=after),
            limit=100,
            cursor=cursor,
        )
        for record in result.records:
            meta = record.asset_materialization.metadata if record.asset_materialization else {}
            days.update(_listed(meta, "rehomed_landing_days"))
            dates.update(_listed(meta, "rehomed_event_dates"))
        if not result.has_more:
            break
        cursor = result.cursor
    return Rehomed(tuple(sorted(days)), tuple(sorted(dt.date.fromisoformat(d) for d in dates)))


@dataclass(frozen=True)
class DayScope:
    """What a landing day's gold run recomputes."""

    day: str
    dates: list[dt.date]  # the day's event dates and those of the rows it re-homed
    rehomed_from: tuple[str, ...] = ()  # later landing days whose per-landing-day rows are rewritten too
    users: tuple[str, ...] = ()  # their users before the rewrite: dim_user rows to refresh (or drop)
    eventless: tuple[dt.date, ...] = ()  # re-homed rows' dates that no silver event falls on any more

    @property
    def landing_days(self) -> list[str]:
        return [self.day, *self.rehomed_from]


def day_scope(lh: Lakehouse, day: str, rehomed: Rehomed = Rehomed()) -> DayScope:
    """The scope of ``day``'s gold run; read before any table is rewritten (the users of the
    re-homed days are those of their summaries as they stand)."""
    own = affected_dates(lh, day)
    if not rehomed.landing_days:
        return DayScope(day, own)
    moved = sorted(set(rehomed.event_dates) - set(own))
    still = set(_silver_on(lh, moved).select(pl.col("event_date").unique()).collect()["event_date"]) if moved else set()
    users = (
        lh.scan_or_empty(table_of(USER_LANDING_SUMMARY), USER_LANDING_SUMMARY_SCHEMA)
        .filter(pl.col("landing_date").is_in(rehomed.landing_days))
        .select(pl.col("user_id").unique().sort())
        .collect()["user_id"]
    )
    return DayScope(
        day,
        sorted(set(own) | set(moved)),
        rehomed.landing_days,
        tuple(users.to_list()),
        tuple(d for d in moved if d not in still),
    )


def _silver_on(lh: Lakehouse, dates: list[dt.date]) -> pl.LazyFrame:
    return lh.scan(table_of(SILVER_EVENTS)).filter(pl.col("event_date").is_in(dates))


def _lineage(source: dg.AssetKey = SILVER_EVENTS, **cols: str | list[str]) -> dg.TableColumnLineage:
    return column_lineage(
        {out: [(source, s) for s in ([src] if isinstance(src, str) else src)] for out, src in cols.items()}
    )


def _json_dates(dates: list[dt.date]) -> dg.MetadataValue:
    return dg.MetadataValue.json([d.isoformat() for d in dates])


# -- one table each: what is computed and what its materialization records ---------------------


def _result(
    lh: Lakehouse, key: dg.AssetKey, schema, rows: int, version: int | None, lineage: dg.TableColumnLineage, **extra  # noqa: ANN001, ANN003
) -> dg.MaterializeResult:
    meta = table_metadata(lh.uri(table_of(key)), schema, rows, version, **extra)
    return dg.MaterializeResult(asset_key=key, metadata={**meta, "dagster/column_lineage": lineage})


def _daily_metrics(lh: Lakehouse, engine: ComputeEngine, scope: DayScope) -> dg.MaterializeResult:
    dates = scope.dates
    metrics = engine.daily_metrics(lh, dates)
    table = table_of(DAILY_METRICS)
    version = lh.replace_where(table, metrics, in_dates("event_date", dates) if dates else "false")
    lineage = _lineage(
        event_date="event_date",
        user_segment="user_segment",
        events="event_id",
        unique_users="user_id",
        purchases="event_type",
        purchasing_users=["user_id", "event_type"],
        total_revenue="revenue",
        conversion_rate=["user_id", "event_type"],
    )
    return _result(
        lh,
        DAILY_METRICS,
        gold.DAILY_METRICS_SCHEMA,
        metrics.height,
        version,
        lineage,
        recomputed_dates=_json_dates(dates),
        total_revenue=float(metrics["total_revenue"].sum()) if metrics.height else 0.0,
    )


def _fact_events(lh: Lakehouse, engine: ComputeEngine, scope: DayScope) -> dg.MaterializeResult:
    written = engine.write_fact_events(lh, scope.day)
    for other in scope.rehomed_from:
        engine.write_fact_events(lh, other)
    same = ["event_id", "event_date", "session_id", "event_type", "product_id", "timestamp", "hour"]
    lineage = _lineage(
        **{c: c for c in same + ["session_duration", "revenue", "landing_date"]}, date_key="event_date", user_key="user_id"
    )
    return _result(
        lh,
        FACT_EVENTS,
        written.schema,
        written.rows,
        written.version,
        lineage,
        event_dates=_json_dates(scope.dates),
        rewritten_landing_days=dg.MetadataValue.json(scope.landing_days),
    )


def _user_landing_summary(lh: Lakehouse, engine: ComputeEngine, scope: DayScope) -> dg.MaterializeResult:
    written = engine.write_user_landing_summary(lh, scope.day)
    for other in scope.rehomed_from:
        engine.write_user_landing_summary(lh, other)
    lineage = _lineage(
        user_id="user_id",
        landing_date="landing_date",
        events="event_id",
        first_seen="timestamp",
        last_seen="timestamp",
        last_event_id=["timestamp", "event_id"],
        user_segment=["user_segment", "timestamp", "event_id"],
        email_hash=["email_hash", "timestamp", "event_id"],
        email_seen=["email_hash", "timestamp"],
        email_event_id=["email_hash", "timestamp", "event_id"],
    )
    return _result(
        lh,
        USER_LANDING_SUMMARY,
        written.schema,
        written.rows,
        written.version,
        lineage,
        rewritten_landing_days=dg.MetadataValue.json(scope.landing_days),
    )


def _dim_user(lh: Lakehouse, engine: ComputeEngine, scope: DayScope) -> dg.MaterializeResult:
    users = engine.dim_user(lh, scope.day, users=scope.users)
    table = table_of(DIM_USER)
    version = lh.upsert(table, users, ["user_key"]) if users.height else lh.version(table)
    # A user whose only events were re-homed to another user's record has no summary left.
    gone = sorted(set(scope.users) - set(users["user_id"].to_list()))
    if gone and lh.exists(table):
        keys = gold.user_keys(pl.Series(gone, dtype=pl.String())).to_list()
        lh.delta(table).delete(f"user_key IN ({', '.join(str(k) for k in keys)})")
        version = lh.version(table)
    lineage = _lineage(
        USER_LANDING_SUMMARY,
        user_key="user_id",
        user_id="user_id",
        user_segment=["user_segment", "last_seen", "last_event_id"],
        email_hash=["email_hash", "email_seen", "email_event_id"],
        first_seen="first_seen",
        last_seen="last_seen",
        lifetime_events="events",
    )
    return _result(lh, DIM_USER, users.schema, users.height, version, lineage)


def _dim_date(lh: Lakehouse, engine: ComputeEngine, scope: DayScope) -> dg.MaterializeResult:
    rows = gold.dim_date([d for d in scope.dates if d not in scope.eventless])
    table = table_of(DIM_DATE)
    version = lh.upsert(table, rows, ["date_key"]) if rows.height else lh.version(table)
    if scope.eventless and lh.exists(table):
        keys = gold.dim_date(list(scope.eventless))["date_key"].to_list()
        lh.delta(table).delete(f"date_key IN ({', '.join(str(k) for k in keys)})")
        version = lh.version(table)
    return _result(lh, DIM_DATE, rows.schema, rows.height, version, _lineage(date_key="event_date", date="event_date"))


Build = Callable[[Lakehouse, ComputeEngine, DayScope], dg.MaterializeResult]

# Chains run one after another in one thread, different chains side by side; a table whose
# input table failed in this run is skipped (dim_user reads the summary written before it).
# Roughly balanced: fact_events is the largest write.
CHAINS: list[list[tuple[dg.AssetKey, Build]]] = [
    [(FACT_EVENTS, _fact_events)],
    [(USER_LANDING_SUMMARY, _user_landing_summary), (DIM_USER, _dim_user), (DAILY_METRICS, _daily_metrics), (DIM_DATE, _dim_date)],
]
NEEDS = {DIM_USER: USER_LANDING_SUMMARY}


def build_day(
    lh: Lakehouse,
    engine: ComputeEngine,
    day: str,
    selected: set[dg.AssetKey],
    threads: int = GOLD_THREADS,
    rehomed: Rehomed = Rehomed(),
) -> Iterator[dg.MaterializeResult]:
    """Materialize the ``selected`` gold tables of a landing day, independent chains concurrently;
    ``rehomed``: what the day's silver step took over from later days (see the module doc).

    Every table that was written is reported, even when another failed; then the first error
    is raised, so the step fails and names it.
    """
    scope = day_scope(lh, day, rehomed)

    def run_chain(chain: list[tuple[dg.AssetKey, Build]]) -> tuple[list[dg.MaterializeResult], list[BaseException]]:
        done: list[dg.MaterializeResult] = []
        errors: list[BaseException] = []
        failed: set[dg.AssetKey] = set()
        for key, build in chain:
            if key not in selected:
                continue
            if NEEDS.get(key) in failed:
                failed.add(key)
                continue
            began = time.perf_counter()
            try:
                result = build(lh, engine, scope)
            except Exception as exc:  # noqa: BLE001 - raised by build_day after the finished tables
                failed.add(key)
                errors.append(exc)
                continue
            meta = {**(result.metadata or {}), "run/table_wall_s": round(time.perf_counter() - began, 3)}
            done.append(
                dg.MaterializeResult(
                    asset_key=result.asset_key,
                    metadata=meta,
                    check_results=result.check_results,
                    data_version=result.data_version,
                    tags=result.tags,
                    value=result.value,
                )
            )
        return done, errors

    chains = [c for c in CHAINS if any(k in selected for k, _ in c)]
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(chains))), thread_name_prefix="gold") as pool:
        outcomes = list(pool.map(run_chain, chains))
    for done, _ in outcomes:
        yield from done
    errors = [e for _, errs in outcomes for e in errs]
    if errors:
        raise errors[0]


def build_gold_analytics(partitions: dg.PartitionsDefinition, engine: str) -> dg.Definitions:
    """The gold analytics multi-asset on ``engine``; dim_date is computed on the driver (kind polars)."""

    def spec(key: dg.AssetKey, description: str, deps: list[dg.AssetKey], on_engine: bool = True) -> dg.AssetSpec:
        return dg.AssetSpec(
            key,
            deps=deps,
            description=description,
            group_name=GROUP,
            kinds=engine_kinds(engine, "delta") if on_engine else {"delta", "polars"},
            owners=_OWNERS,
            tags=_ON_ENGINE_TAGS if on_engine else _TAGS,
            skippable=True,
        )

    @dg.multi_asset(
        name="gold_analytics",
        specs=[
            spec(
                DAILY_METRICS,
                "Per event date and user segment: events, unique users, purchases, revenue, conversion rate.",
                [SILVER_EVENTS],
            ),
            spec(
                FACT_EVENTS,
                "Fact table: one row per event, keyed to dim_date (date_key) and dim_user (user_key); "
                "partitioned by event_date, each landing day owning its rows.",
                [SILVER_EVENTS],
            ),
            spec(
                USER_LANDING_SUMMARY,
                "Per user and landing day: event count, first/last seen, the newest segment and non-null "
                "e-mail hash with the (timestamp, event_id) that makes them newest. Each landing day owns its "
                "rows, so dim_user composes a user's summaries instead of re-reading the user's whole history.",
                [SILVER_EVENTS],
            ),
            spec(
                DIM_USER,
                "User dimension (SCD type 1): latest segment, hashed email, first/last seen, lifetime events.",
                [USER_LANDING_SUMMARY],
            ),
            spec(
                DIM_DATE,
                "Date dimension for every event date seen: calendar attributes keyed by date_key.",
                [SILVER_EVENTS],
                on_engine=False,
            ),
        ],
        partitions_def=partitions,
        can_subset=True,
        pool=engine_pool(engine),
    )
    @measured
    def gold_analytics(
        context: dg.AssetExecutionContext, lakehouse: LakehouseResource, engine: EngineResource
    ) -> Iterator[dg.MaterializeResult]:
        day, selected = context.partition_key, set(context.selected_asset_keys)
        rehomed = rehomed_since(context.instance, day, selected)
        yield from build_day(lakehouse.lakehouse(), engine.compute(), day, selected, rehomed=rehomed)

    @dg.asset_check(
        asset=DAILY_METRICS,
        additional_deps=[FACT_EVENTS],
        blocking=True,
        partitions_def=partitions,
        description="Events and revenue per recomputed date equal silver's, in daily_metrics and fact_events.",
    )
    def reconciles_with_silver(context: dg.AssetCheckExecutionContext, lakehouse: LakehouseResource) -> dg.AssetCheckResult:
        lh = lakehouse.lakehouse()
        dates = affected_dates(lh, context.partition_key)
        if not dates:
            return dg.AssetCheckResult(passed=True, metadata={"dates_checked": 0})
        in_dates = pl.col("event_date").is_in(dates)
        return check_result(
            quality.gold_reconciles(
                _silver_on(lh, dates),
                lh.scan(table_of(DAILY_METRICS)).filter(in_dates),
                lh.scan(table_of(FACT_EVENTS)).filter(in_dates),
            )
        )

    return dg.Definitions(assets=[gold_analytics], asset_checks=[reconciles_with_silver])


@dg.definitions
def defs() -> dg.Definitions:
    """Gold analytics under the load's settings: partitions from ``HYBRID_START_DATE``, kinds and pool from ``HYBRID_ENGINE``."""
    settings = current_settings()
    return build_gold_analytics(daily_partitions(settings), settings.engine)
