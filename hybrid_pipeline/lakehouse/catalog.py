"""Every Delta table of the lakehouse, declared once.

A table's name, columns and types, physical layout (partitioning, Z-order), how long old
versions stay readable (vacuum retention), the team that owns it and how much personal data it
holds are facts about the table, not about the code that happens to write it. They are declared
here so that everything else derives from one place: asset keys (``dagster_support/keys.py``), the column
schema in materialization metadata (``dagster_support/metadata.py``), maintenance (``defs/maintenance/jobs.py``)
and the frames the transforms build (the ``*_SCHEMA`` names in the transform modules are these
schemas, re-exported). Tests hold the tables on disk to these declarations.

This module is a pure library: it imports polars only, so any module may import it without a
cycle, and Dagster stays out of ``lakehouse/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

import polars as pl

Layer = Literal["bronze", "silver", "gold", "features"]
# How much personal data (the e-mail address of the event contract) a table can hold:
#   none           no e-mail in any form
#   pseudonymised  only its salted hash (``email_hash``), never the address
#   raw            the address in clear may be there (raw payloads as landed)
PiiClass = Literal["none", "pseudonymised", "raw"]

# Vacuum keeps every file a version inside this window still uses, so time travel (and the
# reproduction of a model from the table versions it recorded) works for that long.
DEFAULT_RETENTION = timedelta(days=7)
# Tables a registered model's inputs are rebuilt from by time travel (`hybrid-pipeline
# reproduce`): kept for as long as a model is expected to stay reproducible.
MODEL_INPUT_RETENTION = timedelta(days=90)

DATA_PLATFORM = "team:data-platform"
ANALYTICS = "team:analytics"
ML_PLATFORM = "team:ml-platform"

_UTC_TIMESTAMP = pl.Datetime("us", "UTC")


@dataclass(frozen=True)
class Table:
    """One Delta table: ``name`` is its path under the lakehouse root, ``<layer>/<table>``."""

    name: str
    layer: Layer
    schema: pl.Schema = field(hash=False)  # the one definition of the table's columns and types
    description: str
    owner: str  # as in the assets' ``owners``
    pii: PiiClass
    partition_by: tuple[str, ...] = ()
    zorder_by: tuple[str, ...] = ()  # clustering that compaction must keep
    retention: timedelta = DEFAULT_RETENTION

    @property
    def key_path(self) -> tuple[str, ...]:
        """The asset key's path (``("silver", "events")``); Dagster keys are built from it in ``dagster_support/keys.py``."""
        return tuple(self.name.split("/"))


# -- bronze: as received ----------------------------------------------------------------------

BRONZE_EVENTS = Table(
    name="bronze/events",
    layer="bronze",
    schema=pl.Schema(
        {
            "landing_date": pl.String(),
            "source_file": pl.String(),
            "source_format": pl.String(),
            "line_number": pl.Int64(),
            "file_sha256": pl.String(),
            "ingested_at": _UTC_TIMESTAMP,
            "payload": pl.String(),
        }
    ),
    description="Every landed event record as received (payload text) with its source file, line and content hash.",
    owner=DATA_PLATFORM,
    pii="raw",  # the payload carries the e-mail address in clear
    partition_by=("landing_date",),
)
BRONZE_LANDED_FILES = Table(
    name="bronze/landed_files",
    layer="bronze",
    schema=pl.Schema(
        {
            "landing_date": pl.String(),
            "source_file": pl.String(),
            "file_sha256": pl.String(),
            "size_bytes": pl.Int64(),
            "source_format": pl.String(),
            "status": pl.String(),  # ingested | already_ingested | rejected
            "reason": pl.String(),
            "records": pl.Int64(),
            "ingested_at": _UTC_TIMESTAMP,
        }
    ),
    description="One row per landed event file per landing day and what became of it.",
    owner=DATA_PLATFORM,
    pii="none",
    partition_by=("landing_date",),
)
BRONZE_MEDIA_FILES = Table(
    name="bronze/media_files",
    layer="bronze",
    schema=pl.Schema(
        {
            "sha256": pl.String(),
            "size_bytes": pl.Int64(),
            "detected_type": pl.String(),
            "original_name": pl.String(),
            "landing_subdir": pl.String(),
            "landing_date": pl.Date(),
            "ingested_at": _UTC_TIMESTAMP,
            "bronze_path": pl.String(),
            "extension_mismatch": pl.Boolean(),
            "duplicate_of": pl.String(),
            "already_in_bronze": pl.Boolean(),
        }
    ),
    description="One row per stored media file (content hash, size, type from magic bytes, original name).",
    owner=ML_PLATFORM,
    pii="none",
)
BRONZE_MEDIA_LANDED = Table(
    name="bronze/media_landed",
    layer="bronze",
    schema=pl.Schema(
        {
            "original_name": pl.String(),
            "landing_subdir": pl.String(),
            "sha256": pl.String(),
            "status": pl.String(),  # stored | duplicate | already_in_bronze | rejected
            "reason": pl.String(),
        }
    ),
    description="Every file of the media landing folder and what became of it.",
    owner=ML_PLATFORM,
    pii="none",
)
BRONZE_MEDIA_LABELS = Table(
    name="bronze/media_labels",
    layer="bronze",
    schema=pl.Schema({"original_name": pl.String(), "label": pl.String()}),
    description="Image labels from the landing zone's images/labels.csv, by original file name.",
    owner=ML_PLATFORM,
    pii="none",
)

# -- silver: typed, validated, deduplicated; what was set aside ---------------------------------

SILVER_EVENTS = Table(
    name="silver/events",
    layer="silver",
    schema=pl.Schema(
        {
            "event_id": pl.String(),
            "user_id": pl.String(),
            "session_id": pl.String(),
            "event_type": pl.String(),
            "timestamp": _UTC_TIMESTAMP,
            "event_date": pl.Date(),
            "hour": pl.Int8(),
            "product_id": pl.String(),
            "session_duration": pl.Float64(),
            "revenue": pl.Float64(),
            "user_segment": pl.String(),
            "email_hash": pl.String(),
            "landing_date": pl.String(),
            "source_file": pl.String(),
            "line_number": pl.Int64(),
        }
    ),
    description="Events typed against the contract, deduplicated on event_id, e-mail replaced by a salted hash.",
    owner=DATA_PLATFORM,
    pii="pseudonymised",
    partition_by=("event_date",),  # by their true date, late events included
    zorder_by=("user_id", "event_date"),
)
SILVER_EVENTS_QUARANTINE = Table(
    name="silver/events_quarantine",
    layer="silver",
    schema=pl.Schema(
        {
            "landing_date": pl.String(),
            "source_file": pl.String(),
            "line_number": pl.Int64(),
            "file_sha256": pl.String(),
            "payload": pl.String(),
            "reason": pl.String(),
            "details": pl.String(),
        }
    ),
    description="Rejected bronze records with the raw payload, the reason and the source file and line.",
    owner=DATA_PLATFORM,
    pii="raw",  # the payload is kept as landed
    partition_by=("landing_date",),
)
SILVER_EVENTS_DUPLICATES = Table(
    name="silver/events_duplicates",
    layer="silver",
    schema=pl.Schema(
        {
            "event_id": pl.String(),
            "landing_date": pl.String(),
            "source_file": pl.String(),
            "line_number": pl.Int64(),
            "file_sha256": pl.String(),
            "kept_landing_date": pl.String(),
            "kept_source_file": pl.String(),
            "kept_line_number": pl.Int64(),
        }
    ),
    description="Valid records removed as duplicates, pointing at the record that was kept.",
    owner=DATA_PLATFORM,
    pii="none",
    partition_by=("landing_date",),
)
SILVER_MEDIA_METADATA = Table(
    name="silver/media_metadata",
    layer="silver",
    schema=pl.Schema(
        {
            "sha256": pl.String(),
            "bronze_path": pl.String(),
            "landing_date": pl.Date(),
            "detected_type": pl.String(),
            "size_bytes": pl.Int64(),
            "extension_mismatch": pl.Boolean(),
            "width": pl.Int64(),
            "height": pl.Int64(),
            "mode": pl.String(),
            "format": pl.String(),
            "perceptual_hash": pl.String(),
            "exif_orientation": pl.Int64(),
            "page_count": pl.Int64(),
            "text_length": pl.Int64(),
            "title": pl.String(),
            "original_name": pl.String(),
            "label": pl.String(),
        }
    ),
    description="Described media (image size/mode/format/perceptual hash, document pages/text length/title) and the image label.",
    owner=ML_PLATFORM,
    pii="none",
)
SILVER_DOCUMENT_TEXT = Table(
    name="silver/document_text",
    layer="silver",
    schema=pl.Schema({"sha256": pl.String(), "title": pl.String(), "text": pl.String()}),
    description="Text extracted from PDF and TXT documents, by content hash.",
    owner=ML_PLATFORM,
    pii="raw",  # free text of landed documents: anything, an e-mail address included, may be in it
)
SILVER_MEDIA_QUARANTINE = Table(
    name="silver/media_quarantine",
    layer="silver",
    schema=pl.Schema(
        {
            "sha256": pl.String(),
            "original_name": pl.String(),
            "bronze_path": pl.String(),
            "stage": pl.String(),  # landing | extraction
            "reason": pl.String(),
            "detail": pl.String(),
        }
    ),
    description="Media set aside at landing or extraction, with the reason.",
    owner=ML_PLATFORM,
    pii="none",
)

# -- gold: analytics -----------------------------------------------------------------------------

GOLD_DAILY_METRICS = Table(
    name="gold/daily_metrics",
    layer="gold",
    schema=pl.Schema(
        {
            "event_date": pl.Date(),
            "user_segment": pl.String(),
            "events": pl.Int64(),
            "unique_users": pl.Int64(),
            "purchases": pl.Int64(),
            "purchasing_users": pl.Int64(),
            "total_revenue": pl.Float64(),
            "conversion_rate": pl.Float64(),
        }
    ),
    description="Per event date and user segment: events, unique users, purchases, revenue, conversion rate.",
    owner=ANALYTICS,
    pii="none",
)
GOLD_FACT_EVENTS = Table(
    name="gold/fact_events",
    layer="gold",
    schema=pl.Schema(
        {
            "event_id": pl.String(),
            "event_date": pl.Date(),
            "date_key": pl.Int32(),
            "user_key": pl.Int64(),
            "session_id": pl.String(),
            "event_type": pl.String(),
            "product_id": pl.String(),
            "timestamp": _UTC_TIMESTAMP,
            "hour": pl.Int8(),
            "session_duration": pl.Float64(),
            "revenue": pl.Float64(),
            "landing_date": pl.String(),
        }
    ),
    description="Fact table: one row per event, keyed to dim_date (date_key) and dim_user (user_key).",
    owner=ANALYTICS,
    pii="none",
    partition_by=("event_date",),
    zorder_by=("user_key", "event_date"),
)
GOLD_DIM_USER = Table(
    name="gold/dim_user",
    layer="gold",
    schema=pl.Schema(
        {
            "user_key": pl.Int64(),
            "user_id": pl.String(),
            "user_segment": pl.String(),
            "email_hash": pl.String(),
            "first_seen": _UTC_TIMESTAMP,
            "last_seen": _UTC_TIMESTAMP,
            "lifetime_events": pl.Int64(),
        }
    ),
    description="User dimension (SCD type 1): latest segment, hashed e-mail, first/last seen, lifetime events.",
    owner=ANALYTICS,
    pii="pseudonymised",
)
GOLD_USER_LANDING_SUMMARY = Table(
    name="gold/user_landing_summary",
    layer="gold",
    schema=pl.Schema(
        {
            "user_id": pl.String(),
            "landing_date": pl.String(),
            "events": pl.Int64(),
            "first_seen": _UTC_TIMESTAMP,
            "last_seen": _UTC_TIMESTAMP,
            "last_event_id": pl.String(),
            "user_segment": pl.String(),
            "email_hash": pl.String(),
            "email_seen": _UTC_TIMESTAMP,
            "email_event_id": pl.String(),
        }
    ),
    description="Per user and landing day: events, first/last seen, newest segment and e-mail hash (dim_user's input).",
    owner=ANALYTICS,
    pii="pseudonymised",
)
GOLD_DIM_DATE = Table(
    name="gold/dim_date",
    layer="gold",
    schema=pl.Schema(
        {
            "date_key": pl.Int32(),
            "date": pl.Date(),
            "year": pl.Int32(),
            "quarter": pl.Int8(),
            "month": pl.Int8(),
            "day": pl.Int8(),
            "day_of_week": pl.Int8(),
            "iso_week": pl.Int8(),
            "is_weekend": pl.Boolean(),
        }
    ),
    description="Date dimension for every event date seen: calendar attributes keyed by date_key.",
    owner=ANALYTICS,
    pii="none",
)
GOLD_MEDIA_COLLECTION_STATS = Table(
    name="gold/media_collection_stats",
    layer="gold",
    schema=pl.Schema({"dimension": pl.String(), "value": pl.String(), "files": pl.Int64(), "bytes": pl.Int64()}),
    description="Media files and bytes by detected type, size bucket and landing day.",
    owner=ANALYTICS,
    pii="none",
)

# -- gold: the AI branch -------------------------------------------------------------------------

GOLD_USER_FEATURES = Table(
    name="gold/user_features",
    layer="gold",
    schema=pl.Schema(
        {
            "user_id": pl.String(),
            "event_date": pl.Date(),
            "event_timestamp": _UTC_TIMESTAMP,
            # when the row's data became known: the end of the newest landing day among the events
            # it was computed from (never the run's wall clock): what as-known-at retrieval filters on
            "created_timestamp": _UTC_TIMESTAMP,
            "total_events": pl.Int64(),
            "events_1d": pl.Int64(),
            "events_7d": pl.Int64(),
            "events_30d": pl.Int64(),
            "revenue_1d": pl.Float64(),
            "revenue_7d": pl.Float64(),
            "revenue_30d": pl.Float64(),
            "purchases_30d": pl.Int64(),
            "add_to_carts_7d": pl.Int64(),
            "avg_session_duration": pl.Float64(),
            "days_since_last_purchase": pl.Int64(),
            "recent_event_types": pl.String(),
            "user_segment": pl.String(),
        }
    ),
    description="One row per user per day as of the end of that day: windowed activity, revenue and recency features.",
    owner=ML_PLATFORM,
    pii="none",
    zorder_by=("user_id", "event_date"),
    retention=MODEL_INPUT_RETENTION,
)
GOLD_USER_LABELS = Table(
    name="gold/user_labels",
    layer="gold",
    schema=pl.Schema(
        {
            "user_id": pl.String(),
            "event_date": pl.Date(),
            "event_timestamp": _UTC_TIMESTAMP,
            "purchased_next_7d": pl.Int8(),
        }
    ),
    description="Sampled (user, end-of-day timestamp) pairs and whether the user purchases in the next 7 days.",
    owner=ML_PLATFORM,
    pii="none",
    retention=MODEL_INPUT_RETENTION,
)
GOLD_IMAGE_TRAINING_MANIFEST = Table(
    name="gold/image_training_manifest",
    layer="gold",
    schema=pl.Schema(
        {
            "sha256": pl.String(),
            "bronze_path": pl.String(),
            "label": pl.Int64(),  # index into the sorted class names
            "label_name": pl.String(),
            "split": pl.String(),  # train | validation | test, from the content hash
        }
    ),
    description="Labelled, valid images for training with a split derived from the content hash.",
    owner=ML_PLATFORM,
    pii="none",
    retention=MODEL_INPUT_RETENTION,
)
GOLD_PREDICTIONS = Table(
    name="gold/predictions",
    layer="gold",
    schema=pl.Schema(
        {
            "prediction_date": pl.Date(),
            "user_id": pl.String(),
            "feature_date": pl.Date(),
            "score": pl.Float64(),
            "model_name": pl.String(),
            "model_version": pl.Int64(),
            "model_run_id": pl.String(),
            "scored_at": _UTC_TIMESTAMP,
        }
    ),
    description="Daily batch scores of the production purchase model, one row per user with features that day.",
    owner=ML_PLATFORM,
    pii="none",
    partition_by=("prediction_date",),
)

# -- embeddings: chunks, vectors and the near-duplicates they reveal ------------------------------

SILVER_DOCUMENT_CHUNKS = Table(
    name="silver/document_chunks",
    layer="silver",
    schema=pl.Schema(
        {
            "chunk_id": pl.String(),  # stable: document hash, chunking parameters and offsets
            "sha256": pl.String(),  # the document's content hash
            "chunk_index": pl.Int64(),
            "page": pl.Int64(),
            "start_char": pl.Int64(),
            "end_char": pl.Int64(),
            "text": pl.String(),
            "content_sha256": pl.String(),  # the chunk text's hash
            "chunk_size": pl.Int64(),
            "chunk_overlap": pl.Int64(),
        }
    ),
    description="The text of silver/document_text in overlapping character windows, with offsets and hashes.",
    owner=ML_PLATFORM,
    pii="raw",  # free text of landed documents, like silver/document_text
)
_EMBEDDING_MODEL_COLUMNS = {
    "model_name": pl.String(),
    "model_sha256": pl.String(),  # content hash of the model's weight files
    "model_id": pl.String(),  # name@hash prefix: what the index and a query compare
    "embedding": pl.List(pl.Float32()),  # unit length
    "embedded_at": _UTC_TIMESTAMP,
}
GOLD_DOCUMENT_EMBEDDINGS = Table(
    name="gold/document_embeddings",
    layer="gold",
    schema=pl.Schema(
        {
            "chunk_id": pl.String(),
            "sha256": pl.String(),
            "content_sha256": pl.String(),
            "token_count": pl.Int64(),
            "truncated": pl.Boolean(),  # longer than the model's window: the tail is not in the vector
            **_EMBEDDING_MODEL_COLUMNS,
        }
    ),
    description="One sentence embedding per document chunk, with the model identity and the chunk's content hash.",
    owner=ML_PLATFORM,
    pii="none",
)
GOLD_IMAGE_EMBEDDINGS = Table(
    name="gold/image_embeddings",
    layer="gold",
    schema=pl.Schema({"sha256": pl.String(), "content_sha256": pl.String(), **_EMBEDDING_MODEL_COLUMNS}),
    description="One embedding per valid image, with the model identity and the image's content hash.",
    owner=ML_PLATFORM,
    pii="none",
)
GOLD_MEDIA_NEAR_DUPLICATES = Table(
    name="gold/media_near_duplicates",
    layer="gold",
    schema=pl.Schema(
        {
            "collection": pl.String(),  # images | documents
            "left_id": pl.String(),  # image sha256 or chunk_id; left_id < right_id
            "right_id": pl.String(),
            "left_sha256": pl.String(),
            "right_sha256": pl.String(),
            "similarity": pl.Float64(),
            "left_split": pl.String(),  # image training split (null for chunks and unlabelled images)
            "right_split": pl.String(),
            "cross_split": pl.Boolean(),  # both in the manifest, in different splits: leakage
            "model_id": pl.String(),
        }
    ),
    description="Pairs of images, or chunks of different documents, whose embeddings are above a similarity threshold.",
    owner=ML_PLATFORM,
    pii="none",
)

# -- features: what the feature store serves to training -------------------------------------------

# The labels' entity keys and label, joined point-in-time to every feature value of user_features:
# declared from those two tables so the three cannot drift apart.
_FEATURE_KEYS = ("user_id", "event_date", "event_timestamp", "created_timestamp")
FEATURES_TRAINING_SET = Table(
    name="features/training_set",
    layer="features",
    schema=pl.Schema(
        {
            **{c: t for c, t in GOLD_USER_LABELS.schema.items() if c != "event_date"},
            **{c: t for c, t in GOLD_USER_FEATURES.schema.items() if c not in _FEATURE_KEYS},
        }
    ),
    description="Labels joined point-in-time to the purchase model's features at pinned table versions.",
    owner=ML_PLATFORM,
    pii="none",
    retention=MODEL_INPUT_RETENTION,
)

TABLES: tuple[Table, ...] = (
    BRONZE_EVENTS,
    BRONZE_LANDED_FILES,
    BRONZE_MEDIA_FILES,
    BRONZE_MEDIA_LANDED,
    BRONZE_MEDIA_LABELS,
    SILVER_EVENTS,
    SILVER_EVENTS_QUARANTINE,
    SILVER_EVENTS_DUPLICATES,
    SILVER_MEDIA_METADATA,
    SILVER_DOCUMENT_TEXT,
    SILVER_MEDIA_QUARANTINE,
    GOLD_DAILY_METRICS,
    GOLD_FACT_EVENTS,
    GOLD_DIM_USER,
    GOLD_USER_LANDING_SUMMARY,
    GOLD_DIM_DATE,
    GOLD_MEDIA_COLLECTION_STATS,
    GOLD_USER_FEATURES,
    GOLD_USER_LABELS,
    GOLD_IMAGE_TRAINING_MANIFEST,
    GOLD_PREDICTIONS,
    FEATURES_TRAINING_SET,
    SILVER_DOCUMENT_CHUNKS,
    GOLD_DOCUMENT_EMBEDDINGS,
    GOLD_IMAGE_EMBEDDINGS,
    GOLD_MEDIA_NEAR_DUPLICATES,
)


def table(name: str) -> Table:
    """The table named ``name`` (``silver/events``); a ``KeyError`` names an undeclared table."""
    for t in TABLES:
        if t.name == name:
            return t
    raise KeyError(f"{name!r} is not a table of the lakehouse catalog")
