"""Gold analytics from silver events: daily metrics, the date dimension and the stable keys.

Each function takes the silver rows of the event dates being (re)computed and returns
complete rows for exactly those dates, so a late event that lands days later simply
triggers a recompute of its true event date. The rest of the star schema (fact_events,
dim_user) is written once for both engines in :mod:`hybrid_pipeline.engines.shared`.
"""

from __future__ import annotations

import hashlib

import polars as pl

DAILY_METRICS_SCHEMA: dict[str, pl.DataType] = {
    "event_date": pl.Date(),
    "user_segment": pl.String(),
    "events": pl.Int64(),
    "unique_users": pl.Int64(),
    "purchases": pl.Int64(),
    "purchasing_users": pl.Int64(),
    "total_revenue": pl.Float64(),
    "conversion_rate": pl.Float64(),
}


def date_key(col: str | pl.Expr) -> pl.Expr:
    """Integer yyyymmdd key for a date column, the usual date-dimension key."""
    c = pl.col(col) if isinstance(col, str) else col
    return (c.dt.year().cast(pl.Int32) * 10_000 + c.dt.month().cast(pl.Int32) * 100 + c.dt.day().cast(pl.Int32)).alias(
        "date_key"
    )


def user_keys(user_ids: pl.Series) -> pl.Series:
    """Stable 63-bit surrogate keys: the same user gets the same key in every run and engine."""
    uniq = user_ids.drop_nulls().unique().to_list()
    mapping = {u: int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "big") >> 1 for u in uniq}
    return user_ids.replace_strict(mapping, default=None, return_dtype=pl.Int64)


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


def dim_date(dates: list) -> pl.DataFrame:
    d = pl.DataFrame({"date": dates}, schema={"date": pl.Date}).unique().sort("date")
    return d.select(
        date_key("date"),
        "date",
        pl.col("date").dt.year().cast(pl.Int32).alias("year"),
        pl.col("date").dt.quarter().cast(pl.Int8).alias("quarter"),
        pl.col("date").dt.month().cast(pl.Int8).alias("month"),
        pl.col("date").dt.day().cast(pl.Int8).alias("day"),
        pl.col("date").dt.weekday().cast(pl.Int8).alias("day_of_week"),
        pl.col("date").dt.week().cast(pl.Int8).alias("iso_week"),
        (pl.col("date").dt.weekday() >= 6).alias("is_weekend"),
    )
