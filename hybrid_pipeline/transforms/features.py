"""Entity features and labels for the AI branch, from silver events.

``user_features`` has one row per user per day "as of the end of that day" (the row's
``event_timestamp`` is 23:59:59.999999 UTC), for every day from the user's first event until
30 days after the last one, so windowed values decay on quiet days instead of going stale.
``user_labels`` samples (user, timestamp) pairs and says whether the user purchases in the
following 7 days; only days whose 7-day horizon is fully observed are labelled.

A feature row's ``created_timestamp`` (:data:`CREATED_TIMESTAMP`) is when its data became known:
the end of the newest landing day among the user's events up to the row's day, and never before
the end of the row's own day (``max(event_date, newest landing_date)`` at 23:59:59.999999 UTC,
computed in :func:`hybrid_pipeline.engines.shared.user_features`). It depends on silver alone,
not on when a run happens, so reruns and backfills write the same value; a late event landing
on day D+3 dates every row it rewrote at the end of D+3. As-known-at retrieval
(:mod:`hybrid_pipeline.ml.training_set`) filters on it.
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta

import polars as pl

from hybrid_pipeline.lakehouse import catalog

WINDOWS = (1, 7, 30)
HORIZON_DAYS = 30  # rows continue this long after a user's last event
LABEL_DAYS = 7
SEQUENCE_LENGTH = 5
FEATURE_COLUMNS = [
    "total_events",
    *[f"events_{w}d" for w in WINDOWS],
    *[f"revenue_{w}d" for w in WINDOWS],
    "purchases_30d",
    "add_to_carts_7d",
    "avg_session_duration",
    "days_since_last_purchase",
    "recent_event_types",
    "user_segment",
]
CREATED_TIMESTAMP = "created_timestamp"
FEATURES_SCHEMA = catalog.GOLD_USER_FEATURES.schema
LABELS_SCHEMA = catalog.GOLD_USER_LABELS.schema


def _sampled(user_id: str, day: date, rate: float, seed: int) -> bool:
    digest = hashlib.blake2b(f"{seed}:{user_id}:{day.isoformat()}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


def user_labels(
    features: pl.DataFrame, silver: pl.LazyFrame, last_observed: date, sample_rate: float = 0.2, seed: int = 0
) -> pl.DataFrame:
    """Labels for sampled user-days whose next 7 days are fully observed (day + 7 <= ``last_observed``).

    Sampling is a hash of (seed, user, day): the same pairs are drawn on every rerun.
    """
    candidates = features.filter(pl.col("event_date") + pl.duration(days=LABEL_DAYS) <= pl.lit(last_observed)).select(
        "user_id", "event_date", "event_timestamp"
    )
    if candidates.height == 0:
        return pl.DataFrame(schema=LABELS_SCHEMA)
    keep = [
        _sampled(u, d, sample_rate, seed) for u, d in zip(candidates["user_id"].to_list(), candidates["event_date"].to_list(), strict=True)
    ]
    sampled = candidates.filter(pl.Series(keep))
    purchases = (
        silver.filter(pl.col("event_type") == "purchase")
        .select("user_id", pl.col("event_date").alias("purchase_date"))
        .unique()
        .join(sampled.lazy().select("user_id").unique(), on="user_id", how="semi")
        .collect()
    )
    hits = (
        sampled.join(purchases, on="user_id", how="inner")
        .filter(
            (pl.col("purchase_date") > pl.col("event_date"))
            & (pl.col("purchase_date") <= pl.col("event_date") + pl.duration(days=LABEL_DAYS))
        )
        .select("user_id", "event_date")
        .unique()
        .with_columns(pl.lit(1, pl.Int8).alias("purchased_next_7d"))
    )
    labels = sampled.join(hits, on=["user_id", "event_date"], how="left").with_columns(pl.col("purchased_next_7d").fill_null(0))
    return labels.cast(LABELS_SCHEMA).select(list(LABELS_SCHEMA)).sort("user_id", "event_date")


def feature_window(affected: list[date], last_event_date: date) -> tuple[date, date]:
    """Days whose feature rows a landing day can change: from its earliest event date on."""
    return min(affected), max(last_event_date, max(affected))


def history_start(start: date) -> date:
    return start - timedelta(days=max(WINDOWS) + HORIZON_DAYS)
