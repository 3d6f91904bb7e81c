"""The lakehouse as a set of Delta tables under one root (local path or object store URI).

Every write goes through delta-rs so each change is one atomic Delta commit: a rerun
replaces exactly the rows it owns (``replace_where``) and readers never see half a write.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from hybrid_pipeline.lakehouse import storage


@dataclass(frozen=True)
class TableRef:
    """A table of the lakehouse, addressed as ``<layer>/<name>``."""

    layer: str
    name: str

    @classmethod
    def parse(cls, ref: str | TableRef) -> TableRef:
        if isinstance(ref, TableRef):
            return ref
        layer, _, name = ref.strip("/").partition("/")
        if not layer or not name:
            raise ValueError(f"table reference must look like 'layer/name', got {ref!r}")
        return cls(layer, name)

    def __str__(self) -> str:
        return f"{self.layer}/{self.name}"


def _arrow(df: pl.DataFrame) -> pa.Table:
    # Delta has no large/view string distinction; plain arrow types keep schemas stable
    # across writers (polars, Spark, pyarrow).
    return df.to_arrow(compat_level=pl.CompatLevel.oldest())


class Lakehouse:
    """Reads and writes the Delta tables under ``root``."""

    def __init__(self, root: str, storage_options: dict[str, str] | None = None) -> None:
        """Open ``root`` (a bad URI or unsafe commit settings are refused here, without I/O).

        An object-store root is reached on first use: every read, write and :meth:`path` first lists
        the root once (:func:`storage.check_root`), so a wrong key or a missing bucket stops with one
        message naming the setting, before anything is written.
        """
        self.root = str(root).rstrip("/")
        self.storage_options = storage.storage_options(self.root, storage_options)
        self._checked = not storage.is_remote(self.root)
        if self._checked:
            os.makedirs(self.root, exist_ok=True)

    def check(self) -> None:
        """Make sure the root can be reached (once); :class:`storage.StorageConfigError` names the setting."""
        if not self._checked:
            storage.check_root(self.root, self.storage_options)
            self._checked = True

    @property
    def remote(self) -> bool:
        """True when the root is an object store (``s3://...``), not a local folder."""
        return storage.is_remote(self.root)

    # -- addressing -------------------------------------------------------------------
    def uri(self, table: str | TableRef) -> str:
        ref = TableRef.parse(table)
        return f"{self.root}/{ref.layer}/{ref.name}"

    def path(self, *parts: str) -> str:
        """A non-table location under the root (e.g. bronze media files); the root is checked first."""
        self.check()
        return "/".join([self.root, *parts])

    def delta(self, table: str | TableRef, version: int | None = None) -> DeltaTable:
        self.check()
        return DeltaTable(self.uri(table), version=version, storage_options=self.storage_options)

    def exists(self, table: str | TableRef) -> bool:
        self.check()
        return DeltaTable.is_deltatable(self.uri(table), storage_options=self.storage_options)

    def version(self, table: str | TableRef) -> int | None:
        if not self.exists(table):
            return None
        return self.delta(table).version()

    # -- reads ------------------------------------------------------------------------
    def scan(
        self,
        table: str | TableRef,
        version: int | None = None,
        as_of: datetime | str | None = None,
    ) -> pl.LazyFrame:
        """Lazy scan honouring the Delta log, optionally at a version or a point in time."""
        if version is not None and as_of is not None:
            raise ValueError("pass either version or as_of, not both")
        self.check()
        if as_of is not None:
            dt = self.delta(table)
            dt.load_as_version(as_of if isinstance(as_of, datetime) else datetime.fromisoformat(as_of))
            version = dt.version()
        return pl.scan_delta(self.uri(table), version=version, storage_options=self.storage_options or None)

    def read(self, table: str | TableRef, version: int | None = None, as_of: datetime | str | None = None) -> pl.DataFrame:
        return self.scan(table, version=version, as_of=as_of).collect()

    def scan_or_empty(self, table: str | TableRef, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
        """A scan of the table, or an empty frame of ``schema`` before its first write."""
        if self.exists(table):
            return self.scan(table)
        return pl.LazyFrame(schema=schema)

    # -- writes -----------------------------------------------------------------------
    def append(self, table: str | TableRef, df: pl.DataFrame, partition_by: list[str] | None = None) -> int:
        write_deltalake(
            self.uri(table),
            _arrow(df),
            mode="append",
            partition_by=partition_by if not self.exists(table) else None,
            schema_mode="merge",
            storage_options=self.storage_options or None,
        )
        return self.delta(table).version()

    def replace_where(
        self,
        table: str | TableRef,
        df: pl.DataFrame,
        predicate: str,
        partition_by: list[str] | None = None,
        commit_properties: dict[str, str] | None = None,
    ) -> int:
        """Atomically replace the rows matching ``predicate`` with ``df`` (one commit).

        This is what makes reruns idempotent: a partition's rerun owns exactly the rows its
        predicate names, so it can never duplicate or lose rows of other partitions.
        """
        from deltalake import CommitProperties

        props = CommitProperties(custom_metadata=commit_properties) if commit_properties else None
        if not self.exists(table):
            write_deltalake(
                self.uri(table),
                _arrow(df),
                mode="append",
                partition_by=partition_by,
                storage_options=self.storage_options or None,
                commit_properties=props,
            )
        else:
            write_deltalake(
                self.uri(table),
                _arrow(df),
                mode="overwrite",
                predicate=predicate,
                storage_options=self.storage_options or None,
                commit_properties=props,
            )
        return self.delta(table).version()

    def upsert(self, table: str | TableRef, df: pl.DataFrame, keys: list[str], partition_by: list[str] | None = None) -> int:
        """Merge ``df`` into the table on ``keys``: update matches, insert the rest."""
        if not self.exists(table):
            return self.replace_where(table, df, "true", partition_by=partition_by)
        on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
        (
            self.delta(table)
            .merge(_arrow(df), predicate=on, source_alias="s", target_alias="t")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
        return self.delta(table).version()

    def insert_new(self, table: str | TableRef, df: pl.DataFrame, keys: list[str]) -> int:
        """Insert the rows whose ``keys`` the table does not hold yet; existing rows stay as they are."""
        if not self.exists(table):
            return self.replace_where(table, df, "true")
        on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
        (
            self.delta(table)
            .merge(_arrow(df), predicate=on, source_alias="s", target_alias="t")
            .when_not_matched_insert_all()
            .execute()
        )
        return self.delta(table).version()

    # -- maintenance ------------------------------------------------------------------
    def optimize(self, table: str | TableRef, zorder_by: list[str] | None = None) -> dict[str, Any]:
        """Compact small files; with ``zorder_by``, also cluster rows on those columns.

        Partition columns are already clustered by the layout (one directory each), and
        Delta refuses to Z-order on them, so they are left out of the Z-order itself.
        """
        dt = self.delta(table)
        partition_cols = set(dt.metadata().partition_columns)
        columns = [c for c in (zorder_by or []) if c not in partition_cols]
        if columns:
            return dict(dt.optimize.z_order(columns))
        return dict(dt.optimize.compact())

    def vacuum(self, table: str | TableRef, retention: timedelta, dry_run: bool = False) -> list[str]:
        """Delete files no longer referenced by any version inside ``retention``."""
        # delta-rs takes whole hours; round up so a file is never deleted inside the retention.
        hours = math.ceil(retention.total_seconds() / 3600)
        return self.delta(table).vacuum(
            retention_hours=hours,
            dry_run=dry_run,
            enforce_retention_duration=False,
        )

    def history(self, table: str | TableRef, limit: int | None = None) -> list[dict[str, Any]]:
        return self.delta(table).history(limit)


