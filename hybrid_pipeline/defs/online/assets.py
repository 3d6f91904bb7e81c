"""Online features: each landing day's freshest feature rows pushed to the online store.

The blocking skew check compares, for a sample of entities, what serving would return (the
online store) with what training would see (the Delta offline store, point in time, at the
materialized timestamp). Any difference means models are served other values than they
learned from.
"""

import random

import dagster as dg
import polars as pl

from hybrid_pipeline.dagster_support.keys import FEAST_REGISTRY, ONLINE_USER_FEATURES, USER_FEATURES, USER_FEATURES_VIEW, table_of
from hybrid_pipeline.dagster_support.loading import current_settings, daily_partitions
from hybrid_pipeline.dagster_support.metadata import check_result, measured
from hybrid_pipeline.dagster_support.resources import FeatureStoreResource, LakehouseResource
from hybrid_pipeline.defs.gold_analytics.assets import affected_dates
from hybrid_pipeline.transforms.features import FEATURE_COLUMNS
from hybrid_pipeline.transforms.quality import Outcome

VIEW = "user_features"
SKEW_SAMPLE = 50


def online_rows(lh, landing_day: str) -> pl.DataFrame:  # noqa: ANN001
    """Feature rows a landing day changed: the newest per user goes online."""
    dates = affected_dates(lh, landing_day)
    if not dates or not lh.exists(table_of(USER_FEATURES)):
        return pl.DataFrame()
    return lh.scan(table_of(USER_FEATURES)).filter(pl.col("event_date") >= min(dates)).collect()


def compare_online_offline(online: list[dict | None], offline: pl.DataFrame, user_ids: list[str]) -> Outcome:
    """Every sampled entity must have identical feature values online and offline."""
    by_user = {r["user_id"]: r for r in offline.iter_rows(named=True)}
    mismatches = []
    for uid, served in zip(user_ids, online, strict=True):
        trained = by_user.get(uid)
        if served is None or trained is None:
            mismatches.append({"user_id": uid, "problem": "missing online" if served is None else "missing offline"})
            continue
        diff = [c for c in FEATURE_COLUMNS if not _same(served.get(c), trained.get(c))]
        if diff:
            mismatches.append({"user_id": uid, "columns": diff})
    return Outcome(
        not mismatches,
        metadata={"entities_compared": len(user_ids), "mismatches": len(mismatches), "sample": mismatches[:5]},
        description="online equals offline point-in-time values" if not mismatches else f"{len(mismatches)} entities differ",
    )


def _same(a, b) -> bool:  # noqa: ANN001
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    return a == b


def build_online(partitions: dg.PartitionsDefinition) -> dg.Definitions:
    @dg.asset(
        key=ONLINE_USER_FEATURES,
        deps=[USER_FEATURES, USER_FEATURES_VIEW],
        partitions_def=partitions,
        group_name="features",
        kinds={"feast", "sqlite", "redis"},
        owners=["team:ml-platform"],
        description="The newest user_features row per user, packed one record per entity in the online store "
        "(SQLite by default, Redis with HYBRID_ONLINE_STORE=redis://...).",
    )
    @measured
    def online_user_features(
        context: dg.AssetExecutionContext, lakehouse: LakehouseResource, feature_store: FeatureStoreResource
    ) -> dg.MaterializeResult:
        lh = lakehouse.lakehouse()
        rows = online_rows(lh, context.partition_key)
        written = 0
        if rows.height:
            writer = feature_store.writer()
            try:
                written = writer.write_frame(VIEW, rows, "user_id", "event_timestamp", features=FEATURE_COLUMNS)
            finally:
                writer.close()
        newest = rows["event_timestamp"].max() if rows.height else None
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": written,
                "entities": rows["user_id"].n_unique() if rows.height else 0,
                "materialized_until": str(newest) if newest else "",
                "online_store": feature_store.online_url(),
            }
        )

    @dg.asset_check(
        asset=ONLINE_USER_FEATURES,
        additional_deps=[FEAST_REGISTRY],
        blocking=True,
        partitions_def=partitions,
        description="Training-serving skew: for sampled users, online values equal the offline point-in-time "
        "values at the materialized timestamp.",
    )
    def online_matches_offline(
        context: dg.AssetCheckExecutionContext, lakehouse: LakehouseResource, feature_store: FeatureStoreResource
    ) -> dg.AssetCheckResult:
        lh = lakehouse.lakehouse()
        rows = online_rows(lh, context.partition_key)
        if rows.height == 0:
            return dg.AssetCheckResult(passed=True, metadata={"entities_compared": 0})
        newest = rows.sort("event_timestamp").group_by("user_id").last()
        users = sorted(newest["user_id"].to_list())
        sample = sorted(random.Random(context.partition_key).sample(users, min(SKEW_SAMPLE, len(users))))
        reader = feature_store.reader()
        try:
            online = reader.get(VIEW, sample)
        finally:
            reader.close()
        entity_df = newest.filter(pl.col("user_id").is_in(sample)).select("user_id", "event_timestamp")
        from hybrid_pipeline.features.catalog import feature_refs

        store = feature_store.store()
        job = store.get_historical_features(entity_df=entity_df.to_pandas(), features=feature_refs(VIEW))
        offline = job.to_polars() if hasattr(job, "to_polars") else pl.from_pandas(job.to_df())
        return check_result(compare_online_offline(online, offline, sample))

    return dg.Definitions(assets=[online_user_features], asset_checks=[online_matches_offline])


@dg.definitions
def defs() -> dg.Definitions:
    """Online features under the load's settings (the daily partitions start at ``HYBRID_START_DATE``)."""
    settings = current_settings()
    return build_online(daily_partitions(settings))
