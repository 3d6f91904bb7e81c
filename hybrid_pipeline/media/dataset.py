"""Torch dataset over the image training manifest, reading the raw bronze files.

Why raw bronze: the model trains on exactly the bytes lineage points at (the
sha256 in the manifest), not on a re-encoded copy; with ``verify_sha256=True``
(default) a file that no longer matches its hash fails loudly instead of
silently training on different data. Decoding happens in DataLoader workers
so a GPU is fed by prefetching CPU processes.

The split is a pure function of the content hash (:func:`split_for`): the
same image is in the same split in every run and every table version, and
duplicates (same bytes) can never leak across train/test.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import polars as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from hybrid_pipeline.lakehouse.catalog import GOLD_IMAGE_TRAINING_MANIFEST
from hybrid_pipeline.media.store import MediaRecord, resolve_bronze_path, unique_records

Split = Literal["train", "validation", "test"]
SPLITS: Final[tuple[Split, ...]] = ("train", "validation", "test")
MANIFEST_COLUMNS: Final = ("sha256", "bronze_path", "label", "split")


def split_for(sha256: str, train: float = 0.8, validation: float = 0.1) -> Split:
    """Deterministic split from the first 8 hex digits (32 bits) of the hash.

    ``sha256`` is uniform, so ``u = int(sha[:8], 16) / 2**32`` is uniform in
    [0, 1): ``u < train`` -> train, then validation, the rest test (80/10/10
    by default).
    """
    if len(sha256) < 8:
        raise ValueError(f"not a sha256 digest: {sha256!r}")
    if not (0.0 <= train and 0.0 <= validation and train + validation <= 1.0):
        raise ValueError("need 0 <= train, 0 <= validation, train + validation <= 1")
    u = int(sha256[:8], 16) / 2**32
    if u < train:
        return "train"
    if u < train + validation:
        return "validation"
    return "test"


def class_names(labels: Iterable[str]) -> list[str]:
    """Sorted distinct label names; numeric labels sort numerically ("2" < "10")."""
    distinct = set(labels)
    if all(_is_int(x) for x in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def build_image_manifest(
    records: Iterable[MediaRecord],
    labels: Mapping[str, str],
    *,
    classes: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Join ingested image records with ``labels`` (original_name -> label).

    One row per sha256 (duplicates collapse; a content whose landing names
    carry *different* labels is left out, since no label can be trusted).
    Unlabelled images and non-images are left out. ``label`` is the index into
    ``classes`` (default :func:`class_names` of the labels used), ``label_name``
    the original string. Columns: sha256, bronze_path, label, label_name, split.
    """
    images = [r for r in records if r.landing_subdir == "images" and r.detected_type in ("png", "jpeg")]
    by_sha: dict[str, set[str]] = {}
    for rec in images:
        name = labels.get(rec.original_name)
        if name is not None:
            by_sha.setdefault(rec.sha256, set()).add(name)
    rows = []
    for rec in unique_records(r for r in images if r.sha256 in by_sha):
        names = by_sha[rec.sha256]
        if len(names) == 1:
            rows.append((rec.sha256, rec.bronze_path, next(iter(names))))
    classes = list(classes) if classes is not None else class_names(n for _, _, n in rows)
    index = {name: i for i, name in enumerate(classes)}
    missing = {n for _, _, n in rows} - index.keys()
    if missing:
        raise ValueError(f"labels not in classes: {sorted(missing)}")
    return pl.DataFrame(
        {
            "sha256": [r[0] for r in rows],
            "bronze_path": [r[1] for r in rows],
            "label": [index[r[2]] for r in rows],
            "label_name": [r[2] for r in rows],
            "split": [split_for(r[0]) for r in rows],
        },
        schema=GOLD_IMAGE_TRAINING_MANIFEST.schema,
    )


class ImageManifestDataset(Dataset[tuple[torch.Tensor, int]]):
    """``(image, label)`` pairs: image is a float32 tensor ``1 x H x W``.

    Pixels are decoded from the bronze file with Pillow, converted to
    grayscale, optionally resized to ``image_size`` (H, W), scaled to [0, 1]
    and then standardised with ``normalize=(mean, std)`` when given; then
    ``transform`` (any tensor -> tensor callable) runs. The manifest is held as
    plain lists so DataLoader workers pickle it cheaply.
    """

    def __init__(
        self,
        manifest: pl.DataFrame | Sequence[Mapping[str, Any]],
        bronze_media_root: str | Path,
        *,
        split: Split | None = None,
        image_size: tuple[int, int] | None = None,
        normalize: tuple[float, float] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        verify_sha256: bool = True,
    ) -> None:
        rows = manifest.to_dicts() if isinstance(manifest, pl.DataFrame) else [dict(r) for r in manifest]
        for col in ("sha256", "bronze_path", "label"):
            if rows and col not in rows[0]:
                raise ValueError(f"manifest lacks column {col!r}")
        if split is not None:
            rows = [r for r in rows if (r.get("split") or split_for(r["sha256"])) == split]
        self.root = Path(bronze_media_root)
        # resolve (and so validate) every path up front: a bad manifest fails here, not mid-epoch
        self.paths = [str(resolve_bronze_path(self.root, r["bronze_path"])) for r in rows]
        self.sha256 = [str(r["sha256"]) for r in rows]
        self.labels = [int(r["label"]) for r in rows]
        self.image_size = image_size
        self.normalize = normalize
        self.transform = transform
        self.verify_sha256 = verify_sha256

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with open(self.paths[index], "rb") as fh:
            data = fh.read()
        if self.verify_sha256:
            actual = hashlib.sha256(data).hexdigest()
            if actual != self.sha256[index]:
                raise ValueError(
                    f"{self.paths[index]}: sha256 {actual} does not match manifest {self.sha256[index]}"
                )
        tensor = decode_image_tensor(data, self.image_size, self.normalize)
        if self.transform is not None:
            tensor = self.transform(tensor)
        return tensor, self.labels[index]


def decode_image_tensor(
    data: bytes,
    image_size: tuple[int, int] | None = None,
    normalize: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Encoded image bytes -> float32 tensor ``1 x H x W`` in [0, 1] (or standardised)."""
    with Image.open(io.BytesIO(data)) as im:
        gray = im.convert("L")
    if image_size is not None:
        h, w = image_size
        gray = gray.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(gray, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(arr.copy()).unsqueeze(0)
    if normalize is not None:
        mean, std = normalize
        tensor = (tensor - mean) / std
    return tensor


def make_loader(
    dataset: Dataset[Any],
    batch_size: int = 64,
    workers: int = 0,
    prefetch_factor: int | None = 2,
    pin_memory: bool | None = None,
    *,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    persistent_workers: bool | None = None,
) -> DataLoader[Any]:
    """A prefetching DataLoader with sane defaults.

    ``workers`` processes decode ahead, each keeping ``prefetch_factor``
    batches ready (ignored with ``workers=0``, where torch forbids it).
    ``pin_memory=None`` pins only when CUDA is available (page-locked
    batches copy to the GPU asynchronously). Shuffling is seeded so an
    epoch order is reproducible. Workers persist across epochs by default.
    """
    if batch_size < 1 or workers < 0:
        raise ValueError("batch_size must be >= 1 and workers >= 0")
    generator = torch.Generator()
    generator.manual_seed(seed)
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor
        kwargs["persistent_workers"] = True if persistent_workers is None else persistent_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        generator=generator,
        **kwargs,
    )


def split_counts(shas: Iterable[str]) -> dict[str, int]:
    """How many hashes fall in each split (for metadata and sanity checks)."""
    counts: dict[str, int] = dict.fromkeys(SPLITS, 0)
    for sha in shas:
        counts[split_for(sha)] += 1
    return counts


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


__all__ = [
    "ImageManifestDataset",
    "MANIFEST_COLUMNS",
    "SPLITS",
    "Split",
    "build_image_manifest",
    "class_names",
    "decode_image_tensor",
    "make_loader",
    "split_counts",
    "split_for",
]
