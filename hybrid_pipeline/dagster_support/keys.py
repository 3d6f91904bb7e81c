"""Asset keys, named once: ``<layer>/<table>`` mirrors the lakehouse path.

The keys of assets that write a Delta table come from the lakehouse catalog
(:mod:`hybrid_pipeline.lakehouse.catalog`), so an asset and its table cannot be named apart.
"""

import dagster as dg

from hybrid_pipeline.lakehouse import catalog
from hybrid_pipeline.lakehouse.catalog import Table


def key_of(table: Table) -> dg.AssetKey:
    """The asset key of the asset that writes ``table`` (``silver/events`` -> ``["silver", "events"]``)."""
    return dg.AssetKey(list(table.key_path))


def table_of(key: dg.AssetKey) -> str:
    """The lakehouse table an asset key names (``silver/events``)."""
    return "/".join(key.path)


BRONZE_EVENTS = key_of(catalog.BRONZE_EVENTS)
BRONZE_LANDED_FILES = key_of(catalog.BRONZE_LANDED_FILES)
SILVER_EVENTS = key_of(catalog.SILVER_EVENTS)
SILVER_QUARANTINE = key_of(catalog.SILVER_EVENTS_QUARANTINE)
SILVER_DUPLICATES = key_of(catalog.SILVER_EVENTS_DUPLICATES)
DAILY_METRICS = key_of(catalog.GOLD_DAILY_METRICS)
FACT_EVENTS = key_of(catalog.GOLD_FACT_EVENTS)
DIM_USER = key_of(catalog.GOLD_DIM_USER)
USER_LANDING_SUMMARY = key_of(catalog.GOLD_USER_LANDING_SUMMARY)
DIM_DATE = key_of(catalog.GOLD_DIM_DATE)

BRONZE_MEDIA_FILES = key_of(catalog.BRONZE_MEDIA_FILES)
BRONZE_MEDIA_LANDED = key_of(catalog.BRONZE_MEDIA_LANDED)
BRONZE_MEDIA_LABELS = key_of(catalog.BRONZE_MEDIA_LABELS)
SILVER_MEDIA_METADATA = key_of(catalog.SILVER_MEDIA_METADATA)
SILVER_DOCUMENT_TEXT = key_of(catalog.SILVER_DOCUMENT_TEXT)
SILVER_MEDIA_QUARANTINE = key_of(catalog.SILVER_MEDIA_QUARANTINE)
IMAGE_TRAINING_MANIFEST = key_of(catalog.GOLD_IMAGE_TRAINING_MANIFEST)
MEDIA_COLLECTION_STATS = key_of(catalog.GOLD_MEDIA_COLLECTION_STATS)

USER_FEATURES = key_of(catalog.GOLD_USER_FEATURES)
USER_LABELS = key_of(catalog.GOLD_USER_LABELS)
TRAINING_SET = key_of(catalog.FEATURES_TRAINING_SET)
PREDICTIONS = key_of(catalog.GOLD_PREDICTIONS)

# Assets that are not Delta tables of the catalog.
FEAST_REGISTRY = dg.AssetKey(["features", "feast_registry"])
USER_FEATURES_VIEW = dg.AssetKey(["features", "user_features"])
ONLINE_USER_FEATURES = dg.AssetKey(["features", "online_user_features"])
STREAMING_USER_ACTIVITY = dg.AssetKey(["streaming", "user_activity_1h"])

# Delta-kind assets that read a table and write none (a Feast feature view over gold/user_features).
DELTA_VIEWS: tuple[dg.AssetKey, ...] = (USER_FEATURES_VIEW,)
