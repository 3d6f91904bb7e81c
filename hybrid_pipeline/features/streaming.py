"""Streaming features: per-user events and revenue in the last hour, kept online per micro-batch.

A batch sees only its own events, so the hour is kept as per-minute buckets inside the
user's online record and merged on every batch: counts stay exact across batches, buckets
older than the window fall off, and a replayed batch can be detected by its batch id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import msgpack
import polars as pl

from hybrid_pipeline.online import OnlineReader, PackedRecord

VIEW = "user_streaming_features"
WINDOW = timedelta(hours=1)
FEATURES = ("events_1h", "revenue_1h")
WINDOW_MINUTES = int(WINDOW.total_seconds() // 60)
MAX_BATCH_IDS = 50  # batch ids remembered per user, to ignore a replayed batch
BATCH_ID_CHARS = 16  # of a batch id (64 hex characters of sha256): 64 bits tell 50 batches apart


def minute_buckets(rows: pl.DataFrame) -> dict[str, dict[int, tuple[int, float]]]:
    """Bronze stream rows -> {user_id: {epoch_minute: (events, revenue)}}; bad payloads are skipped."""
    from hybrid_pipeline.sources.stream import stream_events

    events = stream_events(rows)
    grouped = (
        events.with_columns(
            (pl.col("ts").dt.epoch("s") // 60).alias("minute"),
            pl.when(pl.col("revenue").is_finite() & (pl.col("revenue") >= 0)).then(pl.col("revenue")).otherwise(0.0).alias("revenue"),
        )
        .group_by("user_id", "minute")
        .agg(pl.len().alias("n"), pl.col("revenue").sum().alias("rev"))
    )
    out: dict[str, dict[int, tuple[int, float]]] = {}
    for uid, minute, n, rev in grouped.iter_rows():
        out.setdefault(uid, {})[int(minute)] = (int(n), float(rev))
    return out


def _stored_buckets(raw: Any) -> dict[int, list]:
    """{minute: [events, revenue]} of a stored record: msgpack bytes of ``[[minute, events, revenue], ...]``,
    or the JSON text ``{"<minute>": [events, revenue]}`` of records written before."""
    if not raw:
        return {}
    if isinstance(raw, str):
        return {int(k): [v[0], v[1]] for k, v in json.loads(raw).items()}
    return {row[0]: [row[1], row[2]] for row in msgpack.unpackb(raw)}


def _stored_batches(raw: Any) -> list:
    if not raw:
        return []
    return json.loads(raw) if isinstance(raw, str) else msgpack.unpackb(raw)


def merge_window(
    existing: Mapping | None, batch: Mapping[int, tuple[int, float]], now: datetime, batch_id: str | None = None
) -> dict:
    """The user's new online record: old buckets + this batch's, trimmed to the window.

    ``buckets`` (``[[epoch_minute, events, revenue], ...]`` in minute order) and ``batches`` (the
    first 16 characters of the last 50 batch ids merged) are stored as msgpack *bytes*: merging them costs a few
    microseconds where JSON text cost a parse and a rewrite of every user's hour on every
    batch, and readers (each serving lookup unpacks the whole record) still get one opaque
    value, as with text; native lists would make every lookup decode them. Records holding
    JSON text (the earlier form) are read too.
    """
    oldest = int(now.timestamp() // 60) - WINDOW_MINUTES + 1
    buckets: dict[int, list] = {}
    seen: list = []
    if existing:
        buckets = {m: v for m, v in _stored_buckets(existing.get("buckets")).items() if m >= oldest}
        seen = _stored_batches(existing.get("batches"))
    short_id = None if batch_id is None else batch_id[:BATCH_ID_CHARS]
    if batch_id is not None and (short_id in seen or batch_id in seen):  # full ids: records written before
        batch = {}  # already merged (a replayed batch)
    for minute, (n, rev) in batch.items():
        if minute < oldest:
            continue
        cur = buckets.get(minute)
        if cur is None:
            buckets[minute] = [n, rev]
        else:
            cur[0] += n
            cur[1] += rev
    if batch_id is not None:
        seen.append(short_id)
        seen = seen[-MAX_BATCH_IDS:]
    events = 0
    revenue = 0.0
    rows = []
    for minute in sorted(buckets):
        n, rev = buckets[minute]
        events += n
        revenue += rev
        rows.append((minute, int(n), float(rev)))
    return {
        "events_1h": int(events),
        "revenue_1h": round(float(revenue), 2),
        "buckets": msgpack.packb(rows),
        "batches": msgpack.packb(seen),
    }


def push(rows: pl.DataFrame, reader, writer, now: datetime | None = None, batch_id: str | None = None) -> int:  # noqa: ANN001
    """Merge one committed micro-batch into the users' online records; returns users updated."""
    per_user = minute_buckets(rows)
    if not per_user:
        return 0
    now = now or datetime.now(timezone.utc)
    # created: the batch's commit time (its bronze ingested_at), when these counts became known
    committed = rows["ingested_at"].max() if "ingested_at" in rows.columns else None
    users = sorted(per_user)
    current = reader.get(VIEW, users)
    records = [(uid, merge_window(cur, per_user[uid], now, batch_id), now, committed or now)
               for uid, cur in zip(users, current, strict=True)]
    return writer.write_records(VIEW, records)


class CombinedReader:
    """Serves batch features and streaming features as one record per user.

    A merged record is dated by the *oldest* event timestamp of its parts. Clients judge
    staleness from that timestamp, and a record is only as fresh as its stalest feature:
    dating it by fresh streaming counts would hide batch features a day old, and counts
    last pushed hours ago (a user with no recent events) are as old as that push. A user
    with only one part is dated by that part; the created timestamp is the newest known write.
    """

    def __init__(self, reader: OnlineReader, extra_views: tuple[str, ...] = (VIEW,)) -> None:
        self.reader = reader
        self.extra_views = extra_views

    def get_records(self, view: str, entity_ids: Sequence[str]) -> list[PackedRecord | None]:
        """``view``'s records with the streaming features merged in (``None`` where no part is stored)."""
        merged = self.reader.get_records(view, entity_ids)
        for extra in self.extra_views:
            for i, rec in enumerate(self.reader.get_records(extra, entity_ids)):
                if rec is not None:
                    merged[i] = _merge(merged[i], rec)
        return merged

    def get(self, view: str, entity_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Feature dicts of :meth:`get_records`."""
        return [None if rec is None else rec.features for rec in self.get_records(view, entity_ids)]

    def ping(self) -> bool:
        return self.reader.ping()

    def close(self) -> None:
        self.reader.close()


def _merge(base: PackedRecord | None, streaming: PackedRecord) -> PackedRecord:
    """``base`` with ``streaming``'s features (a brand-new user is served its fresh counts alone)."""
    fresh = {k: streaming.features[k] for k in FEATURES if k in streaming.features}
    if base is None:
        return PackedRecord(fresh, streaming.event_ts_us, streaming.created_ts_us)
    created = [ts for ts in (base.created_ts_us, streaming.created_ts_us) if ts is not None]
    return PackedRecord({**base.features, **fresh}, min(base.event_ts_us, streaming.event_ts_us),
                        max(created) if created else None)
