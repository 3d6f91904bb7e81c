"""A Feast online store that keeps ONE packed record per entity key and feature view.

Feast's stock SQLite store writes one row per (entity, feature) and overwrites whatever is
there; this one writes one record per entity holding every feature of the view, keeps the
newer record on conflict (event_ts, then created_ts; see :mod:`.backends`), and can be
read without Feast by :class:`hybrid_pipeline.online.client.OnlineReader`.

``feature_store.yaml``::

    online_store:
      type: hybrid_pipeline.online.store.PackedOnlineStore
      url: ${HYBRID_ONLINE_STORE}      # "sqlite" (default), "sqlite:///x.db" or "redis://host:6379/0"
      path: data/online_store.db       # the SQLite file when url is "sqlite" (repo-relative)
      key_prefix: hybrid               # Redis hash prefix
      write_batch_size: 2000

Feast 0.67 resolves ``type`` by importing ``PackedOnlineStoreConfig`` from the named
module and finds the store class back by dropping ``Config`` from the config class name,
so both names are load-bearing.

A record is a snapshot of the view at its event timestamp: a write that carries only some
features replaces the whole record (features it lacks read back as missing).
"""

from __future__ import annotations

import asyncio
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple

from feast import Entity
from feast.feature_view import FeatureView
from feast.infra.online_stores.helpers import compute_table_id
from feast.infra.online_stores.online_store import OnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from pydantic import StrictInt, StrictStr

from hybrid_pipeline.online.backends import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_KEY_PREFIX,
    DEFAULT_SQLITE_PATH,
    RedisBackend,
    SqliteBackend,
    backend_from_spec,
    parse_online_url,
)
from hybrid_pipeline.online.config import PACKED_ONLINE_STORE_TYPE, online_store_block, table_name
from hybrid_pipeline.online.convert import entity_key_to_str, proto_to_python, python_to_proto
from hybrid_pipeline.online.packing import pack_record, to_epoch_us, unpack_record

__all__ = [
    "PACKED_ONLINE_STORE_TYPE",
    "PackedOnlineStore",
    "PackedOnlineStoreConfig",
    "backend_for_config",
    "online_store_block",
    "table_name",
]


class PackedOnlineStoreConfig(FeastConfigBaseModel):
    """``online_store`` block of :class:`PackedOnlineStore`."""

    type: Literal["hybrid_pipeline.online.store.PackedOnlineStore", "hybrid_pipeline.online.PackedOnlineStore"] = (
        "hybrid_pipeline.online.store.PackedOnlineStore"  # == PACKED_ONLINE_STORE_TYPE
    )
    url: StrictStr = "sqlite"
    """Backend, ``HYBRID_ONLINE_STORE`` syntax: ``sqlite``, ``sqlite:///path.db``, ``redis://host:port/db``."""

    path: StrictStr = DEFAULT_SQLITE_PATH
    """SQLite file used when ``url`` is plain ``sqlite``; relative paths resolve against the repo."""

    key_prefix: StrictStr = DEFAULT_KEY_PREFIX
    """Prefix of the Redis hash keys (``<key_prefix>:<project>_<view>``)."""

    write_batch_size: StrictInt = DEFAULT_BATCH_SIZE
    """Rows per ``executemany``/Lua call."""


def _repo_dir(config: RepoConfig) -> Optional[Path]:
    repo_path = getattr(config, "repo_path", None)
    return Path(repo_path) if repo_path else None


_BACKENDS: Dict[Tuple[Any, ...], SqliteBackend | RedisBackend] = {}
_BACKENDS_LOCK = threading.Lock()


def backend_for_config(config: RepoConfig) -> SqliteBackend | RedisBackend:
    """The (process-wide, shared) backend a repo config points at."""
    store_cfg = config.online_store
    if not isinstance(store_cfg, PackedOnlineStoreConfig):
        raise TypeError(f"online_store is {type(store_cfg).__name__}, not PackedOnlineStoreConfig")
    spec = parse_online_url(store_cfg.url, store_cfg.path, _repo_dir(config))
    key = (spec, store_cfg.key_prefix, store_cfg.write_batch_size, os.getpid())
    with _BACKENDS_LOCK:
        backend = _BACKENDS.get(key)
        if backend is None:
            backend = _BACKENDS[key] = backend_from_spec(
                spec, key_prefix=store_cfg.key_prefix, batch_size=store_cfg.write_batch_size
            )
    return backend


def _forget_backend(backend: Any) -> None:
    with _BACKENDS_LOCK:
        for key, value in list(_BACKENDS.items()):
            if value is backend:
                del _BACKENDS[key]
    backend.close()


def _table_id(config: RepoConfig, table: Any) -> str:
    versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
    return compute_table_id(config.project, table, versioning)


class PackedOnlineStore(OnlineStore):
    """Feast online store over :mod:`hybrid_pipeline.online.backends` (SQLite or Redis)."""

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: List[Tuple[EntityKeyProto, Dict[str, ValueProto], datetime, Optional[datetime]]],
        progress: Optional[Callable[[int], Any]],
    ) -> None:
        backend = backend_for_config(config)

        def rows():
            for entity_key, values, event_ts, created_ts in data:
                event_us = to_epoch_us(event_ts)
                created_us = to_epoch_us(created_ts)
                features = {name: proto_to_python(value) for name, value in values.items()}
                yield entity_key_to_str(entity_key), event_us, created_us, pack_record(features, event_us, created_us)

        backend.write(_table_id(config, table), rows(), progress)

    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: List[EntityKeyProto],
        requested_features: Optional[List[str]] = None,
    ) -> List[Tuple[Optional[datetime], Optional[Dict[str, ValueProto]]]]:
        backend = backend_for_config(config)
        keys = [entity_key_to_str(k) for k in entity_keys]
        blobs = backend.read_many(_table_id(config, table), keys) if keys else []
        types = {f.name: f.dtype.to_value_type() for f in table.features}
        wanted = list(requested_features) if requested_features is not None else list(types)
        result: List[Tuple[Optional[datetime], Optional[Dict[str, ValueProto]]]] = []
        for blob in blobs:
            if blob is None:
                result.append((None, None))
                continue
            record = unpack_record(blob)
            values: Dict[str, ValueProto] = {}
            for name in wanted:
                if name in record.features and name in types:
                    values[name] = python_to_proto(record.features[name], types[name])
            result.append((record.event_ts.astimezone(timezone.utc), values))
        return result

    async def online_read_async(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: List[EntityKeyProto],
        requested_features: Optional[List[str]] = None,
    ) -> List[Tuple[Optional[datetime], Optional[Dict[str, ValueProto]]]]:
        """``get_online_features_async``: the blocking read on a worker thread."""
        return await asyncio.to_thread(self.online_read, config, table, entity_keys, requested_features)

    async def online_write_batch_async(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: List[Tuple[EntityKeyProto, Dict[str, ValueProto], datetime, Optional[datetime]]],
        progress: Optional[Callable[[int], Any]],
    ) -> None:
        """``write_to_online_store_async``: the blocking write on a worker thread."""
        await asyncio.to_thread(self.online_write_batch, config, table, data, progress)

    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ):
        backend = backend_for_config(config)
        for table in tables_to_keep:
            backend.create_table(_table_id(config, table))
        for table in tables_to_delete:
            backend.drop_table(_table_id(config, table))

    def teardown(
        self,
        config: RepoConfig,
        tables: Sequence[FeatureView],
        entities: Sequence[Entity],
    ):
        backend = backend_for_config(config)
        for table in tables:
            backend.drop_table(_table_id(config, table))
        if isinstance(backend, SqliteBackend):
            remaining = backend._conn().execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
            path = backend.path
            _forget_backend(backend)
            if remaining == 0 and path != ":memory:":
                for suffix in ("", "-wal", "-shm"):
                    try:
                        os.unlink(path + suffix)
                    except FileNotFoundError:
                        pass
        else:
            _forget_backend(backend)

    # ---- helpers used by tests and tools

    @staticmethod
    def read_record(config: RepoConfig, table: FeatureView, entity_key: str):
        """The decoded record stored for ``entity_key`` (a string key), or ``None``."""
        blob = backend_for_config(config).read_one(_table_id(config, table), entity_key)
        return None if blob is None else unpack_record(blob)
