"""Storage backends for packed records: SQLite (default) and Redis.

Both store one packed record (see :mod:`hybrid_pipeline.online.packing`) per entity key and
table, and keep the newer record on conflict: a write replaces the stored record only
when its ``(event_ts, created_ts)`` is greater or equal (a missing created_ts sorts first;
equal timestamps mean "write again", so a corrected reload of the same partition wins).

* SQLite: one ``WITHOUT ROWID`` table per feature view
  ``(entity_key TEXT PRIMARY KEY, event_ts INTEGER, created_ts INTEGER, record BLOB)``,
  WAL journal, ``synchronous=NORMAL``; a write is one transaction of batched
  ``INSERT ... ON CONFLICT(entity_key) DO UPDATE ... WHERE <newer>`` statements.
  Connections are per thread.
* Redis: one hash per feature view, ``<key_prefix>:<table>``, field = entity key,
  value = the packed record; writes go through a Lua script (the compare-and-set on the
  record header) in batches, pipelined; reads are one ``HGET``/``HMGET``.

The backend is chosen by a URL-ish string, as in ``HYBRID_ONLINE_STORE``:

* ``sqlite`` (or empty): the SQLite file given as the default path;
* ``sqlite:///abs/path.db``, ``sqlite://rel/path.db``, ``sqlite:path.db``, or a bare path
  ending in ``.db``/``.sqlite``/``.sqlite3``;
* ``redis://[:password@]host:port/db``, ``rediss://...``, ``unix:///path/redis.sock``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

from hybrid_pipeline.online.packing import HEADER_SIZE

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_SQLITE_PATH",
    "BackendSpec",
    "OnlineBackend",
    "RedisBackend",
    "Row",
    "SqliteBackend",
    "backend_from_spec",
    "open_backend",
    "parse_online_url",
]

DEFAULT_SQLITE_PATH = "data/online_store.db"
DEFAULT_KEY_PREFIX = "hybrid"
DEFAULT_BATCH_SIZE = 2000

Row = tuple[str, int, Optional[int], bytes]
"""(entity_key, event_ts_us, created_ts_us or None, packed record)"""


@dataclass(frozen=True)
class BackendSpec:
    kind: str  # "sqlite" | "redis"
    target: str  # file path or redis URL

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def parse_online_url(value: Optional[str], default_sqlite_path: str | os.PathLike = DEFAULT_SQLITE_PATH,
                     base_dir: str | os.PathLike | None = None) -> BackendSpec:
    """Parse an online-store setting such as ``HYBRID_ONLINE_STORE``.

    A relative SQLite path resolves against ``base_dir`` when given (Feast passes the
    repo directory), else it is returned as is.
    """
    raw = (value or "").strip()
    lowered = raw.lower()
    if lowered.startswith(("redis://", "rediss://", "unix://")):
        return BackendSpec("redis", raw)
    if lowered in ("", "sqlite"):
        path = str(default_sqlite_path)
    elif lowered.startswith("sqlite://"):
        path = raw[len("sqlite://"):]
    elif lowered.startswith("sqlite:"):
        path = raw[len("sqlite:"):]
    elif lowered.endswith(_SQLITE_SUFFIXES) and "://" not in raw:
        path = raw
    else:
        raise ValueError(
            f"unsupported online store {value!r}: use 'sqlite', 'sqlite:///path/to/file.db', "
            "a .db file path, or a redis://host:port/db URL"
        )
    if not path:
        raise ValueError(f"online store {value!r} names no SQLite file")
    if base_dir is not None and not os.path.isabs(path):
        path = str(Path(base_dir) / path)
    return BackendSpec("sqlite", path)


class OnlineBackend(Protocol):
    spec: BackendSpec

    def create_table(self, table: str) -> None: ...

    def drop_table(self, table: str) -> None: ...

    def write(self, table: str, rows: Iterable[Row], progress: Optional[Callable[[int], Any]] = None) -> int: ...

    def read_one(self, table: str, key: str) -> Optional[bytes]: ...

    def read_many(self, table: str, keys: Sequence[str]) -> list[Optional[bytes]]: ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


def _chunks(rows: Iterable[Row], size: int) -> Iterable[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_INT64_MIN = -(1 << 63)


class SqliteBackend:
    """Packed records in a SQLite file (WAL), one table per feature view."""

    def __init__(self, path: str | os.PathLike, batch_size: int = DEFAULT_BATCH_SIZE, timeout_s: float = 30.0,
                 mmap_bytes: int = 256 << 20, cache_kib: int = 32 << 10):
        self.path = str(path)
        self.mmap_bytes = int(mmap_bytes)
        self.cache_kib = int(cache_kib)
        self.spec = BackendSpec("sqlite", self.path)
        self.batch_size = max(1, int(batch_size))
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._sql: dict[tuple[str, str], str] = {}
        self._known_tables: set[str] = set()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)

    # ---- connections

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
            # reads: map the file (no read() syscall per page) and keep a larger page cache
            conn.execute(f"PRAGMA mmap_size={self.mmap_bytes}")
            conn.execute(f"PRAGMA cache_size=-{self.cache_kib}")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.ProgrammingError:  # closed from another thread already
                pass
        self._local = threading.local()

    def ping(self) -> bool:
        self._conn().execute("SELECT 1").fetchone()
        return True

    # ---- DDL

    def create_table(self, table: str) -> None:
        self._conn().execute(
            f"CREATE TABLE IF NOT EXISTS {_quote(table)} ("
            "entity_key TEXT PRIMARY KEY NOT NULL, event_ts INTEGER NOT NULL, created_ts INTEGER, "
            "record BLOB NOT NULL) WITHOUT ROWID"
        )
        self._known_tables.add(table)

    def drop_table(self, table: str) -> None:
        self._conn().execute(f"DROP TABLE IF EXISTS {_quote(table)}")
        self._known_tables.discard(table)

    def table_exists(self, table: str) -> bool:
        row = self._conn().execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone()
        return row is not None

    def count(self, table: str) -> int:
        return self._conn().execute(f"SELECT count(*) FROM {_quote(table)}").fetchone()[0]

    # ---- SQL text (cached so sqlite3's statement cache hits)

    def _upsert_sql(self, table: str) -> str:
        key = (table, "upsert")
        sql = self._sql.get(key)
        if sql is None:
            t = _quote(table)
            sql = (
                f"INSERT INTO {t} AS cur (entity_key, event_ts, created_ts, record) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(entity_key) DO UPDATE SET event_ts = excluded.event_ts, "
                "created_ts = excluded.created_ts, record = excluded.record "
                "WHERE excluded.event_ts > cur.event_ts OR (excluded.event_ts = cur.event_ts AND "
                f"coalesce(excluded.created_ts, {_INT64_MIN}) >= coalesce(cur.created_ts, {_INT64_MIN}))"
            )
            self._sql[key] = sql
        return sql

    def _select_one_sql(self, table: str) -> str:
        key = (table, "one")
        sql = self._sql.get(key)
        if sql is None:
            sql = self._sql[key] = f"SELECT record FROM {_quote(table)} WHERE entity_key = ?"
        return sql

    def _select_many_sql(self, table: str, n: int) -> str:
        key = (table, f"many{n}")
        sql = self._sql.get(key)
        if sql is None:
            sql = f"SELECT entity_key, record FROM {_quote(table)} WHERE entity_key IN ({','.join('?' * n)})"
            if len(self._sql) < 512:
                self._sql[key] = sql
        return sql

    # ---- data

    def write(self, table: str, rows: Iterable[Row], progress: Optional[Callable[[int], Any]] = None) -> int:
        """Upsert ``rows`` in one transaction (batched ``executemany``); returns rows sent."""
        conn = self._conn()
        if table not in self._known_tables:
            self.create_table(table)
        sql = self._upsert_sql(table)
        sent = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for chunk in _chunks(rows, self.batch_size):
                conn.executemany(sql, chunk)
                sent += len(chunk)
                if progress is not None:
                    progress(len(chunk))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return sent

    def read_one(self, table: str, key: str) -> Optional[bytes]:
        try:
            row = self._conn().execute(self._select_one_sql(table), (key,)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        return None if row is None else row[0]

    # SQLite's default SQLITE_MAX_VARIABLE_NUMBER is 32766; stay well below it.
    _MAX_IN = 900

    def read_many(self, table: str, keys: Sequence[str]) -> list[Optional[bytes]]:
        if len(keys) == 1:
            return [self.read_one(table, keys[0])]
        found: dict[str, bytes] = {}
        conn = self._conn()
        unique = list(dict.fromkeys(keys))
        try:
            for start in range(0, len(unique), self._MAX_IN):
                part = unique[start:start + self._MAX_IN]
                found.update(conn.execute(self._select_many_sql(table, len(part)), part).fetchall())
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return [None] * len(keys)
            raise
        return [found.get(k) for k in keys]


# Compare-and-set per field: replace when the new header (event_ts, created_ts) >= the old.
_REDIS_WRITE_LUA = f"""
local key = KEYS[1]
local written = 0
for i = 1, #ARGV, 2 do
  local field = ARGV[i]
  local rec = ARGV[i + 1]
  local old = redis.call('HGET', key, field)
  local replace = true
  if old and string.byte(old, 1) == string.byte(rec, 1) then
    for j = 2, {HEADER_SIZE} do
      local a = string.byte(rec, j)
      local b = string.byte(old, j)
      if a ~= b then
        replace = a > b
        break
      end
    end
  end
  if replace then
    redis.call('HSET', key, field, rec)
    written = written + 1
  end
end
return written
"""


class RedisBackend:
    """Packed records in Redis: one hash per feature view."""

    def __init__(self, url: str, key_prefix: str = DEFAULT_KEY_PREFIX, batch_size: int = DEFAULT_BATCH_SIZE,
                 pipeline_depth: int = 8, client: Any = None):
        import redis

        self.url = url
        self.spec = BackendSpec("redis", url)
        self.key_prefix = key_prefix
        self.batch_size = max(1, int(batch_size))
        self.pipeline_depth = max(1, int(pipeline_depth))
        self.client = client if client is not None else redis.Redis.from_url(url, socket_keepalive=True)
        self._sha: Optional[str] = None
        self._keys: dict[str, str] = {}

    def hash_key(self, table: str) -> str:
        key = self._keys.get(table)
        if key is None:
            key = self._keys[table] = f"{self.key_prefix}:{table}"
        return key

    def close(self) -> None:
        self.client.close()

    def ping(self) -> bool:
        return bool(self.client.ping())

    def create_table(self, table: str) -> None:  # a hash exists once it has a field
        return None

    def drop_table(self, table: str) -> None:
        self.client.unlink(self.hash_key(table))

    def count(self, table: str) -> int:
        return int(self.client.hlen(self.hash_key(table)))

    def write(self, table: str, rows: Iterable[Row], progress: Optional[Callable[[int], Any]] = None) -> int:
        """Compare-and-set ``rows`` in Lua batches, ``pipeline_depth`` batches per round trip."""
        key = self.hash_key(table)
        sent = 0
        pending: list[list[Any]] = []
        sizes: list[int] = []
        for chunk in _chunks(rows, self.batch_size):
            args: list[Any] = []
            for entity_key, _, _, record in chunk:
                args.append(entity_key)
                args.append(record)
            pending.append(args)
            sizes.append(len(chunk))
            if len(pending) >= self.pipeline_depth:
                self._execute(key, pending)
                sent += self._flush_progress(sizes, progress)
                pending = []
        if pending:
            self._execute(key, pending)
            sent += self._flush_progress(sizes, progress)
        return sent

    def _execute(self, key: str, batches: list[list[Any]]) -> None:
        from redis.exceptions import NoScriptError

        for attempt in range(2):
            if self._sha is None:
                self._sha = self.client.script_load(_REDIS_WRITE_LUA)
            pipe = self.client.pipeline(transaction=False)
            for args in batches:
                pipe.evalsha(self._sha, 1, key, *args)
            try:
                pipe.execute()
                return
            except NoScriptError:  # script cache flushed (restart, SCRIPT FLUSH): load again; writes are idempotent
                self._sha = None
                if attempt:
                    raise

    @staticmethod
    def _flush_progress(pending: list[int], progress: Optional[Callable[[int], Any]]) -> int:
        n = sum(pending)
        if progress is not None:
            for size in pending:
                progress(size)
        pending.clear()
        return n

    def read_one(self, table: str, key: str) -> Optional[bytes]:
        return self.client.hget(self.hash_key(table), key)  # type: ignore[return-value]

    def read_many(self, table: str, keys: Sequence[str]) -> list[Optional[bytes]]:
        if len(keys) == 1:
            return [self.client.hget(self.hash_key(table), keys[0])]  # type: ignore[list-item]
        return self.client.hmget(self.hash_key(table), keys)  # type: ignore[return-value]


def open_backend(
    url: Optional[str] = None,
    *,
    sqlite_path: str | os.PathLike = DEFAULT_SQLITE_PATH,
    base_dir: str | os.PathLike | None = None,
    key_prefix: str = DEFAULT_KEY_PREFIX,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> SqliteBackend | RedisBackend:
    """A backend for an online-store setting (``HYBRID_ONLINE_STORE`` syntax)."""
    return backend_from_spec(parse_online_url(url, sqlite_path, base_dir), key_prefix=key_prefix, batch_size=batch_size)


def backend_from_spec(spec: BackendSpec, *, key_prefix: str = DEFAULT_KEY_PREFIX,
                      batch_size: int = DEFAULT_BATCH_SIZE) -> SqliteBackend | RedisBackend:
    if spec.kind == "redis":
        return RedisBackend(spec.target, key_prefix=key_prefix, batch_size=batch_size)
    return SqliteBackend(spec.target, batch_size=batch_size)
