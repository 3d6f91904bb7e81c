"""Delta table -> float32 torch tensors, streamed in Arrow record batches.

Why streaming: a training set may not fit in memory twice (once as a DataFrame,
once as tensors); here only ``batch_rows`` rows are materialised at a time and
nothing goes through pandas.

Path of the bytes: delta-rs resolves the table *at a pinned version* (the file
list of that snapshot, so a concurrent writer cannot change what one epoch
reads) and exposes it as a pyarrow dataset (read through pyarrow's native
local filesystem for local tables); its record batches are re-cut to
exactly ``batch_rows`` rows by zero-copy slicing; each feature column is viewed
as numpy without a copy when it is float32 with no nulls (other numeric types
are cast on the way) and written once into a row-major ``rows x features``
float32 matrix, which ``torch.from_numpy`` wraps without a copy. That one copy
(column-major Arrow -> row-major matrix) is the floor for any reader that wants
a 2-D feature matrix.

Tables with deletion vectors or column mapping cannot be read as a plain
pyarrow dataset; they are read through delta-rs's own engine
(``DeltaTable.scan``) instead, where row order is not guaranteed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import torch
from deltalake import DeltaTable

DEFAULT_BATCH_ROWS = 65_536
_DATASET_UNSUPPORTED_FEATURES = frozenset({"deletionVectors", "columnMapping"})


class TensorBatch(NamedTuple):
    """``X`` float32 ``rows x features``; ``y`` float32 ``rows`` (None without a label column)."""

    X: torch.Tensor
    y: torch.Tensor | None


BatchesFn = Callable[[], Iterable[TensorBatch]]


# --------------------------------------------------------------------------- Delta snapshots


def open_snapshot(
    table_uri: str,
    version: int | None = None,
    storage_options: dict[str, str] | None = None,
) -> DeltaTable:
    """The table at ``version`` (latest when None); fails if that version does not exist."""
    return DeltaTable(table_uri, version=version, storage_options=storage_options or None)


def pin_version(
    table_uri: str,
    version: int | None = None,
    storage_options: dict[str, str] | None = None,
) -> int:
    """``version`` checked to exist, or the current version: what a run should record."""
    return int(open_snapshot(table_uri, version, storage_options).version())


def _needs_engine_scan(dt: DeltaTable) -> bool:
    features = set(dt.protocol().reader_features or [])
    return bool(features & _DATASET_UNSUPPORTED_FEATURES)


def _local_filesystem(dt: DeltaTable, table_uri: str) -> pafs.FileSystem | None:
    """pyarrow's native local filesystem rooted at the table, when that is safe; else None.

    Why: without one, ``to_pyarrow_dataset`` reads through delta-rs's
    Python-implemented filesystem handler, which costs about as much as the
    parquet decoding itself for float columns (see bench/training_input.py).
    Only for local tables whose file paths have no percent-escapes (paths in
    the Delta log are URI-encoded, and whether the names on disk carry the
    escapes depends on the writer); anything else keeps delta-rs's handler.
    """
    if "://" in table_uri and not table_uri.startswith("file://"):
        return None
    root = Path(table_uri.removeprefix("file://")).resolve()
    if any("%" in uri for uri in dt.file_uris()):
        return None
    return pafs.SubTreeFileSystem(str(root), pafs.LocalFileSystem())


def iter_record_batches(
    table_uri: str,
    columns: Sequence[str],
    version: int | None = None,
    storage_options: dict[str, str] | None = None,
    *,
    filter: pc.Expression | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> Iterator[pa.RecordBatch]:
    """Arrow record batches (at most ``batch_rows`` each) of ``columns`` at a pinned version."""
    dt = open_snapshot(table_uri, version, storage_options)
    cols = list(columns)
    names = {f.name for f in dt.schema().fields}
    missing = [c for c in cols if c not in names]
    if missing:
        raise KeyError(f"{table_uri}@v{dt.version()} has no column(s) {missing}")
    if not _needs_engine_scan(dt):
        dataset = dt.to_pyarrow_dataset(filesystem=_local_filesystem(dt, table_uri))
        yield from dataset.to_batches(columns=cols, filter=filter, batch_size=batch_rows)
        return
    # the filter may name columns outside the projection: scan them all, filter, then project
    reader = pa.RecordBatchReader.from_stream(dt.scan(columns=None if filter is not None else cols))
    for batch in reader:
        if filter is None:
            yield batch
            continue
        table = pa.Table.from_batches([batch])
        for i, field in enumerate(table.schema):  # DataFusion yields string_view; pyarrow compares string
            if pa.types.is_string_view(field.type):
                table = table.set_column(i, field.name, table.column(i).cast(pa.string()))
        kept = table.filter(filter).select(cols)
        for out in kept.to_batches(max_chunksize=batch_rows):
            if out.num_rows:
                yield out


def _rebatch(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[list[pa.RecordBatch]]:
    """Group batches (zero-copy slices) into runs of exactly ``rows`` rows (the last may be short)."""
    buffer: list[pa.RecordBatch] = []
    have = 0
    for batch in batches:
        offset = 0
        while offset < batch.num_rows:
            take = min(rows - have, batch.num_rows - offset)
            buffer.append(batch.slice(offset, take))
            have += take
            offset += take
            if have == rows:
                yield buffer
                buffer, have = [], 0
    if have:
        yield buffer


# --------------------------------------------------------------------------- Arrow -> tensors


def _column_numpy(arr: pa.Array, name: str, fill_null: float | None) -> np.ndarray:
    """One Arrow column as a 1-D numpy array, zero-copy when it is a null-free float32/float64/int."""
    if arr.null_count:
        if fill_null is None:
            raise ValueError(f"column {name!r} has {arr.null_count} null(s); pass fill_null= to impute")
        if not pa.types.is_floating(arr.type):
            arr = arr.cast(pa.float64())
        arr = pc.fill_null(arr, float(fill_null))
    t = arr.type
    if pa.types.is_floating(t) or pa.types.is_integer(t):
        return arr.to_numpy(zero_copy_only=False)  # zero-copy: primitive, no nulls
    if pa.types.is_boolean(t):
        return arr.to_numpy(zero_copy_only=False)  # bit-packed: one (unavoidable) unpack
    try:
        return arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise TypeError(f"column {name!r} of type {t} cannot be used as a numeric feature") from exc


def batches_to_tensors(
    batches: Sequence[pa.RecordBatch],
    feature_cols: Sequence[str],
    label_col: str | None = None,
    *,
    fill_null: float | None = None,
) -> TensorBatch:
    """Record batches (same schema) -> one ``TensorBatch``; exactly one copy of each value."""
    n = sum(b.num_rows for b in batches)
    X = np.empty((n, len(feature_cols)), dtype=np.float32)
    y = np.empty(n, dtype=np.float32) if label_col is not None else None
    start = 0
    for batch in batches:
        stop = start + batch.num_rows
        for j, col in enumerate(feature_cols):
            X[start:stop, j] = _column_numpy(batch.column(col), col, fill_null)
        if y is not None and label_col is not None:
            y[start:stop] = _column_numpy(batch.column(label_col), label_col, None)
        start = stop
    return TensorBatch(torch.from_numpy(X), torch.from_numpy(y) if y is not None else None)


def iter_delta_batches(
    table_uri: str,
    feature_cols: Sequence[str],
    label_col: str | None,
    version: int | None = None,
    batch_rows: int | None = DEFAULT_BATCH_ROWS,
    storage_options: dict[str, str] | None = None,
    *,
    filter: pc.Expression | None = None,
    fill_null: float | None = None,
) -> Iterator[TensorBatch]:
    """Stream the table as ``TensorBatch`` chunks of exactly ``batch_rows`` rows (last may be short).

    ``batch_rows=None``: the whole table as one chunk (one, possibly empty). ``version=None``
    reads the latest snapshot *as of the call*; pass a version (see :func:`pin_version` or
    :class:`DeltaTensorSource`) to make reruns read the same bytes. ``filter`` is a pyarrow
    expression pushed into the scan (partition pruning, row-group statistics). Nulls in a
    feature raise unless ``fill_null`` is given; a null label always raises.
    """
    if batch_rows is not None and batch_rows < 1:
        raise ValueError("batch_rows must be >= 1")
    feature_cols = list(feature_cols)
    if not feature_cols:
        raise ValueError("need at least one feature column")
    columns = feature_cols + ([label_col] if label_col is not None and label_col not in feature_cols else [])
    raw = iter_record_batches(table_uri, columns, version, storage_options, filter=filter,
                              batch_rows=batch_rows or DEFAULT_BATCH_ROWS)
    for group in _rebatch(raw, batch_rows) if batch_rows is not None else [list(raw)]:
        yield batches_to_tensors(group, feature_cols, label_col, fill_null=fill_null)


def load_tensors(
    table_uri: str,
    feature_cols: Sequence[str],
    label_col: str | None,
    version: int | None = None,
    storage_options: dict[str, str] | None = None,
    *,
    filter: pc.Expression | None = None,
    fill_null: float | None = None,
) -> TensorBatch:
    """The whole (small) table as one ``TensorBatch``; still no pandas, still one copy."""
    [whole] = iter_delta_batches(table_uri, feature_cols, label_col, version, None, storage_options,
                                 filter=filter, fill_null=fill_null)
    return whole


class DeltaTensorSource:
    """A Delta table pinned at one version, re-iterable once per epoch: a ``train_batches_fn``.

    The version is resolved when the source is built (``None`` -> the version
    current then), so every epoch, and :meth:`lineage` for the run record, see
    the same snapshot.
    """

    def __init__(
        self,
        table_uri: str,
        feature_cols: Sequence[str],
        label_col: str | None,
        version: int | None = None,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        storage_options: dict[str, str] | None = None,
        *,
        filter: pc.Expression | None = None,
        fill_null: float | None = None,
    ) -> None:
        self.table_uri = table_uri
        self.feature_cols = list(feature_cols)
        self.label_col = label_col
        self.storage_options = dict(storage_options or {})
        self.version = pin_version(table_uri, version, self.storage_options)
        self.batch_rows = batch_rows
        self.filter = filter
        self.fill_null = fill_null

    def __iter__(self) -> Iterator[TensorBatch]:
        return iter_delta_batches(
            self.table_uri, self.feature_cols, self.label_col, self.version, self.batch_rows,
            self.storage_options, filter=self.filter, fill_null=self.fill_null,
        )

    def __call__(self) -> Iterator[TensorBatch]:
        return iter(self)

    def load(self) -> TensorBatch:
        return load_tensors(self.table_uri, self.feature_cols, self.label_col, self.version,
                            self.storage_options, filter=self.filter, fill_null=self.fill_null)

    def lineage(self) -> dict[str, Any]:
        return {"table_uri": self.table_uri, "version": self.version,
                "feature_cols": list(self.feature_cols), "label_col": self.label_col,
                "filter": None if self.filter is None else str(self.filter)}


# --------------------------------------------------------------------------- standardisation


@dataclass(frozen=True)
class Standardizer:
    """Per-feature mean and (population) standard deviation; constant features get std 1."""

    mean: np.ndarray
    std: np.ndarray
    count: int

    def apply(self, X: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=X.dtype, device=X.device)
        std = torch.as_tensor(self.std, dtype=X.dtype, device=X.device)
        return (X - mean) / std

    def to_dict(self) -> dict[str, Any]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "count": int(self.count)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Standardizer:
        return cls(np.asarray(d["mean"], dtype=np.float64), np.asarray(d["std"], dtype=np.float64),
                   int(d["count"]))


class RunningMoments:
    """Mean and variance merged chunk by chunk (Chan et al.), in float64: one pass, stable."""

    def __init__(self, n_features: int | None = None) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None if n_features is None else np.zeros(n_features)
        self.m2: np.ndarray | None = None if n_features is None else np.zeros(n_features)

    def update(self, X: torch.Tensor | np.ndarray) -> None:
        x = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
        n_b = x.shape[0]
        if n_b == 0:
            return
        x = x.astype(np.float64, copy=False)
        mean_b = x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        if self.mean is None or self.m2 is None or self.count == 0:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.count * n_b / n)
        self.count = n

    def result(self, min_std: float = 1e-8) -> Standardizer:
        if self.count == 0 or self.mean is None or self.m2 is None:
            raise ValueError("no rows seen: cannot compute standardisation statistics")
        std = np.sqrt(self.m2 / self.count)
        std = np.where(std < min_std, 1.0, std)
        return Standardizer(self.mean.copy(), std, self.count)


def compute_standardization(batches: Iterable[TensorBatch | torch.Tensor]) -> Standardizer:
    """One streaming pass over ``batches`` (TensorBatch or bare X tensors)."""
    moments = RunningMoments()
    for b in batches:
        moments.update(b.X if isinstance(b, TensorBatch) else b)
    return moments.result()


def delta_standardization(
    table_uri: str,
    feature_cols: Sequence[str],
    version: int | None = None,
    storage_options: dict[str, str] | None = None,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    filter: pc.Expression | None = None,
    fill_null: float | None = None,
) -> Standardizer:
    """Standardisation statistics of a Delta table's features in one streaming pass."""
    return compute_standardization(
        iter_delta_batches(table_uri, feature_cols, None, version, batch_rows, storage_options,
                           filter=filter, fill_null=fill_null)
    )


def tensor_batches(X: torch.Tensor, y: torch.Tensor | None, batch_rows: int = DEFAULT_BATCH_ROWS) -> BatchesFn:
    """In-memory tensors as a ``train_batches_fn`` (views, no copy): for tests and small data."""
    if y is not None and y.shape[0] != X.shape[0]:
        raise ValueError("X and y have different row counts")

    def batches() -> Iterator[TensorBatch]:
        for start in range(0, X.shape[0], batch_rows):
            yield TensorBatch(X[start:start + batch_rows], None if y is None else y[start:start + batch_rows])

    return batches


__all__ = [
    "DEFAULT_BATCH_ROWS",
    "BatchesFn",
    "DeltaTensorSource",
    "RunningMoments",
    "Standardizer",
    "TensorBatch",
    "batches_to_tensors",
    "compute_standardization",
    "delta_standardization",
    "iter_delta_batches",
    "iter_record_batches",
    "load_tensors",
    "open_snapshot",
    "pin_version",
    "tensor_batches",
]
