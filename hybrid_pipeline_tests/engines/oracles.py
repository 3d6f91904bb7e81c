"""Plain-polars references for the transforms shared by both engines (``engines.shared``):
whole history at once, native polars idioms (``rolling_sum_by``, ``date_ranges``, sort + last),
written for obviousness rather than speed. They are the shape the definitions had before they
were shared between engines; the equivalence tests hold the shared ones to them.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from hybrid_pipeline.transforms.features import FEATURES_SCHEMA, HORIZON_DAYS, SEQUENCE_LENGTH, WINDOWS
from hybrid_pipeline.transforms.gold import DAILY_METRICS_SCHEMA, date_key, user_keys


def fact_events(silver: pl.DataFrame) -> pl.DataFrame:
    return silver.select(
        "event_id",
        "event_date",
        date_key("event_date"),
        user_keys(silver["user_id"]).alias("user_key"),
        "session_id",
        "event_type",
        "product_id",
        "timestamp",
        "hour",
        "session_duration",
        pl.col("revenue").fill_null(0.0).alias("revenue"),
        "landing_date",
    ).sort("event_date", "timestamp", "event_id")


def dim_user(silver: pl.DataFrame) -> pl.DataFrame:
    """Every user over all of its events: sort by (timestamp, event_id), take the last values."""
    df = (
        silver.sort("timestamp", "event_id")
        .group_by("user_id")
        .agg(
            pl.col("user_segment").last().alias("user_segment"),
            pl.col("email_hash").drop_nulls().last().alias("email_hash"),
            pl.col("timestamp").min().alias("first_seen"),
            pl.col("timestamp").max().alias("last_seen"),
            pl.len().cast(pl.Int64).alias("lifetime_events"),
        )
        .sort("user_id")
    )
    return df.select(user_keys(df["user_id"]).alias("user_key"), pl.all())


def daily_metrics(silver: pl.LazyFrame) -> pl.DataFrame:
    """Events, users, revenue and conversion per event date and user segment."""
    is_purchase = pl.col("event_type") == "purchase"
    return (
        silver.group_by("event_date", "user_segment")
        .agg(
            pl.len().cast(pl.Int64).alias("events"),
            pl.col("user_id").n_unique().cast(pl.Int64).alias("unique_users"),
            is_purchase.sum().cast(pl.Int64).alias("purchases"),
            pl.col("user_id").filter(is_purchase).n_unique().cast(pl.Int64).alias("purchasing_users"),
            # Summed in integer cents: exact, so reruns and engines agree to the last digit.
            (pl.col("revenue") * 100).round().cast(pl.Int64).sum().alias("_revenue_cents"),
        )
        .with_columns(
            (pl.col("_revenue_cents") / 100).alias("total_revenue"),
            (pl.col("purchasing_users") / pl.col("unique_users")).alias("conversion_rate"),
        )
        .sort("event_date", "user_segment")
        .collect()
        .cast(DAILY_METRICS_SCHEMA)
        .select(list(DAILY_METRICS_SCHEMA))
    )


def end_of_day(col: str = "event_date") -> pl.Expr:
    return (pl.col(col).cast(pl.Datetime("us", "UTC")) + pl.duration(days=1) - pl.duration(microseconds=1)).alias(
        "event_timestamp"
    )


def _daily(silver: pl.LazyFrame) -> pl.LazyFrame:
    """Per user and day: counts, revenue (in cents, exact), sessions and the day's last events."""
    return (
        silver.sort("timestamp", "event_id")
        .group_by("user_id", "event_date")
        .agg(
            pl.len().cast(pl.Int64).alias("events"),
            (pl.col("revenue").fill_null(0.0) * 100).round().cast(pl.Int64).sum().alias("revenue_cents"),
            (pl.col("event_type") == "purchase").sum().cast(pl.Int64).alias("purchases"),
            (pl.col("event_type") == "add_to_cart").sum().cast(pl.Int64).alias("add_to_carts"),
            pl.col("session_duration").sum().alias("duration_sum"),
            pl.col("event_type").tail(SEQUENCE_LENGTH).alias("last_types"),
            pl.col("user_segment").last().alias("user_segment"),
            pl.col("landing_date").str.to_date().max().alias("landed"),
        )
    )


def user_features(silver: pl.LazyFrame, start: date, end: date) -> pl.DataFrame:
    """Feature rows for days ``start``..``end`` (inclusive).

    ``silver`` must hold every event of the users concerned up to ``end`` (earlier history
    feeds lifetime totals and days since the last purchase).
    """
    daily = _daily(silver.filter(pl.col("event_date") <= end)).collect()
    if daily.height == 0:
        return pl.DataFrame(schema=FEATURES_SCHEMA)
    spans = daily.group_by("user_id").agg(
        pl.col("event_date").min().alias("first"),
        pl.min_horizontal(pl.col("event_date").max() + pl.duration(days=HORIZON_DAYS - 1), pl.lit(end)).alias("last"),
    )
    grid = (
        spans.with_columns(pl.date_ranges("first", "last", "1d").alias("event_date"))
        .select("user_id", "event_date")
        .explode("event_date")
    )
    frame = grid.join(daily, on=["user_id", "event_date"], how="left").sort("user_id", "event_date")
    zero = ["events", "revenue_cents", "purchases", "add_to_carts", "duration_sum"]
    frame = frame.with_columns(pl.col(c).fill_null(0) for c in zero)
    by_user = dict(by="event_date")
    rolled = frame.with_columns(
        *(pl.col("events").rolling_sum_by(window_size=f"{w}d", **by_user).over("user_id").alias(f"events_{w}d") for w in WINDOWS),
        *(
            (pl.col("revenue_cents").rolling_sum_by(window_size=f"{w}d", **by_user).over("user_id") / 100).alias(f"revenue_{w}d")
            for w in WINDOWS
        ),
        pl.col("purchases").rolling_sum_by(window_size="30d", **by_user).over("user_id").alias("purchases_30d"),
        pl.col("add_to_carts").rolling_sum_by(window_size="7d", **by_user).over("user_id").alias("add_to_carts_7d"),
        pl.col("events").cum_sum().over("user_id").alias("total_events"),
        pl.col("duration_sum").cum_sum().over("user_id").alias("_duration_total"),
        pl.when(pl.col("purchases") > 0).then(pl.col("event_date")).forward_fill().over("user_id").alias("_last_purchase"),
        pl.col("last_types").forward_fill().over("user_id"),
        pl.col("user_segment").forward_fill().over("user_id"),
        # known at the end of the day, or of the newest landing day of the events up to it
        pl.max_horizontal("event_date", pl.col("landed").forward_fill().cum_max().over("user_id")).alias("_known"),
    )
    out = rolled.filter(pl.col("event_date").is_between(start, end)).select(
        "user_id",
        "event_date",
        end_of_day(),
        end_of_day("_known").alias("created_timestamp"),
        "total_events",
        *[f"events_{w}d" for w in WINDOWS],
        *[f"revenue_{w}d" for w in WINDOWS],
        "purchases_30d",
        "add_to_carts_7d",
        (pl.col("_duration_total") / pl.col("total_events")).alias("avg_session_duration"),
        (pl.col("event_date") - pl.col("_last_purchase")).dt.total_days().alias("days_since_last_purchase"),
        pl.col("last_types").list.join(",").alias("recent_event_types"),
        "user_segment",
    )
    return out.cast(FEATURES_SCHEMA).sort("user_id", "event_date")
