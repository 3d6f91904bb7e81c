"""Gold features (AI branch): entity-keyed feature rows and training labels, from silver.

A landing day can change feature rows from its earliest event date to the newest day, so
each run rewrites exactly that date range (late events included, and the event dates of rows
its silver step took back from later landing days: ``defs.gold_analytics.assets.rehomed_since``);
earlier rows stay. The feature rows are computed and written by the configured compute engine
(:class:`~hybrid_pipeline.dagster_support.engine.EngineResource`, ``HYBRID_ENGINE``).
"""

from datetime import date, timedelta

import dagster as dg
import polars as pl

from hybrid_pipeline.dagster_support.engine import ENGINE_TAG, EngineResource, engine_kinds, engine_pool
from hybrid_pipeline.dagster_support.keys import SILVER_EVENTS, USER_FEATURES, USER_LABELS, table_of
from hybrid_pipeline.dagster_support.loading import current_settings, daily_partitions
from hybrid_pipeline.dagster_support.metadata import column_lineage, measured, table_metadata
from hybrid_pipeline.dagster_support.resources import LakehouseResource
from hybrid_pipeline.defs.gold_analytics.assets import affected_dates, rehomed_since
from hybrid_pipeline.lakehouse import Lakehouse, catalog
from hybrid_pipeline.transforms import features
from hybrid_pipeline.transforms.contract import silver_schema

_SPEC = dict(group_name="gold_features", owners=["team:ml-platform"], tags={"layer": "gold"}, kinds={"delta", "polars"})


def _last_event_date(silver: pl.LazyFrame):  # noqa: ANN202
    return silver.select(pl.col("event_date").max()).collect().item()


def _dates(context: dg.AssetExecutionContext, lh: Lakehouse, key: dg.AssetKey) -> list[date]:
    """Event dates whose rows the landing day's run of ``key`` recomputes."""
    day = context.partition_key
    rehomed = rehomed_since(context.instance, day, [key])
    return sorted(set(affected_dates(lh, day)) | set(rehomed.event_dates))


def build_gold_features(partitions: dg.PartitionsDefinition, engine: str) -> dg.Definitions:
    """user_features computed by ``engine`` (its kind and pool follow it) and user_labels in process."""

    @dg.asset(
        key=USER_FEATURES,
        deps=[SILVER_EVENTS],
        partitions_def=partitions,
        description="One row per user per day as of the end of that day: lifetime and 1/7/30-day events and revenue, "
        "purchases, carts, average session duration, days since last purchase, recent event types, segment; "
        "created_timestamp: the end of the newest landing day among its events (what as-known-at retrieval "
        "filters on). Z-ordered by (user_id, event_date).",
        **{**_SPEC, "tags": {**_SPEC["tags"], **ENGINE_TAG}, "kinds": engine_kinds(engine, "delta")},
        pool=engine_pool(engine),
    )
    @measured
    def user_features(
        context: dg.AssetExecutionContext, lakehouse: LakehouseResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        lh = lakehouse.lakehouse()
        silver = lh.scan_or_empty(table_of(SILVER_EVENTS), silver_schema())
        dates = _dates(context, lh, USER_FEATURES)
        table = table_of(USER_FEATURES)
        if not dates:
            return dg.MaterializeResult(metadata=table_metadata(lh.uri(table), features.FEATURES_SCHEMA, 0, lh.version(table)))
        start, end = features.feature_window(dates, _last_event_date(silver))
        written = engine.compute().write_user_features(lh, start, end)
        lh.optimize(table, list(catalog.GOLD_USER_FEATURES.zorder_by))
        return dg.MaterializeResult(
            metadata=table_metadata(
                lh.uri(table),
                features.FEATURES_SCHEMA,
                written.rows,
                written.version,
                recomputed_from=start.isoformat(),
                recomputed_to=end.isoformat(),
                users=written.figures["users"],
                **{
                    "dagster/column_lineage": column_lineage(
                        {
                            "user_id": [(SILVER_EVENTS, "user_id")],
                            "event_date": [(SILVER_EVENTS, "event_date")],
                            # when the row became known: the newest landing day among its events
                            "created_timestamp": [(SILVER_EVENTS, "landing_date"), (SILVER_EVENTS, "event_date")],
                            **{c: [(SILVER_EVENTS, "event_id")] for c in ("total_events", "events_1d", "events_7d", "events_30d")},
                            **{c: [(SILVER_EVENTS, "revenue")] for c in ("revenue_1d", "revenue_7d", "revenue_30d")},
                            "purchases_30d": [(SILVER_EVENTS, "event_type")],
                            "add_to_carts_7d": [(SILVER_EVENTS, "event_type")],
                            "avg_session_duration": [(SILVER_EVENTS, "session_duration")],
                            "days_since_last_purchase": [(SILVER_EVENTS, "event_type"), (SILVER_EVENTS, "event_date")],
                            "recent_event_types": [(SILVER_EVENTS, "event_type"), (SILVER_EVENTS, "timestamp")],
                            "user_segment": [(SILVER_EVENTS, "user_segment")],
                        }
                    )
                },
            )
        )

    @dg.asset(
        key=USER_LABELS,
        deps=[USER_FEATURES, SILVER_EVENTS],
        partitions_def=partitions,
        description="Training entities: sampled (user, end-of-day timestamp) pairs and whether the user purchases in "
        "the next 7 days. Only days whose 7-day horizon is fully observed are labelled.",
        **_SPEC,
    )
    @measured
    def user_labels(context: dg.AssetExecutionContext, lakehouse: LakehouseResource) -> dg.MaterializeResult:
        lh = lakehouse.lakehouse()
        silver = lh.scan_or_empty(table_of(SILVER_EVENTS), silver_schema())
        dates = _dates(context, lh, USER_LABELS)
        table = table_of(USER_LABELS)
        if not dates:
            return dg.MaterializeResult(metadata=table_metadata(lh.uri(table), features.LABELS_SCHEMA, 0, lh.version(table)))
        last = _last_event_date(silver)
        start = min(dates) - timedelta(days=features.LABEL_DAYS)
        feats = lh.scan(table_of(USER_FEATURES)).filter(pl.col("event_date") >= start).select(
            "user_id", "event_date", "event_timestamp"
        ).collect()
        labels = features.user_labels(feats, silver, last)
        version = lh.replace_where(table, labels, f"event_date >= '{start.isoformat()}'")
        rate = float(labels["purchased_next_7d"].mean()) if labels.height else 0.0
        return dg.MaterializeResult(
            metadata=table_metadata(
                lh.uri(table), features.LABELS_SCHEMA, labels.height, version, positive_rate=round(rate, 4),
                labelled_until=(last - timedelta(days=features.LABEL_DAYS)).isoformat(),
            )
        )

    return dg.Definitions(assets=[user_features, user_labels])


@dg.definitions
def defs() -> dg.Definitions:
    """Gold features under the load's settings: partitions from ``HYBRID_START_DATE``, kinds and pool from ``HYBRID_ENGINE``."""
    settings = current_settings()
    return build_gold_features(daily_partitions(settings), settings.engine)
