"""Asset keys, named once: ``<layer>/<table>`` mirrors the lakehouse path."""

import dagster as dg

BRONZE_EVENTS = dg.AssetKey(["bronze", "events"])
BRONZE_LANDED_FILES = dg.AssetKey(["bronze", "landed_files"])
SILVER_EVENTS = dg.AssetKey(["silver", "events"])
SILVER_QUARANTINE = dg.AssetKey(["silver", "events_quarantine"])
SILVER_DUPLICATES = dg.AssetKey(["silver", "events_duplicates"])
DAILY_METRICS = dg.AssetKey(["gold", "daily_metrics"])
FACT_EVENTS = dg.AssetKey(["gold", "fact_events"])
DIM_USER = dg.AssetKey(["gold", "dim_user"])
USER_LANDING_SUMMARY = dg.AssetKey(["gold", "user_landing_summary"])
DIM_DATE = dg.AssetKey(["gold", "dim_date"])


def table_of(key: dg.AssetKey) -> str:
    """The lakehouse table an asset key names (``silver/events``)."""
    return "/".join(key.path)

BRONZE_MEDIA_FILES = dg.AssetKey(["bronze", "media_files"])
BRONZE_MEDIA_LANDED = dg.AssetKey(["bronze", "media_landed"])
BRONZE_MEDIA_LABELS = dg.AssetKey(["bronze", "media_labels"])
SILVER_MEDIA_METADATA = dg.AssetKey(["silver", "media_metadata"])
SILVER_DOCUMENT_TEXT = dg.AssetKey(["silver", "document_text"])
SILVER_MEDIA_QUARANTINE = dg.AssetKey(["silver", "media_quarantine"])
IMAGE_TRAINING_MANIFEST = dg.AssetKey(["gold", "image_training_manifest"])
MEDIA_COLLECTION_STATS = dg.AssetKey(["gold", "media_collection_stats"])

USER_FEATURES = dg.AssetKey(["gold", "user_features"])
USER_LABELS = dg.AssetKey(["gold", "user_labels"])

FEAST_REGISTRY = dg.AssetKey(["features", "feast_registry"])
USER_FEATURES_VIEW = dg.AssetKey(["features", "user_features"])
TRAINING_SET = dg.AssetKey(["features", "training_set"])
ONLINE_USER_FEATURES = dg.AssetKey(["features", "online_user_features"])
STREAMING_USER_ACTIVITY = dg.AssetKey(["streaming", "user_activity_1h"])
PREDICTIONS = dg.AssetKey(["gold", "predictions"])

# Every Delta table an asset of the graph writes: the maintenance job compacts and vacuums
# exactly these, and a test holds this list equal to the graph's Delta assets.
DELTA_TABLES: tuple[dg.AssetKey, ...] = (
    BRONZE_EVENTS,
    BRONZE_LANDED_FILES,
    BRONZE_MEDIA_FILES,
    BRONZE_MEDIA_LANDED,
    BRONZE_MEDIA_LABELS,
    SILVER_EVENTS,
    SILVER_QUARANTINE,
    SILVER_DUPLICATES,
    SILVER_MEDIA_METADATA,
    SILVER_DOCUMENT_TEXT,
    SILVER_MEDIA_QUARANTINE,
    DAILY_METRICS,
    FACT_EVENTS,
    DIM_USER,
    USER_LANDING_SUMMARY,
    DIM_DATE,
    IMAGE_TRAINING_MANIFEST,
    MEDIA_COLLECTION_STATS,
    USER_FEATURES,
    USER_LABELS,
    TRAINING_SET,
    PREDICTIONS,
)
# Delta-kind assets that read a table and write none (a Feast feature view over gold/user_features).
DELTA_VIEWS: tuple[dg.AssetKey, ...] = (USER_FEATURES_VIEW,)
# Tables clustered on their lookup keys: compaction must keep that order, so it re-Z-orders them.
ZORDER_BY: dict[dg.AssetKey, list[str]] = {
    SILVER_EVENTS: ["user_id", "event_date"],
    FACT_EVENTS: ["user_key", "event_date"],
    USER_FEATURES: ["user_id", "event_date"],
}
