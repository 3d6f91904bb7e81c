"""An exact cosine index: unit vectors in one float32 matrix, items beside them, versioned on disk.

Why exact: at the scale of this lakehouse (10^5 vectors of 384 dimensions) one matrix-vector
product answers a k=10 query in milliseconds on two cores (``bench/embeddings.py``), recall is
1.0 by construction, an update is a rewrite of two files, and there is no approximate
structure (HNSW graph, IVF lists) to tune, rebuild or keep consistent with the Delta table.
The same vectors are also declared to Feast as a vector field (``features/repo.py``) for
stores with their own vector index.

On disk, ``<dir>/<version>/{vectors.npy, items.parquet, manifest.json}`` and a ``CURRENT``
file naming the version: a writer builds a new version beside the old one and replaces
``CURRENT`` atomically, so a reader never sees half an index, and a reader notices a new
version by that one file.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

CURRENT = "CURRENT"
ITEM_COLUMNS = pl.Schema(
    {
        "id": pl.String(),  # chunk_id, or the image's sha256
        "sha256": pl.String(),  # content hash of the raw file
        "bronze_path": pl.String(),
        "detected_type": pl.String(),
        "landing_date": pl.Date(),
        "original_name": pl.String(),
        "text": pl.String(),  # the chunk's text (null for images)
    }
)


def exact_top_k(vectors: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force cosine ranking in float64 (the reference the index is tested against): rows, scores."""
    v = vectors.astype(np.float64)
    q = query.astype(np.float64)
    norms = np.linalg.norm(v, axis=1) * max(np.linalg.norm(q), 1e-300)
    scores = (v @ q) / np.where(norms == 0, 1.0, norms)
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    return order, scores[order]


@dataclass
class VectorIndex:
    """``vectors[i]`` (unit length) is the embedding of ``items[i]``, made by ``model_id``."""

    collection: str
    model_id: str
    vectors: np.ndarray
    items: pl.DataFrame
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[0] != self.items.height:
            raise ValueError(f"{self.vectors.shape[0] if self.vectors.ndim == 2 else '?'} vectors for "
                             f"{self.items.height} items")
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        self._row = {item: i for i, item in enumerate(self.items["id"].to_list())}
        names, codes = np.unique(np.asarray(self.items["detected_type"].fill_null("").to_list(), dtype=str),
                                 return_inverse=True)
        self._types = codes.astype(np.int32)  # small integers: a type filter is one vectorised comparison
        self._type_codes = {str(n): i for i, n in enumerate(names)}
        self._days = self.items["landing_date"].cast(pl.Int32).fill_null(-(2**31)).to_numpy()

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return self.items.height

    def row_of(self, item_id: str) -> int | None:
        return self._row.get(item_id)

    def mask(self, types: frozenset[str] | None = None, day_from: date | None = None,
             day_to: date | None = None) -> np.ndarray | None:
        """Rows passing the filters (``None``: all rows)."""
        if types is None and day_from is None and day_to is None:
            return None
        keep = np.ones(len(self), dtype=bool)
        if types is not None:
            keep &= np.isin(self._types, [self._type_codes[t] for t in types if t in self._type_codes])
        epoch = date(1970, 1, 1)
        if day_from is not None:
            keep &= self._days >= (day_from - epoch).days
        if day_to is not None:
            keep &= self._days <= (day_to - epoch).days
        return keep

    def search(self, query: np.ndarray, k: int, mask: np.ndarray | None = None,
               exclude_row: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows of highest cosine with ``query`` among ``mask`` (ties: lower row first)."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if len(self) == 0:  # nothing embedded yet (e.g. only empty documents): no hits, not an error
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        if q.shape[0] != self.dim:
            raise ValueError(f"query has {q.shape[0]} dimensions, the index {self.dim}")
        norm = float(np.linalg.norm(q))
        if norm > 0:
            q = q / norm
        # one product over the whole matrix (no copy of a filtered subset); rows filtered out score -inf
        scores = self.vectors @ q if len(self) else np.empty(0, dtype=np.float32)
        allowed = np.ones(len(self), dtype=bool) if mask is None else mask.copy()
        if exclude_row is not None:
            allowed[exclude_row] = False
        if mask is not None or exclude_row is not None:
            scores = np.where(allowed, scores, -np.inf)
        k = min(k, int(allowed.sum()) if (mask is not None or exclude_row is not None) else len(self))
        if k <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        top = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(scores.shape[0])
        top = top[np.lexsort((top, -scores[top]))]
        return top.astype(np.int64), scores[top].astype(np.float32)

    # -- disk ------------------------------------------------------------------------------------

    def save(self, directory: str | Path, keep: int = 2) -> str:
        """Write a new version under ``directory`` and point ``CURRENT`` at it; older versions beyond ``keep`` go."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        version = f"{_now_ns():020d}-{uuid.uuid4().hex[:8]}"
        tmp = root / f".{version}.tmp"
        tmp.mkdir()
        np.save(tmp / "vectors.npy", self.vectors)
        self.items.write_parquet(tmp / "items.parquet")
        (tmp / "manifest.json").write_text(json.dumps({
            "collection": self.collection, "model_id": self.model_id, "count": len(self), "dim": self.dim,
            **self.extra}, sort_keys=True))
        os.replace(tmp, root / version)
        pointer = root / f".{CURRENT}.{version}"
        pointer.write_text(version)
        os.replace(pointer, root / CURRENT)
        self.version = version
        versions = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for old in versions[:-keep]:
            shutil.rmtree(root / old, ignore_errors=True)
        return version

    @classmethod
    def current_version(cls, directory: str | Path) -> str | None:
        try:
            return (Path(directory) / CURRENT).read_text().strip() or None
        except FileNotFoundError:
            return None

    @classmethod
    def load(cls, directory: str | Path) -> VectorIndex:
        """The version ``CURRENT`` names; ``FileNotFoundError`` when no index was written yet."""
        root = Path(directory)
        version = cls.current_version(root)
        if version is None:
            raise FileNotFoundError(f"no vector index under {root} (run the embedding assets first)")
        manifest = json.loads((root / version / "manifest.json").read_text())
        vectors = np.load(root / version / "vectors.npy")
        items = pl.read_parquet(root / version / "items.parquet")
        extra = {k: v for k, v in manifest.items() if k not in ("collection", "model_id", "count", "dim")}
        return cls(manifest["collection"], manifest["model_id"], vectors, items, version, extra)


def _now_ns() -> int:
    import time

    return time.time_ns()
