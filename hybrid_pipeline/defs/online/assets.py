"""Online features: each landing day's freshest feature rows pushed to the online store.

Each user's newest event timestamp (``user_activity``: the newest ``last_seen`` of
``gold/user_landing_summary``) goes online with them, for the on-demand features.

The blocking skew check compares, for a sample of entities, what serving would return (the
online store) with what training would see (the Delta offline store, point in time, at the
materialized timestamp): the stored features, the newest event timestamp, and the on-demand
features computed for a request at that time (serving's code path against Feast's on-demand
view). Any difference means models are served other values than they learned from. (The
streaming record, which serving also counts as an event time, has no offline counterpart and
is left out of the comparison.)
"""

import random
from datetime import datetime

import dagster as dg
import polars as pl

from hybrid_pipeline.dagster_support.keys import (
    FEAST_REGISTRY,
    ONLINE_USER_FEATURES,
    USER_FEATURES,
    USER_FEATURES_VIEW,
    USER_LANDING_SUMMARY,
    table_of,
)
from hybrid_pipeline.dagster_support.loading import current_settings, daily_partitions
from hybrid_pipeline.dagster_support.metadata import check_result, measured
from hybrid_pipeline.dagster_support.resources import FeatureStoreResource, LakehouseResource
from hybrid_pipeline.defs.feature_store.assets import USER_ACTIVITY_VIEW
from hybrid_pipeline.defs.gold_analytics.assets import affected_dates
from hybrid_pipeline.features import on_demand
from hybrid_pipeline.transforms.features import FEATURE_COLUMNS
from hybrid_pipeline.transforms.quality import Outcome

VIEW = "user_features"
ACTIVITY_VIEW = on_demand.ACTIVITY_VIEW
SKEW_SAMPLE = 50
SKEW_AMOUNT = 42.5  # the request amount the skew check scores on-demand features with


def online_rows(lh, landing_day: str) -> pl.DataFrame:  # noqa: ANN001
    """Feature rows a landing day changed: the newest per user goes online."""
    dates = affected_dates(lh, landing_day)
    if not dates or not lh.exists(table_of(USER_FEATURES)):
        return pl.DataFrame()
    return lh.scan(table_of(USER_FEATURES)).filter(pl.col("event_date") >= min(dates)).collect()


def activity_rows(lh, rows: pl.DataFrame) -> pl.DataFrame:  # noqa: ANN001
    """``user_id``, ``last_event_at``: the newest event of every user in ``rows`` over all landing days
    (an event belongs to one landing day, so the maximum is the same whatever day is rewritten)."""
    table = table_of(USER_LANDING_SUMMARY)
    if not rows.height or not lh.exists(table):
        return pl.DataFrame(schema={"user_id": pl.String, "last_event_at": pl.Datetime("us", "UTC")})
    users = rows["user_id"].unique()
    return (lh.scan(table).filter(pl.col("user_id").is_in(users.implode()))
            .group_by("user_id").agg(pl.col("last_seen").max().alias("last_event_at"))
            .filter(pl.col("last_event_at").is_not_null()).sort("user_id").collect())


def compare_online_offline(online: list[dict | None], offline: pl.DataFrame, user_ids: list[str],
                           columns: list[str] | None = None) -> Outcome:
    """Every sampled entity must have identical values of ``columns`` (default: the stored features) online and offline."""
    columns = list(FEATURE_COLUMNS) if columns is None else columns
    by_user = {r["user_id"]: r for r in offline.iter_rows(named=True)}
    mismatches = []
    for uid, served in zip(user_ids, online, strict=True):
        trained = by_user.get(uid)
        if served is None or trained is None:
            mismatches.append({"user_id": uid, "problem": "missing online" if served is None else "missing offline"})
            continue
        diff = [c for c in columns if not _same(served.get(c), trained.get(c))]
        if diff:
            mismatches.append({"user_id": uid, "columns": diff})
    return Outcome(
        not mismatches,
        metadata={"entities_compared": len(user_ids), "mismatches": len(mismatches), "sample": mismatches[:5]},
        description="online equals offline point-in-time values" if not mismatches else f"{len(mismatches)} entities differ",
    )


def _same(a, b) -> bool:  # noqa: ANN001
    if isinstance(a, float) and isinstance(b, float):
        if a != a and b != b:  # both NaN
            return True
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    if isinstance(a, float) and a != a:  # NaN = missing (pandas)
        a = None
    if isinstance(b, float) and b != b:
        b = None
    if isinstance(a, datetime) and isinstance(b, datetime):
        return on_demand.newest_event_at(a) == on_demand.newest_event_at(b)
    return a == b


def _python(value):  # noqa: ANN001, ANN202 - numpy/pandas scalars from a Feast frame as Python values
    if hasattr(value, "to_pydatetime"):
        return None if value != value else value.to_pydatetime()
    return value.item() if hasattr(value, "item") else value


def on_demand_online(reader, users: list[str], request_times: list[datetime]) -> list[dict]:  # noqa: ANN001
    """What serving computes for ``users`` (one request each, at ``request_times``, amount
    :data:`SKEW_AMOUNT`) from the online records, streaming left out (it has no offline side)."""
    spec = on_demand.USER_REQUEST_FEATURES
    stored = {v: reader.get(v, users) for v in spec.inputs}
    rows = [on_demand.serving_row(spec, {"request_time": t, "amount": SKEW_AMOUNT},
                                  {v: stored[v][i] for v in spec.inputs})
            for i, t in enumerate(request_times)]
    out, _ = on_demand.compute_rows(rows, spec)
    return [{**values, "last_event_at": row.get("last_event_at")} for values, row in zip(out, rows)]


def build_online(partitions: dg.PartitionsDefinition) -> dg.Definitions:
    @dg.asset(
        key=ONLINE_USER_FEATURES,
        deps=[USER_FEATURES, USER_FEATURES_VIEW, USER_LANDING_SUMMARY, USER_ACTIVITY_VIEW],
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
        written = activity_written = 0
        if rows.height:
            activity = activity_rows(lh, rows)
            writer = feature_store.writer()
            try:
                written = writer.write_frame(VIEW, rows, "user_id", "event_timestamp", features=FEATURE_COLUMNS)
                if activity.height:  # timestamped by the event itself: a newer record is never replaced
                    activity_written = writer.write_frame(
                        ACTIVITY_VIEW, activity.with_columns(pl.col("last_event_at").alias("event_timestamp")),
                        "user_id", "event_timestamp", features=["last_event_at"])
            finally:
                writer.close()
        newest = rows["event_timestamp"].max() if rows.height else None
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": written,
                "activity_records": activity_written,
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
        description="Training-serving skew: for sampled users, online values (stored features, newest event "
        "time, on-demand features computed by serving's code) equal the offline point-in-time values at the "
        "materialized timestamp (Feast's on-demand view over the Delta store).",
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
        entity_df = newest.filter(pl.col("user_id").is_in(sample)).select("user_id", "event_timestamp").sort("user_id")
        from hybrid_pipeline.features.catalog import feature_refs

        store = feature_store.store()
        reader = feature_store.reader()
        try:
            online = reader.get(VIEW, sample)
            times = entity_df["event_timestamp"].to_list()
            with_on_demand = ACTIVITY_VIEW in {v.name for v in store.list_feature_views()}
            served = on_demand_online(reader, sample, times) if with_on_demand else []
        finally:
            reader.close()
        job = store.get_historical_features(entity_df=entity_df.to_pandas(), features=feature_refs(VIEW))
        offline = job.to_polars() if hasattr(job, "to_polars") else pl.from_pandas(job.to_df())
        outcome = compare_online_offline(online, offline, sample)
        if not with_on_demand:
            return check_result(outcome)
        spec = on_demand.USER_REQUEST_FEATURES
        requests = entity_df.with_columns(pl.col("event_timestamp").alias("request_time"),
                                          pl.lit(SKEW_AMOUNT).alias("amount"))
        frame = store.get_historical_features(entity_df=requests.to_pandas(),
                                              features=[*spec.feature_refs(), f"{ACTIVITY_VIEW}:last_event_at"]).to_df()
        columns = [*spec.outputs, "last_event_at"]
        trained = pl.DataFrame([{"user_id": r["user_id"], **{c: _python(r[c]) for c in columns}}
                                for r in frame.to_dict("records")])
        both = compare_online_offline(served, trained, sample, columns)
        merged = Outcome(outcome.passed and both.passed, metadata={
            **outcome.metadata, "on_demand_mismatches": both.metadata["mismatches"],
            "on_demand_sample": both.metadata["sample"]},
            description=outcome.description if both.passed else f"on-demand: {both.description}")
        return check_result(merged)

    return dg.Definitions(assets=[online_user_features], asset_checks=[online_matches_offline])


@dg.definitions
def defs() -> dg.Definitions:
    """Online features under the load's settings (the daily partitions start at ``HYBRID_START_DATE``)."""
    settings = current_settings()
    return build_online(daily_partitions(settings))
