"""The feature views this project serves, declared once from the gold feature tables.

Both the Dagster assets and the generated Feast repo read this list, so a feature table and
its feature view cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import polars as pl

from hybrid_pipeline.features.repo import FeatureTableSpec
from hybrid_pipeline.online.backends import DEFAULT_SQLITE_PATH, parse_online_url
from hybrid_pipeline.online.config import online_store_block
from hybrid_pipeline.transforms.features import FEATURE_COLUMNS, FEATURES_SCHEMA

PROJECT = "hybrid_pipeline"
PURCHASE_SERVICE = "purchase_model"
USER_FEATURES_VIEW = "user_features"
USER_FEATURE_TTL = timedelta(days=30)
_FEAST_TYPES = {pl.Int64(): "Int64", pl.Float64(): "Float64", pl.String(): "String", pl.Int8(): "Int32"}


def feature_tables(user_features_uri: str, version: int | None = None) -> list[FeatureTableSpec]:
    return [
        FeatureTableSpec(
            name=USER_FEATURES_VIEW,
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


def feature_refs(view: str = USER_FEATURES_VIEW) -> list[str]:
    return [f"{view}:{c}" for c in FEATURE_COLUMNS]


def definitions_hash(tables: list[FeatureTableSpec]) -> str:
    """A stable hash of what the features are (names, types, TTL), not where they live."""
    payload = [
        {"name": t.name, "entity": t.entity_key, "ts": t.timestamp_field, "features": dict(t.features), "ttl": str(t.ttl)}
        for t in tables
    ]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def online_sqlite_path(repo_dir: str) -> str:
    """The SQLite file of plain ``sqlite``: the one ``OnlineStoreSetting`` and the Feast repo name too."""
    return str(Path(repo_dir) / DEFAULT_SQLITE_PATH)


def online_url(setting: str, repo_dir: str) -> str:
    """An online-store setting as the direct clients open it (plain ``sqlite``: :func:`online_sqlite_path`).

    Settings hand over an already resolved URL (``Settings.online_store.url``), which comes back as is.
    """
    spec = parse_online_url(setting, online_sqlite_path(repo_dir), base_dir=repo_dir)
    return spec.target if spec.kind == "redis" else f"sqlite://{spec.target}"


def online_store_config(setting: str, repo_dir: str) -> dict:
    """An online-store setting as the ``online_store`` block of the generated Feast repo (our packed store)."""
    return online_store_block(online_url(setting, repo_dir))
