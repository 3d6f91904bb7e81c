"""A compact, persistent index of the event_ids that ``silver/events`` holds, per landing day.

Why: cross-day dedup and the whole-table uniqueness check ask one question every day, "which of
these ids does another landing day already keep?". Answered by scanning silver's ``event_id``
column, a day's cost grows with the table's history. The index answers it from 8 bytes per
stored id: per landing day, one Parquet file of the day's ids' 64-bit hashes (sorted), with each
id's lineage (``event_id``, ``source_file``, ``line_number``, ``event_date``) beside it. A lookup
reads the hash column of every day (a few MB), and the lineage only of the days that have a hit;
the ids are then matched exactly, so a hash collision never gives a wrong answer.

The index is derived data, kept under ``<lakehouse root>/_index/silver/events/`` through the
lakehouse's filesystem helper (:func:`hybrid_pipeline.lakehouse.storage.filesystem`: a local
path or an ``s3://`` root alike), and never trusted blindly: ``manifest.parquet`` names the
silver Delta version (and table id) it describes, and :meth:`EventIndex.current` compares it
with the table before every use. Behind, it catches up: the polars silver step records the
landing days it changed in its commit (``COMMIT_DAYS_KEY``), so only those days are re-read from
silver at the new version. A commit that changed data without saying which days (another
writer: the Spark engine, a repair) is explained by the data files that differ between the two
versions: the landing_date range of each such file's statistics names the days to re-read.
A file without those statistics, a different table, a different hash implementation or a
missing or unreadable manifest rebuilds the index from silver. A crash between a silver commit
and the index update therefore costs one catch-up, never a wrong answer.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from hybrid_pipeline.lakehouse import catalog, storage
from hybrid_pipeline.lakehouse.tables import Lakehouse

FORMAT = 1
MANIFEST = "manifest.parquet"
# The custom commit metadata key under which a silver write lists the landing days it changed.
COMMIT_DAYS_KEY = "hybrid.landing_days"
# Commits that never change rows: the index stays valid across them.
NO_DATA_CHANGE = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES", "CREATE TABLE"})
HASH_SEED = 0x5EED
# polars' hash is stable within a version only; an index built by another version is rebuilt.
HASHER = f"polars-{pl.__version__}-seed{HASH_SEED}"
# What dedup needs of a stored record (cf. ``engines.compute.EXISTING_COLUMNS``).
LINEAGE_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "landing_date": pl.String(),
    "source_file": pl.String(),
    "line_number": pl.Int64(),
    "event_date": pl.Date(),
}
# Hash-sorted row groups this small let a lookup with few hits read little lineage.
ROW_GROUP_ROWS = 16_384
_FILE_COLUMNS = ("h", "event_id", "source_file", "line_number", "event_date")
# Files of rewritten days are deleted once this old (a concurrent reader may still hold the manifest).
_GARBAGE_AGE_S = 3600.0


def id_hashes(ids: pl.Series) -> pl.Series:
    """The index's 64-bit hash of each event_id."""
    return ids.cast(pl.String).hash(seed=HASH_SEED).alias("h")


@dataclass
class Manifest:
    """What the index describes: a silver version (of one table id) and a file per landing day."""

    table_version: int
    table_id: str
    hasher: str = HASHER
    days: dict[str, str] = field(default_factory=dict)  # landing day -> file name under days/
    rows: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "table_version": self.table_version, "table_id": self.table_id,
                           "hasher": self.hasher, "days": self.days, "rows": self.rows}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest | None:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            return None
        return cls(int(data["table_version"]), str(data["table_id"]), str(data["hasher"]), dict(data["days"]), dict(data.get("rows", {})))


@dataclass(frozen=True)
class Refresh:
    """How :meth:`EventIndex.current` brought the index to the table's version (for metadata and tests)."""

    action: str  # "fresh", "caught_up" (from the commits' landing days or changed files), "rebuilt", "empty"
    days: tuple[str, ...] = ()
    reason: str = ""


class EventIndex:
    """The event_id index of ``silver/events`` under ``lh``'s root."""

    def __init__(self, lh: Lakehouse, table: str = catalog.SILVER_EVENTS.name) -> None:
        self.lh = lh
        self.table = table
        root = lh.path("_index", *table.split("/"))
        # the lakehouse's own filesystem helper: the settings and credentials its tables use
        self.fs, self.prefix = storage.filesystem(root, lh.storage_options)
        self.local = not storage.is_remote(root)
        self.manifest: Manifest | None = None
        self.last_refresh = Refresh("empty")

    # -- paths -------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _read_manifest(self) -> Manifest | None:
        from pyarrow.fs import FileType

        path = self._path(MANIFEST)
        try:
            if self.fs.get_file_info(path).type != FileType.File:
                return None
            return Manifest.from_json(pq.read_table(path, filesystem=self.fs).column("manifest")[0].as_py())
        except (OSError, ValueError, KeyError, TypeError, IndexError, pa.ArrowException):
            return None  # unreadable: rebuilt

    def _write_manifest(self, manifest: Manifest) -> None:
        # a one-cell Parquet file: written and read like the day files, on any store
        data = pa.table({"manifest": [manifest.to_json()]})
        path = self._path(MANIFEST)
        if self.local:  # local disk: write aside, then rename (atomic)
            self.fs.create_dir(self.prefix, recursive=True)
            tmp = self._path(f".manifest-{uuid.uuid4().hex}.tmp")
            pq.write_table(data, tmp, filesystem=self.fs)
            self.fs.move(tmp, path)
        else:  # an object store PUT replaces the object atomically
            pq.write_table(data, path, filesystem=self.fs)
        self.manifest = manifest

    def _write_day(self, day: str, rows: pl.DataFrame) -> str:
        """One landing day's records (``LINEAGE_SCHEMA``) as a new file, sorted by hash; its name."""
        frame = rows.select(id_hashes(rows["event_id"]), *_FILE_COLUMNS[1:]).sort("h")
        name = f"{day}-{uuid.uuid4().hex[:12]}.parquet"
        if self.local:
            self.fs.create_dir(self._path("days"), recursive=True)
        pq.write_table(
            frame.to_arrow(compat_level=pl.CompatLevel.oldest()),
            self._path("days", name),
            filesystem=self.fs,
            compression={"h": "none", "event_id": "zstd", "source_file": "zstd", "line_number": "zstd", "event_date": "zstd"},
            use_dictionary=["source_file", "event_date"],
            row_group_size=ROW_GROUP_ROWS,
            write_statistics=["h"],
        )
        return name

    # -- keeping the index current --------------------------------------------------------
    def current(self) -> EventIndex:
        """Bring the index to the table's current version (see the module doc); returns self."""
        if not self.lh.exists(self.table):
            self.manifest, self.last_refresh = None, Refresh("empty")
            return self
        dt = self.lh.delta(self.table)
        version, table_id = dt.version(), str(dt.metadata().id)
        manifest = self._read_manifest()
        if manifest is None:
            return self._rebuild(version, table_id, "no readable manifest")
        if manifest.table_id != table_id or manifest.hasher != HASHER or manifest.table_version > version:
            return self._rebuild(version, table_id, "another table, hash or a newer version")
        if manifest.table_version == version:
            self.manifest, self.last_refresh = manifest, Refresh("fresh")
            return self
        days = self._changed_days(dt, manifest.table_version, version)
        if days is None:  # another writer: the files it added or removed say which days changed
            days = self._days_of_changed_files(manifest, version)
        if days is None:
            return self._rebuild(version, table_id, "changed files without landing-day statistics")
        self.manifest = manifest
        self._refresh_days(days, version)
        self.last_refresh = Refresh("caught_up", tuple(sorted(days)))
        return self

    def _changed_days(self, dt: Any, since: int, version: int) -> set[str] | None:
        days: set[str] = set()
        entries = [h for h in dt.history(version - since) if since < int(h.get("version", -1)) <= version]
        if len(entries) != version - since:
            return None  # history cleaned up or incomplete
        for entry in entries:
            if entry.get("operation") in NO_DATA_CHANGE:
                continue
            listed = entry.get(COMMIT_DAYS_KEY)
            if listed is None:
                return None
            days.update(json.loads(listed))
        return days

    def _files(self, version: int) -> dict[str, tuple[str | None, str | None]]:
        """Data files of the table at ``version`` with their landing_date min and max (file statistics)."""
        adds = pa.table(self.lh.delta(self.table, version=version).get_add_actions(flatten=True))
        low = adds.column("min.landing_date").to_pylist() if "min.landing_date" in adds.column_names else [None] * adds.num_rows
        high = adds.column("max.landing_date").to_pylist() if "max.landing_date" in adds.column_names else [None] * adds.num_rows
        return dict(zip(adds.column("path").to_pylist(), zip(low, high, strict=True), strict=True))

    def _days_of_changed_files(self, manifest: Manifest, version: int) -> set[str] | None:
        """The landing days whose rows may differ between the manifest's version and ``version``:
        those within the landing_date range of a file one version has and the other has not.
        None when a changed file has no such statistics (or the old version is gone from the log)."""
        try:
            old, new = self._files(manifest.table_version), self._files(version)
        except Exception:  # noqa: BLE001 - any failure to read the old log means: rebuild
            return None
        changed = [old.get(p) or new[p] for p in set(old) ^ set(new)]
        if any(lo is None or hi is None for lo, hi in changed):
            return None
        ranges = [(str(lo), str(hi)) for lo, hi in changed]
        if not ranges:
            return set()
        # days the index knows in a range, and days silver now holds in a range
        stored = pl.concat([
            self.lh.scan(self.table, version=version)
            .filter(pl.col("landing_date").is_between(pl.lit(lo), pl.lit(hi)))
            .select(pl.col("landing_date").unique())
            .collect()
            for lo, hi in ranges
        ])["landing_date"].to_list()
        known = [d for d in manifest.days if any(lo <= d <= hi for lo, hi in ranges)]
        return set(stored) | set(known)

    def _refresh_days(self, days: Iterable[str], version: int) -> None:
        """Re-read ``days`` from silver at ``version`` and record the index as of that version."""
        assert self.manifest is not None
        days = sorted(set(days))
        manifest = Manifest(version, self.manifest.table_id, HASHER, dict(self.manifest.days), dict(self.manifest.rows))
        if days:
            rows = (
                self.lh.scan(self.table, version=version)
                .filter(pl.col("landing_date").is_in(days))
                .select(list(LINEAGE_SCHEMA))
                .collect()
            )
            by_day = rows.partition_by("landing_date", as_dict=True, include_key=False)
            for day in days:
                part = by_day.get((day,))
                self._set_day(manifest, day, part)
        self._write_manifest(manifest)
        self._collect_garbage()

    def _set_day(self, manifest: Manifest, day: str, rows: pl.DataFrame | None) -> None:
        if rows is None or rows.is_empty():
            manifest.days.pop(day, None)
            manifest.rows.pop(day, None)
            return
        manifest.days[day] = self._write_day(day, rows)
        manifest.rows[day] = rows.height

    def _rebuild(self, version: int, table_id: str, reason: str) -> EventIndex:
        self.manifest = Manifest(version, table_id)
        days = (
            self.lh.scan(self.table, version=version).select(pl.col("landing_date").unique()).collect()["landing_date"]
        )
        self._refresh_days([d for d in days.to_list() if d is not None], version)
        self.last_refresh = Refresh("rebuilt", tuple(sorted(self.manifest.days)), reason)
        return self

    def record(self, before: int | None, after: int, days: Mapping[str, pl.DataFrame | None]) -> bool:
        """After this process's silver commit ``after``: store the landing days it wrote.

        ``days`` maps each landing day the commit changed to its rows now (``LINEAGE_SCHEMA``
        without ``landing_date``), or to None to have them re-read from silver. The index moves
        to ``after`` only when it described ``before`` and the commit was the next version;
        otherwise it is left behind and the next :meth:`current` catches up from the log.
        """
        if self.manifest is None:
            if before is not None or after != 0:
                return False
            dt = self.lh.delta(self.table)
            self.manifest = Manifest(-1, str(dt.metadata().id))
        if self.manifest.table_version != (before if before is not None else -1) or after != self.manifest.table_version + 1:
            return False
        manifest = Manifest(after, self.manifest.table_id, HASHER, dict(self.manifest.days), dict(self.manifest.rows))
        reread = [d for d, rows in days.items() if rows is None]
        for day, rows in days.items():
            if rows is not None:
                self._set_day(manifest, day, rows)
        if reread:
            fresh = (
                self.lh.scan(self.table, version=after)
                .filter(pl.col("landing_date").is_in(reread))
                .select(list(LINEAGE_SCHEMA))
                .collect()
                .partition_by("landing_date", as_dict=True, include_key=False)
            )
            for day in reread:
                self._set_day(manifest, day, fresh.get((day,)))
        self._write_manifest(manifest)
        self._collect_garbage()
        return True

    def _collect_garbage(self) -> None:
        """Delete day files no manifest refers to any more, once old enough that no reader holds them."""
        from pyarrow.fs import FileSelector, FileType

        if self.manifest is None:
            return
        live = set(self.manifest.days.values())
        try:
            infos = self.fs.get_file_info(FileSelector(self._path("days"), allow_not_found=True))
        except OSError:
            return
        now = time.time()
        for info in infos:
            if info.type != FileType.File or info.base_name in live:
                continue
            mtime = info.mtime.timestamp() if info.mtime is not None else now
            if now - mtime > _GARBAGE_AGE_S:
                self.fs.delete_file(info.path)

    # -- lookups ------------------------------------------------------------------------
    @property
    def version(self) -> int | None:
        """The silver version the index describes (None: no silver table yet)."""
        return self.manifest.table_version if self.manifest else None

    def lookup(self, ids: pl.Series, exclude_day: str | None = None) -> pl.DataFrame:
        """The stored records (``LINEAGE_SCHEMA``) of landing days other than ``exclude_day`` whose
        event_id is among ``ids``. Call :meth:`current` first."""
        empty = pl.DataFrame(schema=LINEAGE_SCHEMA)
        if self.manifest is None or ids.is_empty():
            return empty
        days = [d for d in sorted(self.manifest.days) if d != exclude_day]
        if not days:
            return empty
        probe = id_hashes(ids.drop_nulls().unique()).implode()
        manifest = self.manifest

        def hashes(day: str) -> tuple[pq.ParquetFile, pl.Series]:
            file = pq.ParquetFile(self._path("days", manifest.days[day]), filesystem=self.fs)
            return file, pl.DataFrame(file.read(columns=["h"]))["h"]

        with ThreadPoolExecutor(max_workers=min(8, len(days))) as pool:  # Parquet reads release the GIL
            opened = list(pool.map(hashes, days))
        files = {day: file for day, (file, _) in zip(days, opened, strict=True)}
        stored = [h for _, h in opened]
        # One probe of every stored hash (8 bytes an id) against the set of the ids asked.
        found: pl.Series = pl.concat(stored).is_in(probe)
        if not found.any():
            return empty
        ends = np.cumsum([len(h) for h in stored])
        hits: list[pl.DataFrame] = []
        for position, day in enumerate(days):
            begin = int(ends[position - 1]) if position else 0
            day_found = found.slice(begin, int(ends[position]) - begin)
            if day_found.any():
                hits.append(self._lineage(day, files[day], stored[position].filter(day_found).unique().sort()))
        if not hits:
            return empty
        # exact ids: a hash collision is only a candidate
        return pl.concat(hits).filter(pl.col("event_id").is_in(ids.implode())).cast(LINEAGE_SCHEMA)

    def _lineage(self, day: str, file: pq.ParquetFile, wanted: pl.Series) -> pl.DataFrame:
        """The day's records with these hashes: only the row groups (sorted by hash, so each
        spans a narrow range) whose range holds one are read."""
        values = wanted.to_numpy()
        groups = []
        for g in range(file.num_row_groups):
            stats = file.metadata.row_group(g).column(0).statistics
            lo, hi = (stats.min, stats.max) if stats is not None and stats.has_min_max else (0, 2**64 - 1)
            if np.searchsorted(values, hi, side="right") > np.searchsorted(values, lo, side="left"):
                groups.append(g)
        rows = pl.DataFrame(file.read_row_groups(groups)).filter(pl.col("h").is_in(wanted.implode()))
        return rows.with_columns(pl.lit(day).alias("landing_date")).select(list(LINEAGE_SCHEMA))

    def rows(self) -> int:
        """Records the index holds (all landing days)."""
        return sum(self.manifest.rows.values()) if self.manifest else 0
