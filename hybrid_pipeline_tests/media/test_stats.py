"""media_files rows and media_collection_stats as polars frames."""

from __future__ import annotations

from datetime import datetime, timezone

import polars as pl

from hybrid_pipeline.media.extract import Description
from hybrid_pipeline.media.stats import (
    MEDIA_FILES_SCHEMA,
    MEDIA_METADATA_SCHEMA,
    media_collection_stats,
    media_metadata_frame,
    records_to_frame,
    size_bucket_expr,
    stats_summary,
)
from hybrid_pipeline.media.store import MediaRecord

WHEN = datetime(2024, 3, 1, tzinfo=timezone.utc)


def rec(i: int, detected: str, size: int, day: str, sha: str | None = None) -> MediaRecord:
    sha = sha or f"{i:064x}"
    ext = {"png": "png", "jpeg": "jpg", "pdf": "pdf", "txt": "txt"}[detected]
    return MediaRecord(sha256=sha, size_bytes=size, detected_type=detected, original_name=f"f{i}",  # type: ignore[arg-type]
                       landing_subdir="images", landing_date=day, ingested_at=WHEN,
                       bronze_path=f"{sha[:2]}/{sha}.{ext}", extension_mismatch=False,
                       duplicate_of=None, already_in_bronze=False)


RECORDS = [
    rec(1, "png", 500, "2024-03-01"),
    rec(2, "png", 2_000, "2024-03-01"),
    rec(3, "pdf", 2 << 20, "2024-03-02"),
    rec(4, "txt", 100, "2024-03-02"),
    rec(5, "png", 500, "2024-03-02", sha=f"{1:064x}"),  # same bytes as record 1: counted once
]


def lookup(stats: pl.DataFrame, dimension: str) -> dict[str, tuple[int, int]]:
    part = stats.filter(pl.col("dimension") == dimension)
    return {v: (f, b) for v, f, b in part.select("value", "files", "bytes").iter_rows()}


def test_stats_count_files_and_bytes_by_type_size_bucket_and_day() -> None:
    stats = media_collection_stats(RECORDS)

    assert lookup(stats, "all") == {"all": (4, 500 + 2_000 + (2 << 20) + 100)}
    assert lookup(stats, "detected_type") == {"pdf": (1, 2 << 20), "png": (2, 2_500), "txt": (1, 100)}
    assert lookup(stats, "size_bucket") == {"<1KiB": (2, 600), "1KiB-64KiB": (1, 2_000), "1MiB-16MiB": (1, 2 << 20)}
    assert lookup(stats, "landing_date") == {"2024-03-01": (2, 2_500), "2024-03-02": (2, (2 << 20) + 100)}


def test_each_dimension_adds_up_to_the_total() -> None:
    stats = media_collection_stats(records_to_frame(RECORDS))
    total = stats.filter(pl.col("dimension") == "all").select("files", "bytes").row(0)

    for dim in ("detected_type", "size_bucket", "landing_date"):
        assert stats.filter(pl.col("dimension") == dim).select(pl.sum("files"), pl.sum("bytes")).row(0) == total


def test_size_buckets_are_listed_in_size_order_with_exact_boundaries() -> None:
    sizes = pl.DataFrame({"size_bytes": [1023, 1024, (64 << 10) - 1, 64 << 10, (16 << 20) - 1, 16 << 20]})

    labels = sizes.select(size_bucket_expr()).to_series().to_list()

    assert labels == ["<1KiB", "1KiB-64KiB", "1KiB-64KiB", "64KiB-1MiB", "1MiB-16MiB", ">=16MiB"]
    stats = media_collection_stats([rec(i, "png", s, "2024-03-01") for i, s in enumerate([20 << 20, 10, 5000])])
    assert lookup(stats, "size_bucket").keys() == {"<1KiB", "1KiB-64KiB", ">=16MiB"}
    assert list(lookup(stats, "size_bucket")) == ["<1KiB", "1KiB-64KiB", ">=16MiB"]


def test_empty_input_gives_typed_frames() -> None:
    assert records_to_frame([]).schema == MEDIA_FILES_SCHEMA
    assert media_collection_stats([]).rows() == [("all", "all", 0, 0)]
    assert media_metadata_frame([], []).schema == MEDIA_METADATA_SCHEMA


def test_media_files_frame_has_the_declared_schema() -> None:
    frame = records_to_frame(RECORDS)

    assert frame.schema == MEDIA_FILES_SCHEMA and frame.height == 5
    assert frame["landing_date"].cast(pl.String).to_list()[0] == "2024-03-01"
    assert stats_summary(media_collection_stats(frame))["detected_type"]["png"] == {"files": 2, "bytes": 2_500}


def test_media_metadata_keeps_ok_and_quarantined_rows_side_by_side() -> None:
    descs = [
        Description(path="/b/1", ok=True, reason=None, detail=None, detected_type="png", size_bytes=500,
                    width=8, height=8, mode="L", format="PNG", perceptual_hash="00" * 8),
        Description(path="/b/2", ok=False, reason="corrupt_image", detail="verify: ...", detected_type="png",
                    size_bytes=2_000),
    ]

    frame = media_metadata_frame(RECORDS[:2], descs)

    assert frame.schema == MEDIA_METADATA_SCHEMA
    assert frame.select("sha256", "ok", "reason", "width").rows() == [
        (RECORDS[0].sha256, True, None, 8), (RECORDS[1].sha256, False, "corrupt_image", None)]
