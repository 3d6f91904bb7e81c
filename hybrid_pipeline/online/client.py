"""Direct access to the packed online store, without Feast objects on the hot path.

:class:`OnlineReader` serves lookups (the serving API uses it); :class:`OnlineWriter`
materializes records directly, e.g. one daily partition of a gold feature table held in a
polars frame. Both address a feature view the way :class:`~.store.PackedOnlineStore`
does (``<project>_<view>``), so records written by either are read by both; build them
with ``from_repo_config``/``from_feature_store`` to share the Feast repo's settings.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Optional

import polars as pl

from hybrid_pipeline.online.backends import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_KEY_PREFIX,
    DEFAULT_SQLITE_PATH,
    RedisBackend,
    Row,
    SqliteBackend,
    open_backend,
)
from hybrid_pipeline.online.packing import PackedRecord, pack_record, to_epoch_us, unpack_features, unpack_record
from hybrid_pipeline.online.config import table_name

__all__ = ["OnlineReader", "OnlineWriter"]

Backend = SqliteBackend | RedisBackend


class _Client:
    def __init__(self, backend: Backend, project: str):
        self.backend = backend
        self.project = project
        self._tables: dict[str, str] = {}

    @classmethod
    def from_url(
        cls,
        url: Optional[str],
        project: str,
        *,
        sqlite_path: str | os.PathLike = DEFAULT_SQLITE_PATH,
        base_dir: str | os.PathLike | None = None,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        """Open the backend named by ``url`` (``HYBRID_ONLINE_STORE`` syntax)."""
        backend = open_backend(url, sqlite_path=sqlite_path, base_dir=base_dir, key_prefix=key_prefix,
                               batch_size=batch_size)
        return cls(backend, project)

    @classmethod
    def from_repo_config(cls, config: Any):
        """Share the backend of a Feast ``RepoConfig`` whose online store is ``PackedOnlineStore``."""
        from hybrid_pipeline.online.store import backend_for_config

        return cls(backend_for_config(config), config.project)

    @classmethod
    def from_feature_store(cls, store: Any):
        return cls.from_repo_config(store.config)

    def table(self, view: str) -> str:
        name = self._tables.get(view)
        if name is None:
            if not isinstance(view, str) or not view:
                raise ValueError(f"feature view name must be a non-empty string, got {view!r}")
            name = self._tables[view] = table_name(self.project, view)
        return name

    def ping(self) -> bool:
        return self.backend.ping()

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class OnlineReader(_Client):
    """Feature lookups straight from the backend: one round trip, msgpack decode, plain dicts."""

    def get(self, view: str, entity_ids: Sequence[str]) -> list[Optional[dict[str, Any]]]:
        """Feature dicts in the order of ``entity_ids`` (``None`` where nothing is stored)."""
        table = self._tables.get(view) or self.table(view)
        if not entity_ids:
            return []
        blobs = self.backend.read_many(table, entity_ids)
        return [None if b is None else unpack_features(b) for b in blobs]

    def get_one(self, view: str, entity_id: str) -> Optional[dict[str, Any]]:
        blob = self.backend.read_one(self._tables.get(view) or self.table(view), entity_id)
        return None if blob is None else unpack_features(blob)

    def get_records(self, view: str, entity_ids: Sequence[str]) -> list[Optional[PackedRecord]]:
        """Like :meth:`get`, with each record's event and created timestamps."""
        if not entity_ids:
            return []
        blobs = self.backend.read_many(self._tables.get(view) or self.table(view), entity_ids)
        return [None if b is None else unpack_record(b) for b in blobs]


_TS_TYPES = (pl.Datetime, pl.Date)


def _epoch_us_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    if isinstance(dtype, pl.Datetime):
        return pl.col(name).dt.epoch("us")
    if isinstance(dtype, pl.Date):
        return pl.col(name).cast(pl.Datetime("us")).dt.epoch("us")
    if dtype.is_integer():
        return pl.col(name).cast(pl.Int64)
    raise TypeError(f"timestamp column {name!r} has type {dtype}; use Datetime, Date or epoch microseconds (Int64)")


class OnlineWriter(_Client):
    """Writes packed records; every write keeps the newer record per entity."""

    def write_records(
        self,
        view: str,
        records: Iterable[tuple[str, Mapping[str, Any], datetime | int, datetime | int | None]],
        progress: Optional[Callable[[int], Any]] = None,
    ) -> int:
        """Write ``(entity_id, features, event_ts, created_ts)`` tuples; returns rows sent."""

        def rows() -> Iterator[Row]:
            for entity_id, features, event_ts, created_ts in records:
                event_us, created_us = to_epoch_us(event_ts), to_epoch_us(created_ts)
                if event_us is None:
                    raise ValueError(f"record for {entity_id!r} has no event timestamp")
                yield str(entity_id), event_us, created_us, pack_record(features, event_us, created_us)

        return self.backend.write(self.table(view), rows(), progress)

    def write_frame(
        self,
        view: str,
        df: pl.DataFrame,
        entity_col: str,
        ts_col: str,
        *,
        created_col: Optional[str] = None,
        features: Optional[Sequence[str]] = None,
        progress: Optional[Callable[[int], Any]] = None,
    ) -> int:
        """Materialize a polars frame (e.g. one daily partition): one record per entity.

        ``features`` defaults to every column but the entity and timestamp columns. Rows are
        reduced to the newest per entity (by ``ts_col`` then ``created_col``) before writing,
        and the store still keeps a newer record already there. Null entity ids or event
        timestamps are an error (nothing is dropped silently). Datetime columns without a time
        zone are taken as UTC. Returns the number of records sent.
        """
        table = self.table(view)
        schema = df.schema
        for column in (entity_col, ts_col, created_col):
            if column is not None and column not in schema:
                raise KeyError(f"column {column!r} is not in the frame (columns: {list(schema)})")
        reserved = {entity_col, ts_col, created_col}
        names = list(features) if features is not None else [c for c in schema if c not in reserved]
        missing = [c for c in names if c not in schema]
        if missing:
            raise KeyError(f"feature columns {missing} are not in the frame")
        if df.height == 0:
            return 0
        bad = df.select(
            pl.col(entity_col).is_null().sum().alias("entity"), pl.col(ts_col).is_null().sum().alias("ts")
        ).row(0)
        if bad[0] or bad[1]:
            raise ValueError(f"{bad[0]} rows have a null {entity_col!r} and {bad[1]} a null {ts_col!r}")

        frame = (
            df.select(
                pl.col(entity_col).cast(pl.String).alias("__key"),
                _epoch_us_expr(ts_col, schema[ts_col]).alias("__event_us"),
                (_epoch_us_expr(created_col, schema[created_col]) if created_col else pl.lit(None, pl.Int64))
                .alias("__created_us"),
                *[pl.col(c) for c in names],
            )
            .sort(["__event_us", "__created_us"] if created_col else ["__event_us"], nulls_last=False,
                  maintain_order=True)
            .unique(subset=["__key"], keep="last", maintain_order=True)
            .sort("__key")  # B-tree order: SQLite appends instead of splitting pages at random
        )
        keys = frame.get_column("__key").to_list()
        events = frame.get_column("__event_us").to_list()
        created = frame.get_column("__created_us").to_list()
        columns = [frame.get_column(c).to_list() for c in names]

        value_rows = zip(*columns) if columns else itertools.repeat(())

        def rows() -> Iterator[Row]:
            for key, event_us, created_us, values in zip(keys, events, created, value_rows):
                yield key, event_us, created_us, pack_record(dict(zip(names, values)), event_us, created_us)

        return self.backend.write(table, rows(), progress)
