"""Redis stream -> bronze/events, exactly once, one Delta commit per micro-batch.

Producers publish one event per stream entry (the JSON text in the ``payload`` field,
:func:`produce`). A :class:`StreamConsumer` reads micro-batches through a Redis consumer
group and appends them to ``bronze/events`` as bronze rows (payload kept as the text
received, malformed or not: bronze keeps everything; silver decides).

Exactly once
------------
Redis consumer groups deliver *at least once*: an entry stays in the consumer's pending
entries list (PEL) until it is acknowledged, and is delivered again after a crash. Delta
makes the write idempotent:

* Each consumer (``stream``, ``group``, ``consumer``) is one Delta *application*:
  ``app_id = "hybrid_pipeline.stream/<stream>/<group>/<consumer>"``. Every batch is ONE
  ``write_deltalake(mode="append")`` commit carrying
  ``CommitProperties(app_transactions=[Transaction(app_id, seq)])`` where ``seq`` is the
  batch sequence number (1, 2, 3, ... per application), and custom commit metadata
  ``hybrid_stream = {app_id, seq, first_id, last_id, batch_id, messages, ...}``.
* ``last_id`` of the latest committed batch is the *watermark*. A consumer reads its
  entries in increasing id order (the PEL first, then new entries), so "committed" is
  exactly "id <= watermark". Entries at or below the watermark are only XACKed, never
  written again; the rest form the next batch.
* The watermark is recovered from the table alone: ``DeltaTable.transaction_version(app_id)``
  gives the last committed ``seq``; the commit whose ``hybrid_stream`` metadata has that
  ``app_id``/``seq`` (found in ``history()``) gives its ``last_id``. Before every commit the
  recorded version is compared with the consumer's own; if they differ (a previous
  incarnation committed and then died before XACK, or a commit whose outcome was unknown
  went through) the watermark is re-read before the batch is formed.
* XACK comes strictly AFTER the commit. Crash before the commit: the entries are still
  pending, nothing is in Delta, they are re-read and committed as the next ``seq``. Crash
  between commit and XACK: on restart the pending entries are re-read (XREADGROUP id 0),
  are found <= the recovered watermark, and are only acknowledged. Replays (``XGROUP
  SETID`` back, Redis restored from an older snapshot) are skipped the same way.
* Two processes running the same consumer name would both commit the same ``app_id``;
  Delta rejects the second of two concurrent commits carrying the same application id
  (``CommitFailedError: Concurrent transaction failed``), so no double write either.

Why per consumer and not per group: entries of one group are split between its consumers,
so their ids interleave; a single group-wide watermark would make consumer B skip entries
below consumer A's watermark that B had never written. With one consumer per group (the
``hybrid-pipeline stream`` deployment) "per consumer" *is* "per group". Limits: entries claimed from another
consumer (XCLAIM/XAUTOCLAIM) are not covered by the new owner's watermark, so recover a
dead consumer by restarting it under its own name; a stream that is deleted and recreated
restarts ids at 0, so give it a new group name (otherwise its entries count as replays).

Bronze rows: ``source_format = "stream"``, ``source_file = "stream:<stream>"``,
``line_number = ms * 1_000_000 + seq`` of the entry id ``<ms>-<seq>`` (increases with the id),
``file_sha256`` = batch id (sha256 of the stream name and the batch's entry ids, so it is
the same whenever the same entries form a batch), ``landing_date`` = UTC date of the id's
timestamp, ``ingested_at`` = now, ``payload`` = the ``payload`` field as received (an
entry without exactly that one field is kept as the JSON object of all its fields).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import polars as pl
import redis
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from hybrid_pipeline.lakehouse.tables import Lakehouse
from hybrid_pipeline.sources.landing import BRONZE_SCHEMA

log = logging.getLogger(__name__)

PAYLOAD_FIELD = "payload"
SOURCE_FORMAT = "stream"
METADATA_KEY = "hybrid_stream"
LINE_NUMBER_SEQ_BASE = 1_000_000  # line_number = ms * BASE + seq

StreamId = tuple[int, int]


# -- message ids -------------------------------------------------------------------------
def parse_id(entry_id: str | bytes) -> StreamId:
    """``b"1718000000000-3"`` -> ``(1718000000000, 3)``."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(entry_id: StreamId) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def line_number_of(entry_id: str | bytes | StreamId) -> int:
    """A number that increases with the entry id: ``ms * 1_000_000 + seq``."""
    ms, seq = entry_id if isinstance(entry_id, tuple) else parse_id(entry_id)
    return ms * LINE_NUMBER_SEQ_BASE + seq


def entry_id_of_line_number(line_number: int) -> str:
    """The stream entry id a bronze row came from: the inverse of :func:`line_number_of`."""
    return format_id(divmod(line_number, LINE_NUMBER_SEQ_BASE))


def publish_ms_of_line_number(line_number: int) -> int:
    """The entry's timestamp (ms since the epoch, Redis server clock) from its line number."""
    return line_number // LINE_NUMBER_SEQ_BASE


def app_id_of(stream: str, group: str, consumer: str) -> str:
    """The Delta application id of one consumer: its commits carry it, its watermark is kept under it."""
    return f"hybrid_pipeline.stream/{stream}/{group}/{consumer}"


def batch_id_of(stream: str, entry_ids: Iterable[str]) -> str:
    """Deterministic id of a batch: the same entries always give the same id."""
    digest = hashlib.sha256(f"stream:{stream}".encode())
    for entry_id in entry_ids:
        digest.update(b"\n")
        digest.update(entry_id.encode())
    return digest.hexdigest()


# -- producer ----------------------------------------------------------------------------
def _encode(event: Any) -> bytes | str:
    if isinstance(event, bytes | str):
        return event  # already serialized (or deliberately malformed) text: sent as is
    return json.dumps(event, separators=(",", ":"), default=str)


def produce(
    redis_url: str,
    stream: str,
    events: Iterable[dict | str | bytes],
    rate: float | None = None,
    maxlen: int | None = None,
    *,
    pipeline_size: int = 500,
    client: redis.Redis | None = None,
) -> int:
    """Publish ``events`` to ``stream`` (one entry each, JSON text in the ``payload`` field).

    ``rate``: about that many events per second (token bucket with a 50 ms burst; the
    bucket may go into debt and then sleeps it off, so the long-run rate is exact);
    ``None`` = as fast as possible. Entries are sent in pipelined chunks (at most
    ``pipeline_size``, and at most one burst when rate-limited). ``maxlen`` trims the
    stream approximately (``MAXLEN ~``); trimmed entries not yet consumed are lost
    upstream of bronze. ``str``/``bytes`` events are sent verbatim. Returns the count sent.
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive (or None for unlimited)")
    r = client or redis.Redis.from_url(redis_url)
    try:
        pipe = r.pipeline(transaction=False)
        if rate is None:
            chunk = max(1, pipeline_size)
        else:
            burst = max(1.0, rate * 0.05)
            chunk = max(1, min(pipeline_size, int(burst)))
        tokens = float(chunk)
        last = time.perf_counter()
        queued = sent = 0

        def flush() -> None:
            nonlocal tokens, last, queued, sent
            if not queued:
                return
            if rate is not None:
                now = time.perf_counter()
                tokens = min(max(burst, chunk), tokens + (now - last) * rate)
                last = now
                tokens -= queued
                if tokens < 0:
                    time.sleep(-tokens / rate)
            pipe.execute()
            sent += queued
            queued = 0

        for event in events:
            pipe.xadd(stream, {PAYLOAD_FIELD: _encode(event)}, maxlen=maxlen, approximate=True)
            queued += 1
            if queued >= chunk:
                flush()
        flush()
        return sent
    finally:
        if client is None:
            r.close()


# -- consumer ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchResult:
    """What one :meth:`StreamConsumer.consume_once` did."""

    read: int = 0  # entries read from Redis
    rows: int = 0  # rows committed to Delta
    acked: int = 0
    skipped_committed: int = 0  # already in Delta (crash recovery, replay): only acked
    missing: int = 0  # pending entries whose content is gone from the stream (trimmed/deleted)
    from_pending: bool = False  # read from this consumer's PEL (redelivery)
    seq: int | None = None  # app-transaction version committed, None when nothing was written
    table_version: int | None = None
    batch_id: str | None = None
    first_id: str | None = None
    last_id: str | None = None
    committed_at: datetime | None = None


@dataclass
class RunStats:
    batches: int = 0  # non-empty micro-batches
    commits: int = 0
    rows: int = 0
    acked: int = 0
    skipped_committed: int = 0
    missing: int = 0
    results: list[BatchResult] = field(default_factory=list)

    def add(self, result: BatchResult) -> None:
        self.batches += 1
        self.commits += result.seq is not None
        self.rows += result.rows
        self.acked += result.acked
        self.skipped_committed += result.skipped_committed
        self.missing += result.missing
        self.results.append(result)


class StreamStateError(RuntimeError):
    """The table says a batch was committed but its watermark cannot be found."""


@dataclass(frozen=True)
class _Entry:
    entry_id: str
    key: StreamId
    fields: dict[bytes, bytes]


class StreamConsumer:
    """Reads ``stream`` through consumer group ``group`` into ``table`` exactly once.

    ``batch_size``: most entries per micro-batch (= per Delta commit). ``block_ms``: how long
    one read waits for new entries (0 = do not wait). ``linger_ms``: after the first entries
    arrive, keep reading up to that long to fill the batch (fewer, larger commits).
    ``start_id``: where a newly created group starts (``"0"`` = the whole stream, ``"$"`` =
    only entries added from now on). ``on_batch(rows_df)`` is called with the committed bronze
    rows after the commit and the XACK (see :func:`streaming_features`); an exception from it
    propagates but the batch stays committed and acknowledged. ``on_commit(result, rows_df)``
    is called just before it with the batch's :class:`BatchResult` (offsets, seq, Delta
    version), so the commit can be reported as a materialization of the table.
    ``_after_commit(result)`` is a test hook run between the commit and the XACK (raise from
    it, or ``os._exit``, to simulate a crash there).
    """

    def __init__(
        self,
        redis_url: str,
        stream: str,
        group: str,
        consumer: str,
        lakehouse: Lakehouse,
        table: str = "bronze/events",
        batch_size: int = 1000,
        block_ms: int = 1000,
        on_batch: Callable[[pl.DataFrame], Any] | None = None,
        *,
        linger_ms: int = 0,
        on_commit: Callable[[BatchResult, pl.DataFrame], Any] | None = None,
        start_id: str = "0",
        partition_by: list[str] | None = None,
        client: redis.Redis | None = None,
        _after_commit: Callable[[BatchResult], Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.redis_url = redis_url
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.lakehouse = lakehouse
        self.table = table
        self.batch_size = batch_size
        self.block_ms = max(0, int(block_ms))
        self.linger_ms = max(0, int(linger_ms))
        self.start_id = start_id
        self.partition_by = ["landing_date"] if partition_by is None else partition_by
        self.on_batch = on_batch
        self.on_commit = on_commit
        self._after_commit = _after_commit
        self._own_client = client is None
        self.redis = client or redis.Redis.from_url(redis_url)
        self.app_id = app_id_of(stream, group, consumer)
        self._group_ready = False
        self._dt: DeltaTable | None = None
        # Recovered from the table on first use and after any failure.
        self._seq: int | None = None
        self._watermark: StreamId = (0, 0)
        self._pending_drained = False

    # -- lifecycle ------------------------------------------------------------------
    def close(self) -> None:
        if self._own_client:
            self.redis.close()

    def __enter__(self) -> StreamConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def committed_seq(self) -> int:
        """Sequence number of this consumer's last committed batch (0 before the first)."""
        self._ensure_state()
        return self._seq or 0

    @property
    def watermark(self) -> str:
        """Id of the last entry this consumer committed (``"0-0"`` before the first batch)."""
        self._ensure_state()
        return format_id(self._watermark)

    # -- Redis ----------------------------------------------------------------------
    def ensure_group(self) -> None:
        """Create the consumer group (and the stream, MKSTREAM) unless it exists."""
        try:
            self.redis.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _xreadgroup(self, cursor: str, count: int, block: int | None) -> list[_Entry]:
        try:
            resp = self.redis.xreadgroup(self.group, self.consumer, {self.stream: cursor}, count=count, block=block)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("consumer group %s of %s vanished; recreating it", self.group, self.stream)
            self.ensure_group()
            resp = self.redis.xreadgroup(self.group, self.consumer, {self.stream: cursor}, count=count, block=block)
        entries: list[Any]
        if isinstance(resp, dict):  # RESP3: {stream: [[entries]]}
            entries = next(iter(resp.values()), [])
            if entries and isinstance(entries[0], list):
                entries = entries[0]
        else:  # RESP2: [[stream, [entries]]]
            entries = list(resp[0][1]) if resp else []
        out = []
        for entry in entries:  # (id, fields), or longer tuples when CLAIM is used
            entry_id, fields = entry[0], entry[1]
            text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            out.append(_Entry(text, parse_id(text), dict(fields or {})))
        return out

    def _read(self) -> tuple[list[_Entry], bool]:
        """Next micro-batch: this consumer's pending entries first, then new ones."""
        if not self._pending_drained:
            entries = self._xreadgroup("0", self.batch_size, None)
            if entries:
                return entries, True
            self._pending_drained = True
        entries = self._xreadgroup(">", self.batch_size, self.block_ms or None)
        if entries and self.linger_ms and len(entries) < self.batch_size:
            deadline = time.monotonic() + self.linger_ms / 1000
            while len(entries) < self.batch_size:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0:
                    break
                more = self._xreadgroup(">", self.batch_size - len(entries), left_ms)
                if not more:
                    break
                entries.extend(more)
        return entries, False

    def _ack(self, ids: list[str]) -> int:
        acked = 0
        for start in range(0, len(ids), 10_000):
            acked += int(self.redis.xack(self.stream, self.group, *ids[start : start + 10_000]))
        return acked

    # -- Delta state ----------------------------------------------------------------
    def _table_handle(self) -> DeltaTable | None:
        """The table at its latest version (incrementally refreshed), or None before it exists."""
        if self._dt is None:
            if not self.lakehouse.exists(self.table):
                return None
            self._dt = self.lakehouse.delta(self.table)
        else:
            self._dt.update_incremental()
        return self._dt

    def _committed_version(self, dt: DeltaTable | None) -> int:
        if dt is None:
            return 0
        return dt.transaction_version(self.app_id) or 0

    def _watermark_of(self, dt: DeltaTable, seq: int) -> StreamId:
        """``last_id`` recorded with this application's commit number ``seq``."""
        for limit in (200, None):
            for commit in dt.history(limit):
                meta = commit.get(METADATA_KEY)
                if isinstance(meta, dict) and meta.get("app_id") == self.app_id and meta.get("seq") == seq:
                    return parse_id(meta["last_id"])
        raise StreamStateError(
            f"{self.table} records transaction {self.app_id!r} version {seq} but no commit in its "
            "history carries that batch's metadata (log cleaned up?); refusing to guess what was committed"
        )

    def _sync_state(self, dt: DeltaTable | None) -> None:
        committed = self._committed_version(dt)
        if committed != self._seq:
            watermark = (0, 0) if committed == 0 else self._watermark_of(dt, committed)  # type: ignore[arg-type]
            if self._seq is not None:
                log.warning(
                    "%s: table records batch %s (watermark %s), consumer had %s; resynchronised",
                    self.app_id, committed, format_id(watermark), self._seq,
                )
            self._seq, self._watermark = committed, watermark

    def _ensure_state(self) -> None:
        if self._seq is None:
            self._sync_state(self._table_handle())

    def _reset(self) -> None:
        """After any failure: trust nothing in memory, re-read the PEL and the table."""
        self._seq = None
        self._dt = None
        self._pending_drained = False

    # -- rows -----------------------------------------------------------------------
    @staticmethod
    def _payload(fields: dict[bytes, bytes]) -> str:
        def text(value: Any) -> str:
            return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)

        key = PAYLOAD_FIELD.encode()
        if len(fields) == 1 and key in fields:
            return text(fields[key])
        # Not the producer's shape: keep every field so nothing is lost.
        return json.dumps({text(k): text(v) for k, v in fields.items()}, ensure_ascii=False)

    def _rows(self, entries: list[_Entry], batch_id: str, now: datetime) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "landing_date": [
                    datetime.fromtimestamp(e.key[0] / 1000, tz=timezone.utc).date().isoformat() for e in entries
                ],
                "source_file": [f"stream:{self.stream}"] * len(entries),
                "source_format": [SOURCE_FORMAT] * len(entries),
                "line_number": [line_number_of(e.key) for e in entries],
                "file_sha256": [batch_id] * len(entries),
                "ingested_at": [now] * len(entries),
                "payload": [self._payload(e.fields) for e in entries],
            },
            schema=BRONZE_SCHEMA,
        )

    def _commit(self, dt: DeltaTable | None, rows: pl.DataFrame, props: CommitProperties) -> DeltaTable:
        data = rows.to_arrow(compat_level=pl.CompatLevel.oldest())
        if dt is None:
            write_deltalake(
                self.lakehouse.uri(self.table),
                data,
                mode="append",
                partition_by=self.partition_by or None,
                schema_mode="merge",
                storage_options=self.lakehouse.storage_options or None,
                commit_properties=props,
            )
            return self.lakehouse.delta(self.table)
        # Passing the DeltaTable (not the URI) updates it in place to the new version.
        write_deltalake(dt, data, mode="append", schema_mode="merge", commit_properties=props)
        return dt

    # -- the loop -------------------------------------------------------------------
    def consume_once(self) -> BatchResult:
        """Read one micro-batch, commit what is new in ONE Delta commit, then XACK all of it."""
        try:
            return self._consume_once()
        except BaseException:
            self._reset()
            raise

    def _consume_once(self) -> BatchResult:
        if not self._group_ready:
            self.ensure_group()
        self._ensure_state()
        entries, from_pending = self._read()
        if not entries:
            return BatchResult()

        dt = self._table_handle()
        self._sync_state(dt)  # a previous incarnation may have committed since we looked
        watermark = self._watermark
        new = [e for e in entries if e.key > watermark and e.fields]
        skipped = sum(1 for e in entries if e.key <= watermark)
        missing = [e for e in entries if e.key > watermark and not e.fields]
        if skipped:
            log.info("%s: %d entries already committed (<= %s); acknowledging only", self.app_id, skipped, format_id(watermark))
        if missing:
            log.warning(
                "%s: %d pending entries no longer in the stream (trimmed/deleted before commit), e.g. %s",
                self.app_id, len(missing), missing[0].entry_id,
            )

        rows = None
        seq = table_version = batch_id = committed_at = None
        if new:
            seq = (self._seq or 0) + 1
            batch_id = batch_id_of(self.stream, (e.entry_id for e in new))
            committed_at = datetime.now(timezone.utc)
            rows = self._rows(new, batch_id, committed_at)
            metadata = {
                METADATA_KEY: {
                    "app_id": self.app_id,
                    "seq": seq,
                    "stream": self.stream,
                    "group": self.group,
                    "consumer": self.consumer,
                    "first_id": new[0].entry_id,
                    "last_id": new[-1].entry_id,
                    "batch_id": batch_id,
                    "messages": len(new),
                }
            }
            props = CommitProperties(custom_metadata=metadata, app_transactions=[Transaction(self.app_id, seq)])
            self._dt = self._commit(dt, rows, props)
            committed_at = datetime.now(timezone.utc)
            table_version = self._dt.version()
            self._seq, self._watermark = seq, new[-1].key

        result = BatchResult(
            read=len(entries),
            rows=len(new),
            skipped_committed=skipped,
            missing=len(missing),
            from_pending=from_pending,
            seq=seq,
            table_version=table_version,
            batch_id=batch_id,
            first_id=new[0].entry_id if new else None,
            last_id=new[-1].entry_id if new else None,
            committed_at=committed_at,
        )
        if new and self._after_commit is not None:
            self._after_commit(result)  # test hook: a crash between commit and XACK
        acked = self._ack([e.entry_id for e in entries])
        result = replace(result, acked=acked)
        if rows is not None and self.on_commit is not None:
            self.on_commit(result, rows)
        if rows is not None and self.on_batch is not None:
            self.on_batch(rows)
        return result

    def run(
        self,
        max_batches: int | None = None,
        stop_event: threading.Event | None = None,
        max_idle_polls: int | None = None,
    ) -> RunStats:
        """Consume until ``max_batches`` non-empty batches, ``stop_event`` is set, or
        ``max_idle_polls`` consecutive reads found nothing. Failures propagate (the caller
        restarts the consumer; nothing committed is lost or written twice)."""
        stats = RunStats()
        idle = 0
        while not (stop_event is not None and stop_event.is_set()):
            if max_batches is not None and stats.batches >= max_batches:
                break
            result = self.consume_once()
            if result.read == 0:
                idle += 1
                if max_idle_polls is not None and idle >= max_idle_polls:
                    break
                continue
            idle = 0
            stats.add(result)
        return stats


# -- streaming features (an on_batch example) -----------------------------------------
STREAMING_FEATURES_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "events_1h": pl.Int64(),
    "revenue_1h": pl.Float64(),
    "last_event_at": pl.Datetime("us", "UTC"),
    "as_of": pl.Datetime("us", "UTC"),
}


_EVENT_FIELDS = ("user_id", "timestamp", "revenue")
_EVENT_STRUCT = pl.Struct({f: pl.String() for f in _EVENT_FIELDS})
_FAST_TS_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%#z"  # what producers send: ISO-8601 with an offset


def _event_fields_by_path(payload: pl.Series) -> pl.DataFrame:
    """The reference: each field's JSON text by path (null for malformed JSON or a missing key)."""
    col = pl.col("payload")
    return payload.to_frame("payload").select(col.str.json_path_match(f"$.{f}").alias(f) for f in _EVENT_FIELDS)


def _event_fields(payload: pl.Series) -> pl.DataFrame:
    """``user_id``, ``timestamp``, ``revenue`` text of each payload, as :func:`_event_fields_by_path` gives them.

    One JSON decode of the column instead of one parse per field. Where the decoder could
    differ from the path lookup the reference decides: for the whole batch when the decode
    fails (a malformed payload, a field holding an object or array), and row by row where a
    key name occurs twice (the decoder keeps the first, the path the last) or ``user_id`` is
    not written as a plain string (a float would decode as ``1``, the path says ``1.0``).
    """
    try:
        fields = payload.to_frame("payload").select(pl.col("payload").str.json_decode(_EVENT_STRUCT)).unnest("payload")
    except Exception:  # noqa: BLE001 - any decoder error: the exact, slower way for this batch
        return _event_fields_by_path(payload)
    col = pl.col("payload")
    doubtful = pl.any_horizontal(
        *(col.str.count_matches(f'"{f}"', literal=True) > 1 for f in _EVENT_FIELDS),
        ~(col.str.contains('"user_id":"', literal=True) | col.str.contains('"user_id": "', literal=True)),
    )
    rows = payload.to_frame("payload").select(doubtful.alias("d")).to_series().arg_true()
    if rows.len():
        exact = _event_fields_by_path(payload.gather(rows))
        fields = fields.with_columns(fields[f].scatter(rows, exact[f]) for f in _EVENT_FIELDS)
    return fields


def _timestamps(text: pl.Series) -> pl.Series:
    """``parse_timestamps`` of ``text``; the common ISO-8601-with-offset form in one pass, the rest
    (other forms, stray whitespace, garbage) through every format of ``parse_timestamps``."""
    from hybrid_pipeline.transforms.silver import parse_timestamps

    fast = text.str.to_datetime(_FAST_TS_FORMAT, strict=False, time_unit="us").dt.convert_time_zone("UTC")
    rest = (fast.is_null() & text.is_not_null()).arg_true()
    if rest.len():
        slow = text.gather(rest).to_frame("t").select(parse_timestamps(pl.col("t"))).to_series()
        fast = fast.scatter(rest, slow.cast(fast.dtype))
    return fast.alias("ts")


def stream_events(rows_df: pl.DataFrame) -> pl.DataFrame:
    """``user_id``, ``ts`` (UTC) and ``revenue`` of the bronze stream rows that carry a user and a time.

    Field values are read as ``$.user_id``/``$.timestamp``/``$.revenue`` JSON paths would
    give them (malformed JSON: null), timestamps parsed like silver (``parse_timestamps``),
    revenue cast to a float where it is a number (else null).
    """
    fields = _event_fields(rows_df.get_column("payload"))
    return pl.DataFrame(
        [
            fields.get_column("user_id"),
            _timestamps(fields.get_column("timestamp")),
            fields.get_column("revenue").cast(pl.Float64, strict=False),
        ]
    ).filter(pl.col("user_id").is_not_null() & (pl.col("user_id") != "") & pl.col("ts").is_not_null())


def streaming_features(
    rows_df: pl.DataFrame, as_of: datetime | None = None, window: timedelta = timedelta(hours=1)
) -> pl.DataFrame:
    """Per ``user_id``: events and revenue in the ``window`` (1 h) ending at ``as_of``.

    Computed from the bronze rows of one batch alone (a pure function: no clock, no I/O);
    ``as_of`` defaults to the latest event timestamp in the batch. Only events with a
    ``user_id`` and a parseable ``timestamp`` in ``(as_of - window, as_of]`` count;
    revenue sums the non-negative numeric ``revenue`` values (null/invalid -> 0).
    Malformed payloads are ignored here (bronze still holds them).
    """
    events = stream_events(rows_df)
    if events.height == 0:
        return pl.DataFrame(schema=STREAMING_FEATURES_SCHEMA)
    end: datetime = as_of if as_of is not None else events["ts"].max()  # type: ignore[assignment]
    if end.tzinfo is None:
        end = end.replace(tzinfo=timezone.utc)
    start = end - window
    return (
        events.filter((pl.col("ts") > start) & (pl.col("ts") <= end))
        .group_by("user_id")
        .agg(
            pl.len().cast(pl.Int64).alias("events_1h"),
            pl.when(pl.col("revenue").is_finite() & (pl.col("revenue") >= 0))
            .then(pl.col("revenue"))
            .otherwise(0.0)
            .sum()
            .cast(pl.Float64)
            .alias("revenue_1h"),
            pl.col("ts").max().alias("last_event_at"),
        )
        .with_columns(pl.lit(end).cast(pl.Datetime("us", "UTC")).alias("as_of"))
        .sort("user_id")
        .select(list(STREAMING_FEATURES_SCHEMA))
        .cast(pl.Schema(STREAMING_FEATURES_SCHEMA))
    )
