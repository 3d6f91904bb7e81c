"""Small deterministic feature data sets, their Delta tables and repo specs."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl

from hybrid_pipeline.features.repo import FeatureTableSpec

UTC = timezone.utc
T0 = datetime(2024, 3, 1, tzinfo=UTC)
USERS = [f"u{i}" for i in range(12)]
ACTIVITY_TTL = timedelta(hours=6)
PROFILE_TTL = timedelta(days=30)


def hours(h: float) -> datetime:
    return T0 + timedelta(hours=h)


def activity_rows(seed: int = 7, n: int = 400) -> list[dict[str, Any]]:
    """Activity feature rows: hourly event times (ties), distinct created times, late rows."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ts = hours(rng.randint(0, 72))
        lateness = timedelta(minutes=rng.choice([0, 5, 90, 60 * 48]))  # some arrive days late
        rows.append(
            {
                "user_id": rng.choice(USERS),
                "event_timestamp": ts,
                "created": ts + lateness + timedelta(microseconds=i),  # distinct: a unique winner
                "clicks_1h": float(rng.randint(0, 50)),
                "sessions_1h": rng.randint(0, 5),
            }
        )
    rng.shuffle(rows)
    return rows


def profile_rows(seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for user in USERS[:-2]:  # the last two users never get a profile
        for day in sorted(rng.sample(range(0, 4), 2)):
            rows.append(
                {
                    "user_id": user,
                    "event_timestamp": hours(24 * day + rng.randint(0, 23)),
                    "segment": rng.choice(["new", "casual", "power"]),
                    "lifetime_value": round(rng.uniform(0, 500), 2),
                }
            )
    return rows


def entity_rows(seed: int = 3, n: int = 150) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = [
        {
            "user_id": rng.choice([*USERS, "ghost"]),
            "event_timestamp": hours(rng.uniform(-5, 80)),
            "label": rng.randint(0, 1),
        }
        for _ in range(n)
    ]
    rows += [dict(r) for r in rng.sample(rows, 10)]  # duplicate entity rows
    rows.append({"user_id": USERS[0], "event_timestamp": hours(-1), "label": 0})  # before any feature
    return rows


def rows_frame(rows: list[dict[str, Any]], schema: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=schema, orient="row")


ACTIVITY_SCHEMA = {
    "user_id": pl.String,
    "event_timestamp": pl.Datetime("us", "UTC"),
    "created": pl.Datetime("us", "UTC"),
    "clicks_1h": pl.Float64,
    "sessions_1h": pl.Int64,
}
PROFILE_SCHEMA = {
    "user_id": pl.String,
    "event_timestamp": pl.Datetime("us", "UTC"),
    "segment": pl.String,
    "lifetime_value": pl.Float64,
}


def table_specs(activity_uri: str, profile_uri: str, activity_version: int | None = None) -> list[FeatureTableSpec]:
    return [
        FeatureTableSpec(
            name="user_activity",
            delta_uri=activity_uri,
            entity_key="user_id",
            timestamp_field="event_timestamp",
            created_timestamp_field="created",
            features={"clicks_1h": "Float64", "sessions_1h": "Int64"},
            ttl=ACTIVITY_TTL,
            version=activity_version,
        ),
        FeatureTableSpec(
            name="user_profile",
            delta_uri=profile_uri,
            entity_key="user_id",
            timestamp_field="event_timestamp",
            features={"segment": "String", "lifetime_value": "Float64"},
            ttl=PROFILE_TTL,
        ),
    ]


@dataclass
class FeatureRepo:
    path: Path
    activity_uri: str
    profile_uri: str
    activity: list[dict[str, Any]]
    profile: list[dict[str, Any]]


def entity_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [r["user_id"] for r in rows],
            "event_timestamp": pd.to_datetime([r["event_timestamp"] for r in rows], utc=True),
            "label": [r["label"] for r in rows],
        }
    )
