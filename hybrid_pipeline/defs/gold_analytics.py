"""Gold analytics: daily metrics and the star schema (fact_events, dim_user, dim_date).

A landing day's run recomputes every event date that day's silver rows touch, so late
events are counted on their true date and earlier dates are corrected in place. The work runs
on the configured compute engine (:class:`~hybrid_pipeline.defs.engine.EngineResource`,
``HYBRID_ENGINE``); dim_date is a handful of rows computed here.
"""


import datetime as dt

import dagster as dg
import polars as pl

from hybrid_pipeline.defs.engine import ENGINE_TAG, EngineResource
from hybrid_pipeline.defs.keys import DAILY_METRICS, DIM_DATE, DIM_USER, FACT_EVENTS, SILVER_EVENTS, table_of
from hybrid_pipeline.defs.metadata import check_result, column_lineage, measured, table_metadata
from hybrid_pipeline.defs.resources import LakehouseResource
from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.transforms import gold, quality
from hybrid_pipeline.transforms.contract import silver_schema

_SPEC = dict(group_name="gold_analytics", owners=["team:analytics"], tags={"layer": "gold"})
# Assets whose work runs on the compute engine (pool and kinds follow the engine: defs/engine.py).
_ON_ENGINE = dict(group_name="gold_analytics", owners=["team:analytics"], tags={"layer": "gold", **ENGINE_TAG})


def affected_dates(lh: Lakehouse, landing_day: str) -> list[dt.date]:
    """Event dates that the landing day's silver rows fall on (late events included)."""
    return (
        lh.scan_or_empty(table_of(SILVER_EVENTS), silver_schema())
        .filter(pl.col("landing_date") == landing_day)
        .select(pl.col("event_date").unique().sort())
        .collect()["event_date"]
        .to_list()
    )


def _silver_on(lh: Lakehouse, dates: list[dt.date]) -> pl.LazyFrame:
    return lh.scan(table_of(SILVER_EVENTS)).filter(pl.col("event_date").is_in(dates))


def _in_dates(column: str, dates: list[dt.date]) -> str:
    return f"{column} IN ({', '.join(repr(d.isoformat()) for d in dates)})"


def _lineage(**cols: str | list[str]) -> dg.TableColumnLineage:
    return column_lineage(
        {out: [(SILVER_EVENTS, s) for s in ([src] if isinstance(src, str) else src)] for out, src in cols.items()}
    )


def build_gold_analytics(partitions: dg.PartitionsDefinition) -> dg.Definitions:
    @dg.asset(
        key=DAILY_METRICS,
        deps=[SILVER_EVENTS],
        partitions_def=partitions,
        kinds={"delta", "polars"},
        description="Per event date and user segment: events, unique users, purchases, revenue, conversion rate.",
        **_ON_ENGINE,
    )
    @measured
    def daily_metrics(
        context: dg.AssetExecutionContext, lakehouse: LakehouseResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        lh = lakehouse.lakehouse()
        dates = affected_dates(lh, context.partition_key)
        metrics = engine.compute().daily_metrics(lh, dates)
        table = table_of(DAILY_METRICS)
        version = lh.replace_where(table, metrics, _in_dates("event_date", dates) if dates else "false")
        return dg.MaterializeResult(
            metadata=table_metadata(
                lh.uri(table),
                gold.DAILY_METRICS_SCHEMA,
                metrics.height,
                version,
                recomputed_dates=dg.MetadataValue.json([d.isoformat() for d in dates]),
                total_revenue=float(metrics["total_revenue"].sum()) if metrics.height else 0.0,
                **{
                    "dagster/column_lineage": _lineage(
                        event_date="event_date",
                        user_segment="user_segment",
                        events="event_id",
                        unique_users="user_id",
                        purchases="event_type",
                        purchasing_users=["user_id", "event_type"],
                        total_revenue="revenue",
                        conversion_rate=["user_id", "event_type"],
                    )
                },
            )
        )

    @dg.asset(
        key=FACT_EVENTS,
        deps=[SILVER_EVENTS],
        partitions_def=partitions,
        kinds={"delta", "polars"},
        description="Fact table: one row per event, keyed to dim_date (date_key) and dim_user (user_key); "
        "partitioned by event_date, each landing day owning its rows.",
        **_ON_ENGINE,
    )
    @measured
    def fact_events(
        context: dg.AssetExecutionContext, lakehouse: LakehouseResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        lh = lakehouse.lakehouse()
        day = context.partition_key
        dates = affected_dates(lh, day)
        written = engine.compute().write_fact_events(lh, day)
        table = table_of(FACT_EVENTS)
        return dg.MaterializeResult(
            metadata=table_metadata(
                lh.uri(table),
                written.schema,
                written.rows,
                written.version,
                event_dates=dg.MetadataValue.json([d.isoformat() for d in dates]),
                **{
                    "dagster/column_lineage": _lineage(
                        event_id="event_id",
                        event_date="event_date",
                        date_key="event_date",
                        user_key="user_id",
                        session_id="session_id",
                        event_type="event_type",
                        product_id="product_id",
                        timestamp="timestamp",
                        hour="hour",
                        session_duration="session_duration",
                        revenue="revenue",
                        landing_date="landing_date",
                    )
                },
            )
        )

    @dg.asset(
        key=DIM_USER,
        deps=[SILVER_EVENTS],
        partitions_def=partitions,
        kinds={"delta", "polars"},
        description="User dimension (SCD type 1): latest segment, hashed email, first/last seen, lifetime events.",
        **_ON_ENGINE,
    )
    @measured
    def dim_user(
        context: dg.AssetExecutionContext, lakehouse: LakehouseResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        lh = lakehouse.lakehouse()
        users = engine.compute().dim_user(lh, context.partition_key)
        table = table_of(DIM_USER)
        version = lh.upsert(table, users, ["user_key"]) if users.height else lh.version(table)
        return dg.MaterializeResult(
            metadata=table_metadata(
                lh.uri(table),
                users.schema,
                users.height,
                version,
                **{
                    "dagster/column_lineage": _lineage(
                        user_key="user_id",
                        user_id="user_id",
                        user_segment="user_segment",
                        email_hash="email_hash",
                        first_seen="timestamp",
                        last_seen="timestamp",
                        lifetime_events="event_id",
                    )
                },
            )
        )

    @dg.asset(
        key=DIM_DATE,
        deps=[SILVER_EVENTS],
        partitions_def=partitions,
        kinds={"delta", "polars"},
        description="Date dimension for every event date seen: calendar attributes keyed by date_key.",
        **_SPEC,
    )
    @measured
    def dim_date(context: dg.AssetExecutionContext, lakehouse: LakehouseResource) -> dg.MaterializeResult:
        lh = lakehouse.lakehouse()
        dates = gold.dim_date(affected_dates(lh, context.partition_key))
        table = table_of(DIM_DATE)
        version = lh.upsert(table, dates, ["date_key"]) if dates.height else lh.version(table)
        return dg.MaterializeResult(
            metadata=table_metadata(
                lh.uri(table),
                dates.schema,
                dates.height,
                version,
                **{"dagster/column_lineage": _lineage(date_key="event_date", date="event_date")},
            )
        )

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

    return dg.Definitions(assets=[daily_metrics, fact_events, dim_user, dim_date], asset_checks=[reconciles_with_silver])
