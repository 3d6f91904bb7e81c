"""Streaming features: per-user events and revenue in the last hour, kept online per micro-batch.

A batch sees only its own events, so the hour is kept as per-minute buckets inside the
user's online record and merged on every batch: counts stay exact across batches, buckets
older than the window fall off, and a replayed batch can be detected by its batch id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

import polars as pl

VIEW = "user_streaming_features"
WINDOW = timedelta(hours=1)
FEATURES = ("events_1h", "revenue_1h")


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


def merge_window(
    existing: Mapping | None, batch: Mapping[int, tuple[int, float]], now: datetime, batch_id: str | None = None
) -> dict:
    """The user's new online record: old buckets + this batch's, trimmed to the window."""
    buckets: dict[int, list] = {}
    seen: list[str] = []
    if existing and existing.get("buckets"):
        buckets = {int(k): list(v) for k, v in json.loads(existing["buckets"]).items()}
        seen = json.loads(existing.get("batches") or "[]")
    if batch_id is not None and batch_id in seen:
        batch = {}  # already merged (a replayed batch)
    for minute, (n, rev) in batch.items():
        cur = buckets.setdefault(minute, [0, 0.0])
        cur[0] += n
        cur[1] += rev
    oldest = int(now.timestamp() // 60) - int(WINDOW.total_seconds() // 60) + 1
    buckets = {m: v for m, v in buckets.items() if m >= oldest}
    if batch_id is not None:
        seen = (seen + [batch_id])[-50:]
    return {
        "events_1h": int(sum(v[0] for v in buckets.values())),
        "revenue_1h": round(float(sum(v[1] for v in buckets.values())), 2),
        "buckets": json.dumps({str(k): v for k, v in sorted(buckets.items())}),
        "batches": json.dumps(seen),
    }


def push(rows: pl.DataFrame, reader, writer, now: datetime | None = None, batch_id: str | None = None) -> int:  # noqa: ANN001
    """Merge one committed micro-batch into the users' online records; returns users updated."""
    per_user = minute_buckets(rows)
    if not per_user:
        return 0
    now = now or datetime.now(timezone.utc)
    users = sorted(per_user)
    current = reader.get(VIEW, users)
    records = [(uid, merge_window(cur, per_user[uid], now, batch_id), now, None) for uid, cur in zip(users, current, strict=True)]
    return writer.write_records(VIEW, records)


class CombinedReader:
    """Serves batch features and streaming features as one record per user."""

    def __init__(self, reader, extra_views: tuple[str, ...] = (VIEW,)) -> None:  # noqa: ANN001
        self.reader = reader
        self.extra_views = extra_views

    def get(self, view: str, entity_ids):  # noqa: ANN001, ANN201
        base = self.reader.get(view, entity_ids)
        for extra in self.extra_views:
            for i, rec in enumerate(self.reader.get(extra, entity_ids)):
                if rec is None:
                    continue
                fresh = {k: rec[k] for k in FEATURES if k in rec}
                base[i] = {**(base[i] or {}), **fresh}  # a brand-new user is served its fresh counts
        return base

    def ping(self) -> bool:
        return self.reader.ping()

    def close(self) -> None:
        self.reader.close()
