"""Brute-force point-in-time join, written to be obviously correct rather than fast.

For every entity row and every source it lists the candidate feature rows (same key,
``ts <= t``, ``ts >= t - ttl`` when a TTL is set), keeps those with the latest event
timestamp, then those with the latest created timestamp (null created loses). When more
than one row survives, Feast does not define which wins, so the oracle returns the *set*
of acceptable feature tuples.

As-known-at (``as_known_at=True``, Feast's ``filter_by_created_timestamp``): a candidate
must also have a created timestamp, at or before ``t``; a row without one is never a
candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


@dataclass
class OracleSource:
    rows: Sequence[dict[str, Any]]
    join_keys: Sequence[str]
    timestamp_field: str
    feature_columns: Sequence[str]
    created_timestamp_field: str | None = None
    ttl: timedelta | None = None
    entity_join_keys: Sequence[str] | None = None
    as_known_at: bool = False


def acceptable_features(entity_row: dict[str, Any], t: datetime, source: OracleSource) -> set[tuple]:
    """Every feature tuple a correct join may return for this entity row and source."""
    ekeys = source.entity_join_keys or source.join_keys
    t = utc(t)
    candidates = []
    for row in source.rows:
        if any(row[k] is None or row[k] != entity_row[ek] for k, ek in zip(source.join_keys, ekeys)):
            continue
        ts = utc(row[source.timestamp_field])
        if ts is None or ts > t:
            continue
        if source.ttl is not None and ts < t - source.ttl:
            continue
        if source.as_known_at and source.created_timestamp_field:
            created = utc(row[source.created_timestamp_field])
            if created is None or created > t:
                continue
        candidates.append(row)
    if not candidates:
        return {tuple(None for _ in source.feature_columns)}
    best_ts = max(utc(r[source.timestamp_field]) for r in candidates)
    best = [r for r in candidates if utc(r[source.timestamp_field]) == best_ts]
    if source.created_timestamp_field:
        created = [utc(r[source.created_timestamp_field]) for r in best]
        if any(c is not None for c in created):
            top = max(c for c in created if c is not None)
            best = [r for r, c in zip(best, created) if c == top]
    return {tuple(r[f] for f in source.feature_columns) for r in best}


def oracle_join(
    entity_rows: Sequence[dict[str, Any]], sources: Sequence[OracleSource], ts_col: str = "event_timestamp"
) -> list[list[set[tuple]]]:
    """``result[i][j]``: acceptable feature tuples of source ``j`` for entity row ``i``."""
    return [[acceptable_features(row, row[ts_col], s) for s in sources] for row in entity_rows]
