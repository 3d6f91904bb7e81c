"""Media: raw images and documents in bronze, described in silver, served to training in gold.

Media land in ``media/images`` and ``media/docs`` without a date folder, so these assets are
not partitioned: every run ingests what is new (content-addressed, so repeats are free).
"""

from datetime import date, datetime, timezone

import dagster as dg
import polars as pl

from hybrid_pipeline.dagster_support.keys import (
    BRONZE_MEDIA_FILES,
    BRONZE_MEDIA_LABELS,
    BRONZE_MEDIA_LANDED,
    IMAGE_TRAINING_MANIFEST,
    MEDIA_COLLECTION_STATS,
    SILVER_DOCUMENT_TEXT,
    SILVER_MEDIA_METADATA,
    SILVER_MEDIA_QUARANTINE,
    table_of,
)
from hybrid_pipeline.dagster_support.metadata import measured, table_metadata
from hybrid_pipeline.dagster_support.resources import LakehouseResource, LandingZoneResource
from hybrid_pipeline.lakehouse import catalog
from hybrid_pipeline.media.extract import describe_many
from hybrid_pipeline.media.stats import MEDIA_FILES_SCHEMA, media_collection_stats
from hybrid_pipeline.media.store import (
    ingest_landing_media,
    load_labels,
    local_media_root,
    resolve_bronze_path,
    unique_records,
)
from hybrid_pipeline.transforms import media_tables as mt

_OWNERS = ["team:ml-platform"]
_KINDS = {"delta", "polars"}


def media_root(lakehouse: LakehouseResource) -> str:
    """The bronze media store: ``<root>/bronze/media``, a local folder or an object-store prefix."""
    return lakehouse.lakehouse().path("bronze", "media")


@dg.multi_asset(
    specs=[
        dg.AssetSpec(BRONZE_MEDIA_FILES, group_name="bronze", kinds=_KINDS, owners=_OWNERS, tags={"layer": "bronze"},
                     description="One row per stored media file (sha256, size, type from magic bytes, original name). "
                     "The bytes live unchanged at bronze/media/<sha[:2]>/<sha>.<ext>."),
        dg.AssetSpec(BRONZE_MEDIA_LANDED, group_name="bronze", kinds=_KINDS, owners=_OWNERS, tags={"layer": "bronze"},
                     description="Every file in the media landing folder and what became of it (stored, duplicate, rejected "
                     "as a symlink, empty, not a regular file, unreadable or in a folder nested too deep)."),
        dg.AssetSpec(BRONZE_MEDIA_LABELS, group_name="bronze", kinds=_KINDS, owners=_OWNERS, tags={"layer": "bronze"},
                     description="Image labels from the landing zone's images/labels.csv, by original file name."),
    ]
)
@measured
def bronze_media(lakehouse: LakehouseResource, landing: LandingZoneResource):
    lh = lakehouse.lakehouse()
    landing_media = landing.root / "media"
    today = date.today().isoformat()
    records, rejected = ingest_landing_media(landing_media, media_root(lakehouse), today,
                                             ingested_at=datetime.now(timezone.utc), storage_options=lh.storage_options)
    label_map, labels_rejected = load_labels(landing_media, today)  # a refused labels file is one more reject
    files = mt.files_frame(unique_records(records))
    v_files = lh.insert_new(table_of(BRONZE_MEDIA_FILES), files, ["sha256"]) if files.height else lh.version(table_of(BRONZE_MEDIA_FILES))
    landed = mt.landed_frame(records, rejected + labels_rejected)
    v_landed = lh.replace_where(table_of(BRONZE_MEDIA_LANDED), landed, "true")
    labels = mt.labels_frame(label_map)
    v_labels = lh.upsert(table_of(BRONZE_MEDIA_LABELS), labels, ["original_name"]) if labels.height else lh.version(table_of(BRONZE_MEDIA_LABELS))
    total = lh.scan_or_empty(table_of(BRONZE_MEDIA_FILES), dict(MEDIA_FILES_SCHEMA)).select(pl.len()).collect().item()
    status = dict(landed.group_by("status").len().iter_rows())
    yield dg.MaterializeResult(asset_key=BRONZE_MEDIA_FILES, metadata=table_metadata(
        lh.uri(table_of(BRONZE_MEDIA_FILES)), MEDIA_FILES_SCHEMA, total, v_files, new_files=status.get("stored", 0)))
    yield dg.MaterializeResult(asset_key=BRONZE_MEDIA_LANDED, metadata=table_metadata(
        lh.uri(table_of(BRONZE_MEDIA_LANDED)), mt.LANDED_SCHEMA, landed.height, v_landed,
        status=dg.MetadataValue.json(status)))
    yield dg.MaterializeResult(asset_key=BRONZE_MEDIA_LABELS, metadata=table_metadata(
        lh.uri(table_of(BRONZE_MEDIA_LABELS)), mt.LABELS_SCHEMA, labels.height, v_labels))


@dg.multi_asset(
    specs=[
        dg.AssetSpec(SILVER_MEDIA_METADATA, deps=[BRONZE_MEDIA_FILES, BRONZE_MEDIA_LABELS], group_name="silver", kinds=_KINDS,
                     owners=_OWNERS, tags={"layer": "silver"},
                     description="Described media: image size/mode/format/perceptual hash/EXIF orientation, document "
                     "page count/text length/title, and the image label."),
        dg.AssetSpec(SILVER_DOCUMENT_TEXT, deps=[BRONZE_MEDIA_FILES], group_name="silver", kinds=_KINDS, owners=_OWNERS,
                     tags={"layer": "silver"}, description="Text extracted from PDF and TXT documents, by sha256."),
        dg.AssetSpec(SILVER_MEDIA_QUARANTINE, deps=[BRONZE_MEDIA_FILES, BRONZE_MEDIA_LANDED], group_name="silver",
                     kinds=_KINDS, owners=_OWNERS, tags={"layer": "silver"},
                     description="Media set aside with the reason: empty, symlink, not a regular file, unreadable, folder "
                     "nested too deep, corrupt or truncated image, extension that lies, decompression bomb, encrypted, "
                     "unreadable or too complex PDF, unsupported type, or a description that failed."),
    ]
)
@measured
def silver_media(context: dg.AssetExecutionContext, lakehouse: LakehouseResource):
    lh = lakehouse.lakehouse()
    root = media_root(lakehouse)
    meta_t, text_t, quar_t = table_of(SILVER_MEDIA_METADATA), table_of(SILVER_DOCUMENT_TEXT), table_of(SILVER_MEDIA_QUARANTINE)
    files = lh.scan_or_empty(table_of(BRONZE_MEDIA_FILES), dict(MEDIA_FILES_SCHEMA)).collect()
    done = pl.concat([
        lh.scan_or_empty(meta_t, {"sha256": pl.String()}).select("sha256").collect(),
        lh.scan_or_empty(quar_t, mt.QUARANTINE_SCHEMA).filter(pl.col("stage") == "extraction").select("sha256").collect(),
    ])
    new = files.join(done, on="sha256", how="anti")
    records = mt.records_from_rows(new)
    with local_media_root(root, [r.bronze_path for r in records], lh.storage_options) as local:
        descriptions = describe_many(
            [resolve_bronze_path(local, r.bronze_path) for r in records], original_names=[r.original_name for r in records]
        ) if records else []
    labels = lh.scan_or_empty(table_of(BRONZE_MEDIA_LABELS), mt.LABELS_SCHEMA).collect()
    metadata, text, quarantine = mt.split_descriptions(records, descriptions, labels)
    v_meta = lh.insert_new(meta_t, metadata, ["sha256"]) if metadata.height else lh.version(meta_t)
    v_text = lh.insert_new(text_t, text, ["sha256"]) if text.height else lh.version(text_t)
    landing_rejects = mt.landing_rejects(lh.scan_or_empty(table_of(BRONZE_MEDIA_LANDED), mt.LANDED_SCHEMA).collect())
    lh.replace_where(quar_t, landing_rejects, "stage = 'landing'")
    v_quar = lh.insert_new(quar_t, quarantine, ["sha256", "stage"]) if quarantine.height else lh.version(quar_t)
    context.log.info(f"described {len(records)} new files: {metadata.height} ok, {quarantine.height} quarantined")
    reasons = lh.read(quar_t).group_by("reason").len() if lh.exists(quar_t) else pl.DataFrame()
    yield dg.MaterializeResult(asset_key=SILVER_MEDIA_METADATA, metadata=table_metadata(
        lh.uri(meta_t), metadata.schema, lh.scan_or_empty(meta_t, {}).select(pl.len()).collect().item(), v_meta,
        described_now=len(records)))
    yield dg.MaterializeResult(asset_key=SILVER_DOCUMENT_TEXT, metadata=table_metadata(
        lh.uri(text_t), catalog.SILVER_DOCUMENT_TEXT.schema,
        lh.scan_or_empty(text_t, {}).select(pl.len()).collect().item(), v_text))
    yield dg.MaterializeResult(asset_key=SILVER_MEDIA_QUARANTINE, metadata=table_metadata(
        lh.uri(quar_t), mt.QUARANTINE_SCHEMA, lh.scan_or_empty(quar_t, {}).select(pl.len()).collect().item(), v_quar,
        reasons=dg.MetadataValue.json(dict(reasons.iter_rows()) if reasons.height else {})))


@dg.asset(key=IMAGE_TRAINING_MANIFEST, deps=[SILVER_MEDIA_METADATA, BRONZE_MEDIA_LABELS], group_name="gold_features",
          kinds=_KINDS, owners=_OWNERS, tags={"layer": "gold"},
          description="Labelled, valid images for training: sha256, raw bronze path, label, and a train/validation/test "
          "split derived from the content hash (stable across reruns and machines).")
@measured
def image_training_manifest(lakehouse: LakehouseResource) -> dg.MaterializeResult:
    from hybrid_pipeline.media.dataset import build_image_manifest  # imports torch: only when run

    lh = lakehouse.lakehouse()
    good = lh.scan_or_empty(table_of(SILVER_MEDIA_METADATA), {"sha256": pl.String()}).select("sha256").collect()
    files = lh.scan_or_empty(table_of(BRONZE_MEDIA_FILES), dict(MEDIA_FILES_SCHEMA)).join(good.lazy(), on="sha256", how="semi").collect()
    labels = dict(lh.scan_or_empty(table_of(BRONZE_MEDIA_LABELS), mt.LABELS_SCHEMA).collect().iter_rows())
    manifest = build_image_manifest(mt.records_from_rows(files), labels)
    table = table_of(IMAGE_TRAINING_MANIFEST)
    version = lh.replace_where(table, manifest, "true")
    splits = dict(manifest.group_by("split").len().iter_rows()) if manifest.height else {}
    return dg.MaterializeResult(metadata=table_metadata(lh.uri(table), manifest.schema, manifest.height, version,
                                                        splits=dg.MetadataValue.json(splits)))


@dg.asset(key=MEDIA_COLLECTION_STATS, deps=[BRONZE_MEDIA_FILES], group_name="gold_analytics", kinds=_KINDS,
          owners=["team:analytics"], tags={"layer": "gold"},
          description="Media files and bytes by detected type, size bucket and landing day.")
@measured
def media_collection_stats_asset(lakehouse: LakehouseResource) -> dg.MaterializeResult:
    lh = lakehouse.lakehouse()
    stats = media_collection_stats(lh.scan_or_empty(table_of(BRONZE_MEDIA_FILES), dict(MEDIA_FILES_SCHEMA)).collect())
    table = table_of(MEDIA_COLLECTION_STATS)
    version = lh.replace_where(table, stats, "true")
    return dg.MaterializeResult(metadata=table_metadata(lh.uri(table), stats.schema, stats.height, version))


MEDIA_ASSETS = [bronze_media, silver_media, image_training_manifest, media_collection_stats_asset]


MEDIA_JOB = "media_pipeline"

media_pipeline = dg.define_asset_job(
    MEDIA_JOB,
    selection=dg.AssetSelection.assets(*MEDIA_ASSETS),
    description="Landed media -> bronze files -> silver descriptions -> gold manifest and stats.",
)
