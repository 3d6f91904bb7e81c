"""Media records <-> Delta rows, and the silver/gold media frames built from them.

The media library works on :class:`MediaRecord` objects; the lakehouse stores rows. These
helpers convert both ways so the asset modules stay thin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date

import polars as pl

from hybrid_pipeline.lakehouse import catalog
from hybrid_pipeline.media.extract import Description
from hybrid_pipeline.media.stats import MEDIA_FILES_SCHEMA, media_metadata_frame, records_to_frame
from hybrid_pipeline.media.store import MediaRecord, RejectedFile

LANDED_SCHEMA = catalog.BRONZE_MEDIA_LANDED.schema
LABELS_SCHEMA = catalog.BRONZE_MEDIA_LABELS.schema
QUARANTINE_SCHEMA = catalog.SILVER_MEDIA_QUARANTINE.schema
# silver/media_metadata's columns that come from the description (the name and label are joined on).
METADATA_COLUMNS = [c for c in catalog.SILVER_MEDIA_METADATA.schema if c not in ("original_name", "label")]


def files_frame(records: Iterable[MediaRecord]) -> pl.DataFrame:
    return records_to_frame(records).cast(dict(MEDIA_FILES_SCHEMA))


def landed_frame(records: Iterable[MediaRecord], rejected: Iterable[RejectedFile]) -> pl.DataFrame:
    """One row per file in the landing folder, with what became of it."""
    rows = [
        {
            "original_name": r.original_name,
            "landing_subdir": r.landing_subdir,
            "sha256": r.sha256,
            "status": "duplicate" if r.duplicate_of else ("already_in_bronze" if r.already_in_bronze else "stored"),
            "reason": f"same content as {r.duplicate_of}" if r.duplicate_of else None,
        }
        for r in records
    ]
    rows += [
        {"original_name": x.original_name, "landing_subdir": x.landing_subdir, "sha256": None, "status": "rejected", "reason": x.reason}
        for x in rejected
    ]
    return pl.DataFrame(rows, schema=LANDED_SCHEMA) if rows else pl.DataFrame(schema=LANDED_SCHEMA)


def labels_frame(labels: Mapping[str, str]) -> pl.DataFrame:
    return pl.DataFrame({"original_name": list(labels), "label": list(labels.values())}, schema=LABELS_SCHEMA)


def records_from_rows(files: pl.DataFrame) -> list[MediaRecord]:
    """``bronze/media_files`` rows back into records for the media library."""
    out = []
    for row in files.iter_rows(named=True):
        row = dict(row)
        if isinstance(row.get("landing_date"), date):
            row["landing_date"] = row["landing_date"].isoformat()
        out.append(MediaRecord(**row))
    return out


def split_descriptions(
    records: list[MediaRecord], descriptions: list[Description], labels: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(metadata of good files with their label, document text, extraction quarantine)."""
    frame = media_metadata_frame(records, descriptions)
    names = pl.DataFrame(
        {"sha256": [r.sha256 for r in records], "original_name": [r.original_name for r in records]},
        schema={"sha256": pl.String, "original_name": pl.String},
    )
    frame = frame.join(names, on="sha256", how="left")
    good = frame.filter(pl.col("ok"))
    metadata = good.join(labels, on="original_name", how="left").select(*METADATA_COLUMNS, "original_name", "label")
    text = good.filter(pl.col("text").is_not_null()).select("sha256", "title", "text")
    quarantine = frame.filter(~pl.col("ok")).select(
        "sha256", "original_name", "bronze_path", pl.lit("extraction").alias("stage"), "reason", "detail"
    )
    return metadata, text, quarantine.cast(QUARANTINE_SCHEMA)


def landing_rejects(landed: pl.DataFrame) -> pl.DataFrame:
    return landed.filter(pl.col("status") == "rejected").select(
        "sha256",
        "original_name",
        pl.lit(None, pl.String).alias("bronze_path"),
        pl.lit("landing").alias("stage"),
        "reason",
        pl.lit(None, pl.String).alias("detail"),
    ).cast(QUARANTINE_SCHEMA)
