"""Unstructured data (images and documents): pure, Dagster-free library code.

Flow: landing ``media/{images,docs}`` --:func:`ingest_landing_media`--> bronze
content-addressed files + ``media_files`` records --:func:`describe_many`-->
``media_metadata`` (ok or quarantined with a reason) --:func:`build_image_manifest`
--> torch :class:`ImageManifestDataset` reading the raw bronze bytes.

Modules: ``detect`` (magic bytes), ``store`` (bronze), ``extract`` (describe),
``stats`` (polars tables), ``dataset`` (torch; imported lazily because torch
is heavy), ``demo`` (demo and broken test files).
"""

from __future__ import annotations

from typing import Any

from hybrid_pipeline.media.detect import MediaType, detect_bytes, detect_file
from hybrid_pipeline.media.extract import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_PDF_BUDGET,
    QUARANTINE_REASONS,
    Description,
    PdfBudget,
    describe_file,
    describe_many,
)
from hybrid_pipeline.media.stats import media_collection_stats, media_metadata_frame, records_to_frame
from hybrid_pipeline.media.store import (
    MAX_FOLDER_DEPTH,
    MediaRecord,
    RejectedFile,
    ingest_landing_media,
    load_labels,
    read_labels,
    unique_records,
)

_LAZY = {
    "ImageManifestDataset": "hybrid_pipeline.media.dataset",
    "build_image_manifest": "hybrid_pipeline.media.dataset",
    "make_loader": "hybrid_pipeline.media.dataset",
    "split_for": "hybrid_pipeline.media.dataset",
    "write_demo_media": "hybrid_pipeline.media.demo",
    "write_broken_media": "hybrid_pipeline.media.demo",
}


def __getattr__(name: str) -> Any:  # PEP 562: torch/sklearn load only when asked for
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_PDF_BUDGET",
    "Description",
    "ImageManifestDataset",
    "MAX_FOLDER_DEPTH",
    "MediaRecord",
    "MediaType",
    "PdfBudget",
    "QUARANTINE_REASONS",
    "RejectedFile",
    "build_image_manifest",
    "describe_file",
    "describe_many",
    "detect_bytes",
    "detect_file",
    "ingest_landing_media",
    "load_labels",
    "make_loader",
    "media_collection_stats",
    "media_metadata_frame",
    "read_labels",
    "records_to_frame",
    "split_for",
    "unique_records",
    "write_broken_media",
    "write_demo_media",
]
