"""A small lakehouse with the feature tables the on-demand view reads, its generated Feast repo,
and the online store loaded as ``features/online_user_features`` loads it (no Dagster)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from hybrid_pipeline.defs.online.assets import activity_rows
from hybrid_pipeline.features import catalog
from hybrid_pipeline.features.delta_offline_store import DeltaOfflineStore
from hybrid_pipeline.features.repo import apply_feature_repo
from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.ml.training_set import FEATURES_TABLE, feature_services
from hybrid_pipeline.online import OnlineWriter
from hybrid_pipeline.transforms.features import FEATURE_COLUMNS
from hybrid_pipeline_tests.ml.purchase_data import START, land, silver_events

DAYS = 10


@dataclass
class OnDemandWorld:
    lakehouse: Lakehouse
    repo: Path
    online_url: str
    users: list[str]
    data_end: datetime  # newest event or feature timestamp: requests after it see the online records' values

    def store(self):  # noqa: ANN201 - feast.FeatureStore
        from feast import FeatureStore

        return FeatureStore(repo_path=str(self.repo))


def landing_summary(events: pl.DataFrame) -> pl.DataFrame:
    """What gold/user_landing_summary holds for the columns the view reads (landing day = event day)."""
    return (events.group_by("user_id", "event_date")
            .agg(pl.len().alias("events"), pl.col("timestamp").min().alias("first_seen"),
                 pl.col("timestamp").max().alias("last_seen"))
            .with_columns(pl.col("event_date").cast(pl.String).alias("landing_date"),
                          pl.col("first_seen").dt.cast_time_unit("us"), pl.col("last_seen").dt.cast_time_unit("us"))
            .drop("event_date").sort("user_id", "landing_date"))


def build_world(root: Path, events_per_day: int = 300) -> OnDemandWorld:
    lh = Lakehouse(str(root / "lakehouse"))
    events = silver_events(DAYS, events_per_day=events_per_day)
    if "landing_date" not in events.columns:  # silver's landing day: here each event lands on its own day
        events = events.with_columns(pl.col("event_date").cast(pl.String).alias("landing_date"))
    land(lh, events, START + timedelta(days=DAYS - 1))
    lh.replace_where(catalog.ACTIVITY_TABLE, landing_summary(events), "true")
    repo = root / "feature_repo"
    catalog.write_repo(repo, "sqlite", lh.uri(FEATURES_TABLE), lh.uri(catalog.ACTIVITY_TABLE),
                       feature_services=feature_services())
    store = apply_feature_repo(repo)
    for view in (catalog.USER_FEATURES_VIEW, catalog.ACTIVITY_VIEW):
        DeltaOfflineStore.build_key_index(store.config, store.get_feature_view(view), rebuild=False)
    features = lh.read(FEATURES_TABLE)
    online_url = catalog.online_url("sqlite", str(repo))
    with OnlineWriter.from_url(online_url, catalog.PROJECT) as writer:
        writer.write_frame(catalog.USER_FEATURES_VIEW, features, "user_id", "event_timestamp", features=FEATURE_COLUMNS)
        activity = activity_rows(lh, features)
        writer.write_frame(catalog.ACTIVITY_VIEW, activity.with_columns(pl.col("last_event_at").alias("ts")),
                           "user_id", "ts", features=["last_event_at"])
    data_end = max(features["event_timestamp"].max(), events["timestamp"].max())
    return OnDemandWorld(lh, repo, online_url, sorted(features["user_id"].unique().to_list()), data_end)
