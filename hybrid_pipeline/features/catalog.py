"""The feature views this project serves, declared once from the gold feature tables.

Both the Dagster assets and the generated Feast repo read this list, so a feature table and
its feature view cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import polars as pl

from hybrid_pipeline.features.repo import FeatureTableSpec
from hybrid_pipeline.transforms.features import FEATURE_COLUMNS, FEATURES_SCHEMA

PROJECT = "hybrid_pipeline"
PURCHASE_SERVICE = "purchase_model"
USER_FEATURE_TTL = timedelta(days=30)
_FEAST_TYPES = {pl.Int64(): "Int64", pl.Float64(): "Float64", pl.String(): "String", pl.Int8(): "Int32"}


def feature_tables(user_features_uri: str, version: int | None = None) -> list[FeatureTableSpec]:
    return [
        FeatureTableSpec(
            name="user_features",
            delta_uri=user_features_uri,
            entity_key="user_id",
            timestamp_field="event_timestamp",
            features={c: _FEAST_TYPES[FEATURES_SCHEMA[c]] for c in FEATURE_COLUMNS},
            ttl=USER_FEATURE_TTL,
            version=version,
            description="User behaviour as of the end of each day (gold/user_features).",
            owner="team:ml-platform",
        )
    ]


def feature_refs(view: str = "user_features") -> list[str]:
    return [f"{view}:{c}" for c in FEATURE_COLUMNS]


def definitions_hash(tables: list[FeatureTableSpec]) -> str:
    """A stable hash of what the features are (names, types, TTL), not where they live."""
    payload = [
        {"name": t.name, "entity": t.entity_key, "ts": t.timestamp_field, "features": dict(t.features), "ttl": str(t.ttl)}
        for t in tables
    ]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def online_sqlite_path(repo_dir: str) -> str:
    return f"{repo_dir}/data/online_store.db"


def online_store_config(setting: str, repo_dir: str) -> dict:
    """``HYBRID_ONLINE_STORE`` (``sqlite`` or ``redis://host:port/db``) as our packed Feast online store."""
    from hybrid_pipeline.online.config import online_store_block

    if setting.strip().lower() in ("", "sqlite"):
        return online_store_block(f"sqlite://{online_sqlite_path(repo_dir)}")  # repo_dir is absolute
    return online_store_block(setting)
