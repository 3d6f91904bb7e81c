"""A small purchase-model lakehouse built straight from the generator and the feature transforms (no Dagster)."""

from __future__ import annotations

from datetime import date

import polars as pl

from hybrid_pipeline.engines.shared import run_on
from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.ml.training_set import FEATURES_TABLE, LABELS_TABLE
from hybrid_pipeline.sources.generator import EventGenerator, GeneratorConfig
from hybrid_pipeline.transforms import features as ft

START = date(2024, 1, 1)


def silver_events(days: int, events_per_day: int = 1500, seed: int = 11) -> pl.DataFrame:
    """Clean generated events, typed as silver holds them."""
    gen = EventGenerator(GeneratorConfig(days=days, events_per_day=events_per_day, seed=seed, dirty_rate=0.0,
                                         start_date=START))
    # each day's events landed that day (silver's landing_date dates the feature rows they make)
    events = pl.concat([d.events.with_columns(pl.lit(d.day.isoformat()).alias("landing_date")) for d in gen.days()])
    return events.with_columns(pl.col("timestamp").str.to_datetime(time_zone="UTC")).with_columns(
        pl.col("timestamp").dt.date().alias("event_date"))


def land(lh: Lakehouse, silver: pl.DataFrame, through: date) -> None:
    """Write features for every day up to ``through`` and the labels they allow (one commit each)."""
    seen = silver.filter(pl.col("event_date") <= through).lazy()
    first = silver["event_date"].min()
    feats = run_on("polars", "user_features", seen, start=first, end=through)
    lh.replace_where(FEATURES_TABLE, feats, "true")
    labels = ft.user_labels(feats, seen, through)
    lh.replace_where(LABELS_TABLE, labels, "true")
