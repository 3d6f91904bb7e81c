"""Brute-force references for the shared star-schema transforms: plain polars, whole history at
once, written for obviousness rather than speed (the shape the definitions had before they were
shared between engines and made incremental)."""

from __future__ import annotations

import polars as pl

from hybrid_pipeline.transforms.gold import date_key, user_keys


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
