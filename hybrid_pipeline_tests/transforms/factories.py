"""Small builders for bronze and silver frames used by the transform specifications."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

import polars as pl

from hybrid_pipeline.transforms.contract import silver_schema

DAY = "2024-03-01"
SOURCE = f"events/{DAY}/events-0000.jsonl"
EXISTING_SCHEMA = {"event_id": pl.String, "landing_date": pl.String, "source_file": pl.String, "line_number": pl.Int64}
_DROP = object()


def no_existing() -> pl.LazyFrame:
    return pl.LazyFrame(schema=EXISTING_SCHEMA)


def record(**overrides: Any) -> dict[str, Any]:
    """A valid contract record; pass ``field=DROP`` to leave a field out."""
    rec: dict[str, Any] = {
        "event_id": "e1",
        "user_id": "u1",
        "session_id": "s1",
        "event_type": "view",
        "timestamp": "2024-03-01T10:00:00Z",
        "product_id": "p1",
        "session_duration": 1.5,
        "revenue": None,
        "user_segment": "new",
        "email": "user1@example.com",
    }
    rec.update(overrides)
    return {k: v for k, v in rec.items() if v is not _DROP}


DROP = _DROP


def line(**overrides: Any) -> str:
    return json.dumps(record(**overrides))


def bronze(payloads: list[str], source_file: str = SOURCE, first_line: int = 1, landing_date: str = DAY) -> pl.DataFrame:
    n = len(payloads)
    return pl.DataFrame(
        {
            "landing_date": [landing_date] * n,
            "source_file": [source_file] * n,
            "line_number": list(range(first_line, first_line + n)),
            "file_sha256": ["0" * 64] * n,
            "payload": payloads,
        },
        schema={"landing_date": pl.String, "source_file": pl.String, "line_number": pl.Int64, "file_sha256": pl.String, "payload": pl.String},
    )


def silver(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Silver rows from partial dicts: event_date and hour are derived from the timestamp."""
    defaults = {
        "session_id": "s",
        "product_id": "p",
        "session_duration": 1.0,
        "revenue": None,
        "email_hash": None,
        "landing_date": DAY,
        "source_file": SOURCE,
        "line_number": 1,
    }
    full = [{**defaults, **r} for r in rows]
    for r in full:
        ts: datetime = r["timestamp"]
        r.setdefault("event_date", date(ts.year, ts.month, ts.day))
        r.setdefault("hour", ts.hour)
    schema = silver_schema()
    return pl.DataFrame([{c: r.get(c) for c in schema} for r in full], schema=schema, orient="row")
