"""Online feature store: one packed record per entity, SQLite (default) or Redis.

* :class:`PackedOnlineStore` / :class:`PackedOnlineStoreConfig`: the Feast online store
  (``type: hybrid_pipeline.online.store.PackedOnlineStore`` in ``feature_store.yaml``).
* :class:`OnlineReader`: direct lookups for the serving API (no Feast on the hot path).
* :class:`OnlineWriter`: direct materialization of polars frames.
* :func:`parse_online_url`: ``HYBRID_ONLINE_STORE`` syntax (``sqlite``, ``sqlite:///x.db``, ``redis://...``);
  the setting itself is parsed once, into ``hybrid_pipeline.settings.Settings.online_store``.

Importing this package does not import Feast (seconds); the Feast store classes load on
first access.
"""

from hybrid_pipeline.online.backends import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_SQLITE_PATH,
    BackendSpec,
    RedisBackend,
    SqliteBackend,
    open_backend,
    parse_online_url,
)
from hybrid_pipeline.online.client import OnlineReader, OnlineWriter
from hybrid_pipeline.online.config import PACKED_ONLINE_STORE_TYPE, online_store_block, table_name
from hybrid_pipeline.online.packing import FORMAT_VERSION, PackedRecord, pack_record, unpack_features, unpack_record

_LAZY = {"PackedOnlineStore", "PackedOnlineStoreConfig", "backend_for_config"}


def __getattr__(name: str):
    if name in _LAZY:
        from hybrid_pipeline.online import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_SQLITE_PATH",
    "FORMAT_VERSION",
    "PACKED_ONLINE_STORE_TYPE",
    "BackendSpec",
    "OnlineReader",
    "OnlineWriter",
    "PackedOnlineStore",
    "PackedOnlineStoreConfig",
    "PackedRecord",
    "RedisBackend",
    "SqliteBackend",
    "backend_for_config",
    "online_store_block",
    "open_backend",
    "pack_record",
    "parse_online_url",
    "table_name",
    "unpack_features",
    "unpack_record",
]
