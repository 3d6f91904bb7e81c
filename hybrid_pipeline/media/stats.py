"""Polars tables for the media branch: ``media_files`` rows and collection stats.

Why here and pure: the Dagster assets only pass records in and write the
frames out; schemas are explicit so an empty batch still writes a typed table
and Delta schema evolution never sees a surprise ``Null`` column.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from typing import Any, Final

import polars as pl

from hybrid_pipeline.lakehouse import catalog
from hybrid_pipeline.media.extract import Description
from hybrid_pipeline.media.store import MediaRecord

MEDIA_FILES_SCHEMA: Final = catalog.BRONZE_MEDIA_FILES.schema

# A description beside its outcome: the silver/media_metadata columns it fills, whether the file is
# ok (else quarantined with a reason and detail) and the text it yields (silver/document_text).
MEDIA_METADATA_SCHEMA: Final = pl.Schema(
    {
        **{c: t for c, t in catalog.SILVER_MEDIA_METADATA.schema.items() if c not in ("original_name", "label")},
        "ok": pl.Boolean(),
        "reason": catalog.SILVER_MEDIA_QUARANTINE.schema["reason"],
        "detail": catalog.SILVER_MEDIA_QUARANTINE.schema["detail"],
        "text": catalog.SILVER_DOCUMENT_TEXT.schema["text"],
    }
)

COLLECTION_STATS_SCHEMA: Final = catalog.GOLD_MEDIA_COLLECTION_STATS.schema

#: (upper bound exclusive in bytes, label); the last bucket is open-ended.
SIZE_BUCKETS: Final[tuple[tuple[int | None, str], ...]] = (
    (1 << 10, "<1KiB"),
    (64 << 10, "1KiB-64KiB"),
    (1 << 20, "64KiB-1MiB"),
    (16 << 20, "1MiB-16MiB"),
    (None, ">=16MiB"),
)
DIMENSIONS: Final = ("all", "detected_type", "size_bucket", "landing_date")


def records_to_frame(records: Iterable[MediaRecord | Mapping[str, Any]]) -> pl.DataFrame:
    """Ingest records (dataclasses or dicts) as a ``media_files`` frame with a fixed schema."""
    rows = [asdict(r) if is_dataclass(r) else dict(r) for r in records]
    if not rows:
        return pl.DataFrame(schema=MEDIA_FILES_SCHEMA)
    schema = {k: (pl.String if k == "landing_date" else v) for k, v in MEDIA_FILES_SCHEMA.items()}
    frame = pl.DataFrame(rows, schema=schema)
    return frame.with_columns(pl.col("landing_date").str.to_date("%Y-%m-%d")).select(MEDIA_FILES_SCHEMA.names())


def size_bucket_expr(column: str = "size_bytes") -> pl.Expr:
    """Expression labelling a byte count with its :data:`SIZE_BUCKETS` label."""
    *bounded, (_, last_label) = SIZE_BUCKETS
    expr: Any = pl
    for bound, label in bounded:
        expr = expr.when(pl.col(column) < bound).then(pl.lit(label))
    return expr.otherwise(pl.lit(last_label))


def media_collection_stats(media_files: pl.DataFrame | Iterable[MediaRecord | Mapping[str, Any]]) -> pl.DataFrame:
    """Files and bytes per detected type, size bucket and landing day (long format).

    Rows ``(dimension, value, files, bytes)``: one ``("all", "all", ...)``
    total, then one row per value of each dimension in :data:`DIMENSIONS`
    (size buckets in size order, days and types sorted). Each dimension's
    rows add up to the total. Input should be ``media_files`` (one row per
    sha256); repeated sha256 rows are counted once (first kept) so stats
    describe stored content.
    """
    df = media_files if isinstance(media_files, pl.DataFrame) else records_to_frame(media_files)
    df = df.unique(subset="sha256", keep="first", maintain_order=True)
    if df.height == 0:
        return pl.DataFrame({"dimension": ["all"], "value": ["all"], "files": [0], "bytes": [0]},
                            schema=COLLECTION_STATS_SCHEMA)
    df = df.with_columns(
        size_bucket_expr().alias("size_bucket"),
        pl.col("landing_date").cast(pl.String),
        pl.lit("all").alias("all"),
    )
    bucket_order = {label: i for i, (_, label) in enumerate(SIZE_BUCKETS)}
    parts = []
    for dim in DIMENSIONS:
        part = (
            df.group_by(dim)
            .agg(pl.len().cast(pl.Int64).alias("files"), pl.col("size_bytes").sum().cast(pl.Int64).alias("bytes"))
            .rename({dim: "value"})
            .with_columns(pl.lit(dim).alias("dimension"))
        )
        if dim == "size_bucket":
            part = part.sort(pl.col("value").replace_strict(bucket_order, return_dtype=pl.Int64))
        else:
            part = part.sort("value")
        parts.append(part.select(COLLECTION_STATS_SCHEMA.names()))
    return pl.concat(parts, how="vertical").cast(dict(COLLECTION_STATS_SCHEMA))  # type: ignore[arg-type]


def stats_summary(stats: pl.DataFrame) -> dict[str, Any]:
    """Nested plain dict of a stats frame, for asset metadata: {dimension: {value: {files, bytes}}}."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for row in stats.iter_rows(named=True):
        out.setdefault(row["dimension"], {})[row["value"]] = {"files": row["files"], "bytes": row["bytes"]}
    return out


def media_metadata_frame(records: Sequence[MediaRecord], descriptions: Sequence[Description]) -> pl.DataFrame:
    """Silver ``media_metadata`` rows: each record beside its description (same order).

    Both ok and quarantined files produce a row (``ok``/``reason``), so the
    asset can split silver from quarantine with a filter and conserve rows.
    """
    if len(records) != len(descriptions):
        raise ValueError(f"{len(records)} records but {len(descriptions)} descriptions")
    rows = []
    for rec, desc in zip(records, descriptions):
        row = desc.to_dict()
        row.pop("path")
        row.update(sha256=rec.sha256, bronze_path=rec.bronze_path, landing_date=rec.landing_date)
        rows.append(row)
    if not rows:
        return pl.DataFrame(schema=MEDIA_METADATA_SCHEMA)
    schema = {k: (pl.String if k == "landing_date" else v) for k, v in MEDIA_METADATA_SCHEMA.items()}
    frame = pl.DataFrame(rows, schema=schema)
    return frame.with_columns(pl.col("landing_date").str.to_date("%Y-%m-%d")).select(MEDIA_METADATA_SCHEMA.names())
