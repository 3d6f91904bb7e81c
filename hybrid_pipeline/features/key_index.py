"""A sorted key index of one feature table version, for point-in-time joins without a key scan.

Why: a point-in-time join spends about half its time reading every row's key and
timestamp and sorting them (10M rows: ~0.8 s of ~1.9 s). That work depends only on the
table, not on the entity rows, and a Delta table version never changes, so it can be done
once per version and kept: the join then searches the index and reads only the feature
values of the winning rows.

The index holds, for every row with a non-null key and timestamp, the packed key
``code << bits | (ts - t_min + 1)`` (code: an integer key minus the smallest, or a string
key's position among the table's distinct keys; timestamps as integers in the table's own
unit), sorted ascending, rows with equal keys in created-timestamp order (null first), and
the source row numbers in that order. Row numbers are those of ``frame.with_row_index()``
on the frame the index was built from: the caller reads feature values by them, so it must
use an index only on the very table version (same files, same order) it was built from.
``fingerprint`` records what the caller needs to check that (see
:mod:`hybrid_pipeline.features.delta_offline_store`); :func:`load_key_index` refuses an
index whose fingerprint differs from the expected one.

The index can also keep feature columns (numbers and booleans; ``values=`` when
building): each as a row-major block in index order, so a join takes the winners' values
from the index, whose rows it has just found, instead of reading them out of the table's
files (at 10M rows x 20 float features: ~0.1 s instead of ~0.8 s). Blocks are read through
memory maps one window at a time, so a join's resident memory grows by one window, not by
the block. Building them costs the covered columns' size again on disk and, once, in memory.

An index built with a created timestamp field also keeps the created timestamps in index
order (``created.npy``), so as-known-at retrieval (``filter_by_created_timestamp``) is served
from it too: from each plain winner, a search steps back along the key's rows past those
created after the entity timestamp. An index saved without them is not used for as-known-at
(the join scans) and is rebuilt by ``DeltaOfflineStore.build_key_index(..., rebuild=False)``.

Matching gives exactly the rows :func:`hybrid_pipeline.features.pit.match_rows` gives, at
the table's unit or a finer one (a pandas frame's nanoseconds against a microsecond
table). Entity timestamps in a coarser unit (milliseconds against microseconds) are
converted to the table's unit by the join before it searches (exact); searching at the
coarser unit would truncate the table's timestamps and let a row written after an entity
timestamp match it.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from hybrid_pipeline.features.pit import TimeUnit, key_order

__all__ = ["KeyIndex", "MappedRows", "ValueBlock", "build_key_index", "load_key_index", "save_key_index", "value_columns"]

FORMAT_VERSION = 3
_NS_PER_UNIT = {"ns": 1, "us": 1_000, "ms": 1_000_000}
_INT64_MAX = 2**63 - 1
_META = "meta.json"
_DICTIONARY = "dictionary.parquet"
# feature column types a block can keep (fixed width, same bytes in numpy and polars)
_VALUE_DTYPES: dict[str, pl.DataType] = {
    str(t): t
    for t in (pl.Float64, pl.Float32, pl.Int64, pl.Int32, pl.Int16, pl.Int8,
              pl.UInt64, pl.UInt32, pl.UInt16, pl.UInt8, pl.Boolean)
}
_WINDOW_BYTES = 32 << 20  # a block is mapped this much at a time
_BUILD_CHUNK_ROWS = 1 << 18
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14+; Python 3.11 lacks the name


@dataclass(frozen=True)
class ValueBlock:
    """Feature columns of one type, row-major in index order: ``values[i]`` holds the
    columns' values in the index's ``i``-th row; ``valid`` (same shape) says which are not
    null, ``None`` when none is."""

    columns: tuple[str, ...]
    dtype: pl.DataType
    values: np.ndarray | MappedRows
    valid: np.ndarray | MappedRows | None = None


@dataclass(frozen=True)
class KeyIndex:
    """Sorted packed keys of a table version and their source row numbers (see module doc)."""

    keys: np.ndarray
    rows: np.ndarray
    key_min: int
    t_min: int
    t_max: int
    bits: int
    time_unit: TimeUnit
    fingerprint: Mapping[str, Any] = field(default_factory=dict)
    dictionary: pl.Series | None = None
    blocks: tuple[ValueBlock, ...] = ()
    created: np.ndarray | None = None
    """Created timestamps in index order (integers in ``created_unit``, ``int64`` min for
    null), kept when the index was built with a created timestamp field: what as-known-at
    matching (``winners(..., known_at=True)``) checks."""
    created_unit: TimeUnit | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def covers(self, column: str, dtype: pl.DataType) -> bool:
        """Whether the index keeps ``column``'s values, as ``dtype``."""
        return any(column in b.columns and b.dtype == dtype for b in self.blocks)

    def values(self, pos: np.ndarray, columns: Sequence[str]) -> pl.DataFrame:
        """``columns`` (each one :meth:`covers`) in the index's rows ``pos`` (ascending, as
        :meth:`winners` gives them), one row per position."""
        out: dict[str, pl.Series] = {}
        for block in self.blocks:
            wanted = [c for c in columns if c in block.columns]
            if not wanted:
                continue
            values = _take_rows(block.values, pos)
            valid = None if block.valid is None else _take_rows(block.valid, pos)
            for name in wanted:
                j = block.columns.index(name)
                series = pl.Series(name, values[j], dtype=block.dtype)
                if valid is not None and not valid[j].all():
                    series = pl.select(pl.when(pl.lit(pl.Series(valid[j]))).then(pl.lit(series))).to_series().rename(name)
                out[name] = series
        missing = [c for c in columns if c not in out]
        if missing:
            raise KeyError(f"the key index keeps no values of {missing}")
        return pl.DataFrame([out[c] for c in columns])

    def serves(self, key_dtype: pl.DataType, unit: TimeUnit) -> bool:
        """Whether :meth:`match` can answer for entity keys of ``key_dtype`` and entity
        timestamps in ``unit`` (integer keys, or string keys for a string index; the
        table's unit or a finer one: the join converts coarser entity timestamps to the
        table's unit before asking)."""
        if self.dictionary is None:
            kind_ok = key_dtype.is_integer()
        else:
            kind_ok = key_dtype == self.dictionary.dtype
        return kind_ok and _NS_PER_UNIT[self.time_unit] % _NS_PER_UNIT[unit] == 0

    def codes(self, key: pl.Series) -> pl.Series:
        """Each key's code (``Int64``), null where the table has no such key: the integer
        minus ``key_min``, or the position in the sorted ``dictionary`` of string keys."""
        if self.dictionary is None:
            key_max = self.key_min + (int(self.keys[-1]) >> self.bits) if len(self.keys) else self.key_min - 1
            wide = key.cast(pl.Int64, strict=False)  # UInt64 keys above int64: null, never found
            return pl.select(pl.when(wide.is_between(self.key_min, key_max)).then(wide - self.key_min)).to_series()
        at = self.dictionary.search_sorted(key).clip(upper_bound=max(len(self.dictionary) - 1, 0))
        found = self.dictionary.gather(at) == key if len(self.dictionary) else pl.Series([None] * len(key), dtype=pl.Boolean)
        return pl.select(pl.when(found).then(at.cast(pl.Int64))).to_series()

    def match(self, key: pl.Series, ts: np.ndarray, unit: TimeUnit, ttl: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Source row of each entity row's point-in-time winner (``-1``: none), and the
        winner's packed key as the index holds it (``-1``: none), for :meth:`verify`.
        Arguments as for :meth:`winners`."""
        return self.sources(*self.winners(key, ts, unit, ttl), len(key))

    def sources(self, at: np.ndarray, pos: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`match`'s answer for ``n`` entity rows from what :meth:`winners` gave."""
        match = np.full(n, -1, dtype=np.int64)
        packed = np.full(n, -1, dtype=np.int64)
        match[at] = self.rows[pos]
        packed[at] = np.asarray(self.keys)[pos]
        return match, packed

    def winners(
        self, key: pl.Series, ts: np.ndarray, unit: TimeUnit, ttl: int | None, known_at: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """The entity rows that have a point-in-time winner, and the winner's position in
        the index, ascending by position (so reads of the index's rows go forwards).

        ``key``: the entity join key (a type :meth:`serves`, nulls allowed); ``ts``: entity timestamps as
        integers in ``unit``; ``ttl``: the TTL in whole ``unit``s, ``None`` for unbounded;
        ``known_at``: as-known-at (only rows created at or before the entity timestamp; the
        index must keep ``created``). Semantics of :func:`hybrid_pipeline.features.pit.match_rows`.
        """
        if not self.serves(key.dtype, unit):
            raise ValueError(f"a key index in {self.time_unit} cannot match {key.dtype} keys at {unit}")
        if known_at and self.created is None:
            raise ValueError("this key index keeps no created timestamps: it cannot answer as-known-at")
        n = len(key)
        if n == 0 or len(self.keys) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        ratio = _NS_PER_UNIT[self.time_unit] // _NS_PER_UNIT[unit]
        keys = np.asarray(self.keys)  # a plain view of the memory map: numpy's fast paths
        scale, low = 1 << self.bits, self.t_min - 1
        # In polars (parallel, and its allocator reuses memory where fresh numpy arrays of
        # this size cost page faults): the probe of each entity row, ``-1`` for a key the
        # table lacks; ts_table <= t (in ``unit``)  <=>  ts_table <= floor(t / ratio).
        code, t = pl.col("code"), pl.col("ts")
        probes = (
            pl.DataFrame({"code": self.codes(key), "ts": pl.Series(ts, dtype=pl.Int64)})
            .select(
                (code * scale + (t // ratio).clip(low, self.t_max) - low).fill_null(-1).alias("probe"),
                pl.int_range(n, dtype=pl.Int64).alias("at"),
                t,
            )
            .sort("probe")  # sorted probes: a cache-friendly search
        )
        probe = probes["probe"].to_numpy()
        pos = np.searchsorted(keys, probe, side="right") - 1
        np.maximum(pos, 0, out=pos)
        winner = keys[pos]
        found = pl.DataFrame({"probe": probes["probe"], "winner": winner, "ts": probes["ts"]}).select(
            (pl.col("probe") >= 0)
            & (pl.col("winner") // scale == pl.col("probe") // scale)
            & (pl.col("winner") <= pl.col("probe"))  # nothing at or below the probe: pos clipped to 0
            & (
                pl.lit(True)
                if ttl is None
                else (pl.col("winner") % scale + low) * ratio >= pl.col("ts") - ttl
            )
        ).to_series().to_numpy()
        at = probes["at"].to_numpy()
        if not known_at:
            return at[found], pos[found]  # probes are sorted, so positions ascend
        at, pos, t = at[found], pos[found], probes["ts"].to_numpy()[found]
        keep = self._step_back_to_known(probe[found], t, unit, ttl, pos)
        at, pos = at[keep], pos[keep]
        order = np.argsort(pos, kind="stable")  # stepping back may have broken the ascent
        return at[order], pos[order]

    def _step_back_to_known(self, probe: np.ndarray, t: np.ndarray, unit: TimeUnit, ttl: int | None, pos: np.ndarray) -> np.ndarray:
        """As-known-at: moves each winner position in ``pos`` (in place) back along its
        key's rows until the row was created at or before the entity timestamp ``t`` (rows
        of a key are in (timestamp, created) order); returns which entity rows still have
        one (same key, inside the TTL)."""
        assert self.created is not None and self.created_unit is not None
        created = np.asarray(self.created)
        own, target = _NS_PER_UNIT[self.created_unit], _NS_PER_UNIT[unit]
        # created <= t, compared in the created timestamps' unit (floor t) or in ``unit`` (exact)
        cutoff = t // (own // target) if own >= target else t * (target // own)
        keys = np.asarray(self.keys)
        ratio = _NS_PER_UNIT[self.time_unit] // target
        low = self.t_min - 1

        def unknown(p: np.ndarray, cut: np.ndarray) -> np.ndarray:
            c = created[p]
            return (c == np.iinfo(np.int64).min) | (c > cut)

        keep = np.ones(len(pos), dtype=bool)
        idx = np.flatnonzero(unknown(pos, cutoff))
        code = probe >> self.bits
        while len(idx):
            p = pos[idx] - 1
            at = np.maximum(p, 0)
            ok = (p >= 0) & (keys[at] >> self.bits == code[idx])
            if ttl is not None:
                ok &= ((keys[at] & ((1 << self.bits) - 1)) + low) * ratio >= t[idx] - ttl
            pos[idx] = at
            keep[idx] = ok
            idx = idx[ok & unknown(at, cutoff[idx])]
        return keep

    def verify(self, key: pl.Series, ts: pl.Series, packed: np.ndarray) -> bool:
        """Whether rows read back by the row numbers :meth:`match` gave hold the keys and
        timestamps the index holds for them (``key``/``ts``: the table's columns of those
        rows, ``packed``: what :meth:`match` returned; rows with ``packed == -1`` are not
        checked). False means the index does not describe the table it was used on."""
        hit = packed >= 0
        if not isinstance(ts.dtype, pl.Datetime) or ts.dtype.time_unit != self.time_unit:
            return False
        if not self.serves(key.dtype, self.time_unit):
            return False
        mask = pl.Series(hit)
        code, t = self.codes(key.filter(mask)), ts.filter(mask)
        if code.null_count() or t.null_count():
            return False
        got = (code.to_numpy() << self.bits) | (t.to_physical().to_numpy() - self.t_min + 1)
        return bool(np.array_equal(got, packed[hit]))


def build_key_index(
    frame: pl.LazyFrame | pl.DataFrame,
    key: str,
    timestamp_field: str,
    created_timestamp_field: str | None = None,
    *,
    fingerprint: Mapping[str, Any] | None = None,
    values: Sequence[str] = (),
) -> KeyIndex | None:
    """The key index of ``frame`` (rows numbered as ``frame.with_row_index()`` numbers them).

    Integer keys are coded as ``key - key_min``; string keys by their position among the
    table's distinct keys (kept in the index as ``dictionary``). The columns of ``values``
    whose type a block can hold (numbers, booleans) are kept in the index too; others are not.

    ``None`` when the table cannot be indexed: a key that is neither an integer (fitting
    ``int64``) nor a string, a timestamp that is not a Datetime, or keys and timestamps
    spanning more than 63 bits together.
    """
    lazy = frame.lazy()
    schema = lazy.collect_schema()
    strings = schema[key] == pl.String
    if not (schema[key].is_integer() or strings) or not isinstance(schema[timestamp_field], pl.Datetime):
        return None
    unit: TimeUnit = schema[timestamp_field].time_unit  # type: ignore[union-attr, assignment]
    columns = [
        pl.col("__row"),
        (pl.col(key) if strings else pl.col(key).cast(pl.Int64, strict=False)).alias("key"),
        pl.col(timestamp_field).dt.epoch(unit).alias("ts"),  # type: ignore[arg-type]
    ]
    created_unit: TimeUnit = "us"
    if created_timestamp_field:
        created_dtype = schema[created_timestamp_field]
        created_unit = created_dtype.time_unit if isinstance(created_dtype, pl.Datetime) else "us"  # type: ignore[assignment]
        columns.append(pl.col(created_timestamp_field).dt.epoch(created_unit).fill_null(np.iinfo(np.int64).min).alias("created"))
    scanned = (
        lazy.with_row_index("__row")
        .select(columns)
        .collect(engine="streaming")
    )
    if schema[key] == pl.UInt64 and scanned["key"].null_count() != lazy.select(pl.col(key).null_count()).collect().item():
        return None  # keys above the int64 range (null after the cast)
    scanned = scanned.filter(pl.col("key").is_not_null() & pl.col("ts").is_not_null())
    recorded = dict(fingerprint or {})
    dictionary = scanned["key"].unique().sort() if strings else None
    if scanned.height == 0:
        empty = np.zeros(0, dtype=np.int64)
        return KeyIndex(empty, empty, 0, 0, 0, 1, unit, recorded, dictionary, _value_blocks(lazy, values, empty),
                        empty if created_timestamp_field else None, created_unit if created_timestamp_field else None)
    if dictionary is not None:  # dense codes in key order
        scanned = scanned.with_columns((pl.col("key").rank("dense") - 1).cast(pl.Int64).alias("key"))
    key_min, key_max = int(scanned["key"].min()), int(scanned["key"].max())  # type: ignore[arg-type]
    t_min, t_max = int(scanned["ts"].min()), int(scanned["ts"].max())  # type: ignore[arg-type]
    bits = (t_max - t_min + 2).bit_length()
    n_codes = key_max - key_min + 1
    if (n_codes << bits) > _INT64_MAX + 1:
        return None
    packed = scanned.select((pl.col("key") - key_min) * (1 << bits) + (pl.col("ts") - t_min + 1)).to_series().to_numpy()
    created = scanned["created"].to_numpy() if created_timestamp_field else None
    order = key_order(packed, bits, n_codes, created)
    source_rows = scanned["__row"].to_numpy()
    rows = source_rows[order]
    if len(rows) and int(rows.max()) <= np.iinfo(np.uint32).max:
        rows = rows.astype(np.uint32)
    blocks = _value_blocks(lazy, values, rows)
    kept_created = scanned["created"].to_numpy()[order] if created_timestamp_field else None
    return KeyIndex(packed[order], rows, key_min, t_min, t_max, bits, unit, recorded, dictionary, blocks,
                    kept_created, created_unit if created_timestamp_field else None)


def value_columns(schema: Mapping[str, pl.DataType], columns: Sequence[str]) -> list[str]:
    """The ``columns`` of a table with ``schema`` that an index can keep (numbers, booleans)."""
    return [c for c in dict.fromkeys(columns) if str(schema[c]) in _VALUE_DTYPES]


def _value_blocks(frame: pl.LazyFrame, columns: Sequence[str], rows: np.ndarray) -> tuple[ValueBlock, ...]:
    """Blocks of ``frame``'s ``columns`` (those of a type a block holds, one block per
    type) in the order of the source rows ``rows``."""
    schema = frame.collect_schema()
    by_type: dict[str, list[str]] = {}
    for name in value_columns(schema, columns):
        by_type.setdefault(str(schema[name]), []).append(name)
    blocks = []
    for type_name, names in by_type.items():
        table = frame.select(names).collect()
        filler = False if type_name == "Boolean" else 0
        has_nulls = any(table[c].null_count() for c in names)
        valid = table.select(pl.col(names).is_not_null()).to_numpy(order="c") if has_nulls else None
        # row-major first (sequential), then whole rows taken in index order
        source = table.select(pl.col(names).fill_null(filler)).to_numpy(order="c")
        del table
        values = _take_in_order(source, rows)
        del source
        if valid is not None:
            valid = _take_in_order(valid, rows)
        blocks.append(ValueBlock(tuple(names), _VALUE_DTYPES[type_name], values, valid))
    return tuple(blocks)


def _take_in_order(source: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``source[rows]`` (whole rows), in chunks on as many threads as polars uses: a random
    gather from a large array waits on memory, and two threads wait in parallel (10M rows
    x 20 float64: ~1.2 s instead of 3.5-7 s in one call)."""
    out = _empty((len(rows), *source.shape[1:]), source.dtype)
    starts = range(0, len(rows), _BUILD_CHUNK_ROWS)

    def take(lo: int) -> None:
        np.take(source, rows[lo:lo + _BUILD_CHUNK_ROWS], axis=0, out=out[lo:lo + _BUILD_CHUNK_ROWS])

    with ThreadPoolExecutor(max(1, pl.thread_pool_size())) as pool:
        list(pool.map(take, starts))
    return out


def _empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array in its own anonymous mapping of ordinary pages. numpy asks
    the kernel for huge pages on large arrays; where the kernel compacts memory to find
    them (transparent huge pages with ``defrag=madvise``) a first touch can stall for tenths
    of a second (measured: 0.03-0.4 s for 150 MB, against a steady 0.05 s with these)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if size == 0:
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, size), dtype=dtype).reshape(shape)


class MappedRows:
    """A 2-D ``.npy`` array mapped whole from its file, read a window of rows at a time
    (:func:`_take_rows`): a window's pages are mapped in one call before it is read and
    dropped from this process after, so no more than a window of the file is resident
    here. The mapping stays readable when the file is replaced or removed (an index
    rebuilt or pruned while a join reads it)."""

    def __init__(self, path: str | Path) -> None:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_2_0 if version >= (2, 0) else np.lib.format.read_array_header_1_0
            shape, fortran, dtype = read_header(handle)
            if fortran or len(shape) != 2:
                raise ValueError(f"{path}: not a C-ordered 2-D array")
            self.offset = handle.tell()
            size = int(np.prod(shape)) * dtype.itemsize
            self.mapping = mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ) if size else None
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.dtype = dtype
        self.array = (
            np.frombuffer(self.mapping, dtype=dtype, count=int(np.prod(shape)), offset=self.offset).reshape(shape)
            if self.mapping is not None
            else np.empty(shape, dtype=dtype)
        )

    def window(self, lo: int, hi: int, dense: bool) -> np.ndarray:
        """Rows ``lo`` to ``hi - 1``; ``dense``: map all their pages now (one call instead of
        a fault per page)."""
        if dense and self.mapping is not None:
            start, length = self._pages(lo, hi)
            try:
                self.mapping.madvise(_MADV_POPULATE_READ, start, length)
            except OSError:  # a kernel before 5.14: pages are faulted in as read
                pass
        return self.array[lo:hi]

    def release(self, lo: int, hi: int) -> None:
        """Drop the pages of rows ``lo`` to ``hi - 1`` from this process (not from the page cache)."""
        if self.mapping is not None:
            self.mapping.madvise(mmap.MADV_DONTNEED, *self._pages(lo, hi))

    def _pages(self, lo: int, hi: int) -> tuple[int, int]:
        row_bytes = self.dtype.itemsize * self.shape[1]
        start = self.offset + lo * row_bytes
        aligned = start - start % mmap.PAGESIZE
        return aligned, self.offset + hi * row_bytes - aligned


def _in_memory(array: np.ndarray | MappedRows) -> np.ndarray:
    return np.ascontiguousarray(array.array if isinstance(array, MappedRows) else array)


def _take_rows(block: np.ndarray | MappedRows, pos: np.ndarray) -> np.ndarray:
    """``block[pos].T`` as a C-ordered array (one contiguous row per column) for ascending
    ``pos``, taken a window of rows at a time (a small transpose stays in cache)."""
    rows, width = block.shape
    out = _empty((width, len(pos)), block.dtype)
    row_bytes = block.dtype.itemsize * width
    window = max(1, _WINDOW_BYTES // max(1, row_bytes))
    cuts = np.searchsorted(pos, np.arange(0, rows + window, window), side="left")
    for w in range(len(cuts) - 1):
        a, b = int(cuts[w]), int(cuts[w + 1])
        if a == b:
            continue
        lo, hi = w * window, min(rows, (w + 1) * window)
        if isinstance(block, MappedRows):
            part = block.window(lo, hi, dense=(b - a) * mmap.PAGESIZE >= (hi - lo) * row_bytes)  # a wanted row per page
            out[:, a:b] = np.take(part, pos[a:b] - lo, axis=0).T
            block.release(lo, hi)
        else:
            out[:, a:b] = np.take(block[lo:hi], pos[a:b] - lo, axis=0).T
    return out


def save_key_index(index: KeyIndex, directory: str | Path) -> Path:
    """Write ``index`` to ``directory`` (created; replaced atomically if it exists)."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        np.save(staging / "keys.npy", np.ascontiguousarray(index.keys, dtype=np.int64))
        np.save(staging / "rows.npy", np.ascontiguousarray(index.rows))
        if index.dictionary is not None:
            index.dictionary.to_frame("key").write_parquet(staging / _DICTIONARY)
        if index.created is not None:
            np.save(staging / "created.npy", np.ascontiguousarray(index.created, dtype=np.int64))
        blocks = []
        for i, block in enumerate(index.blocks):
            np.save(staging / f"values_{i}.npy", _in_memory(block.values))
            if block.valid is not None:
                np.save(staging / f"valid_{i}.npy", _in_memory(block.valid))
            blocks.append({"columns": list(block.columns), "dtype": str(block.dtype), "valid": block.valid is not None})
        meta = {
            "format": FORMAT_VERSION,
            "key_min": index.key_min,
            "t_min": index.t_min,
            "t_max": index.t_max,
            "bits": index.bits,
            "time_unit": index.time_unit,
            "rows": len(index),
            "dictionary": index.dictionary is not None,
            "blocks": blocks,
            "created_unit": index.created_unit if index.created is not None else None,
            "fingerprint": dict(index.fingerprint),
        }
        (staging / _META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        if target.exists():
            old = target.parent / f".{target.name}.old.{uuid.uuid4().hex}"
            os.replace(target, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / _META).exists():
                raise
            # another writer put the same index (same fingerprint, same content) in place first
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_key_index(directory: str | Path, fingerprint: Mapping[str, Any]) -> KeyIndex | None:
    """The index in ``directory`` if it describes ``fingerprint``; ``None`` when there is
    none, it is unreadable, of another format, or describes something else. The arrays are
    memory-mapped: a join reads only the pages its searches touch."""
    path = Path(directory)
    try:
        meta = json.loads((path / _META).read_text())
        if meta.get("format") != FORMAT_VERSION:
            return None
        if meta.get("fingerprint") != json.loads(json.dumps(dict(fingerprint), sort_keys=True, default=str)):
            return None
        keys = np.load(path / "keys.npy", mmap_mode="r")
        rows = np.load(path / "rows.npy", mmap_mode="r")
        dictionary = pl.read_parquet(path / _DICTIONARY).to_series() if meta["dictionary"] else None
        blocks = tuple(_load_block(path, i, entry, meta["rows"]) for i, entry in enumerate(meta["blocks"]))
        created_unit = meta.get("created_unit")
        created = np.load(path / "created.npy", mmap_mode="r") if created_unit else None
    except (OSError, ValueError, KeyError, TypeError, pl.exceptions.PolarsError):
        return None
    if len(keys) != meta["rows"] or len(rows) != meta["rows"] or keys.dtype != np.int64:
        return None
    if created is not None and (len(created) != meta["rows"] or created.dtype != np.int64):
        return None
    return KeyIndex(
        keys, rows, int(meta["key_min"]), int(meta["t_min"]), int(meta["t_max"]), int(meta["bits"]),
        meta["time_unit"], meta["fingerprint"], dictionary, blocks, created, created_unit,
    )


def _load_block(path: Path, i: int, entry: Mapping[str, Any], n_rows: int) -> ValueBlock:
    """Block ``i`` of the index in ``path``, memory-mapped; ``ValueError`` when its files do
    not have the shape and type its entry in the metadata says."""
    dtype = _VALUE_DTYPES[entry["dtype"]]
    columns = tuple(entry["columns"])
    values = MappedRows(path / f"values_{i}.npy")
    valid = MappedRows(path / f"valid_{i}.npy") if entry["valid"] else None
    expected = pl.Series([], dtype=dtype).to_numpy().dtype
    if values.shape != (n_rows, len(columns)) or values.dtype != expected:
        raise ValueError(f"value block {i} does not match the index")
    if valid is not None and (valid.shape != values.shape or valid.dtype != np.bool_):
        raise ValueError(f"validity of value block {i} does not match the index")
    return ValueBlock(columns, dtype, values, valid)
