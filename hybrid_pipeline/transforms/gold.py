"""Gold analytics helpers shared by both engines: the daily metrics schema, the date
dimension and the stable date and user keys.

The table transforms themselves (daily_metrics, fact_events, dim_user) are written once for
polars and Spark in :mod:`hybrid_pipeline.engines.shared`.
"""

from __future__ import annotations

import hashlib

import polars as pl

from hybrid_pipeline.lakehouse import catalog

DAILY_METRICS_SCHEMA = catalog.GOLD_DAILY_METRICS.schema


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
