"""The feature views this project serves, declared once from the gold feature tables.

Both the Dagster assets and the generated Feast repo read this list, so a feature table and
its feature view cannot drift apart.

* ``user_features`` over ``gold/user_features`` (30-day TTL);
* ``user_activity`` over ``gold/user_landing_summary``: each user's newest event timestamp
  (``last_seen``, served as the feature ``last_event_at``), no TTL;
* the on-demand view ``user_request_features`` over both and the request
  (:mod:`hybrid_pipeline.features.on_demand`).

**Versions.** Every view has a content version (:func:`view_versions`; for a table view a hash of
its source table, keys, columns, types and TTL, for an on-demand view also the transformation's
source code and its inputs' versions). The generated repo registers each table view twice: under
its name (what serving and the CLI read) and under ``<name>__v<version[:8]>`` (offline only);
a versioned name stays registered after the definition changes, for as long as a model holding
a registry alias was trained on it (:func:`write_repo` with the versions from
:func:`versions_in_use`), so such a model's training set stays retrievable by name.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl

from hybrid_pipeline.features import on_demand
from hybrid_pipeline.features.on_demand import OnDemandSpec
from hybrid_pipeline.features.repo import FeatureTableSpec
from hybrid_pipeline.online.backends import DEFAULT_SQLITE_PATH, parse_online_url
from hybrid_pipeline.online.config import online_store_block
from hybrid_pipeline.transforms.features import FEATURE_COLUMNS, FEATURES_SCHEMA

PROJECT = "hybrid_pipeline"
PURCHASE_SERVICE = "purchase_model"
USER_FEATURES_VIEW = "user_features"
USER_FEATURE_TTL = timedelta(days=30)
USER_FEATURES_TABLE = "gold/user_features"
ACTIVITY_VIEW = on_demand.ACTIVITY_VIEW
ACTIVITY_TABLE = "gold/user_landing_summary"
REQUEST_FEATURES_VIEW = on_demand.USER_REQUEST_FEATURES.name
VERSIONS_FILE = "view_versions.json"
FEATURE_STORE_MODELS = ("purchase_model",)
"""Registered models trained on these feature views (the digit classifier reads images, not views)."""
_VERSIONED = re.compile(r"^(?P<view>[A-Za-z_][A-Za-z0-9_]*?)__v(?P<version>[0-9a-f]{8})$")
_FEAST_TYPES = {pl.Int64(): "Int64", pl.Float64(): "Float64", pl.String(): "String", pl.Int8(): "Int32"}


def feature_tables(
    user_features_uri: str,
    version: int | None = None,
    *,
    activity_uri: str | None = None,
    activity_version: int | None = None,
) -> list[FeatureTableSpec]:
    """The table views: ``user_features`` (at ``version``), and ``user_activity`` when ``activity_uri`` is given."""
    tables = [
        FeatureTableSpec(
            name=USER_FEATURES_VIEW,
            delta_uri=user_features_uri,
            entity_key="user_id",
            timestamp_field="event_timestamp",
            created_timestamp_field="created_timestamp",  # when the row became known (as-known-at retrieval)
            features={c: _FEAST_TYPES[FEATURES_SCHEMA[c]] for c in FEATURE_COLUMNS},
            ttl=USER_FEATURE_TTL,
            version=version,
            description="User behaviour as of the end of each day (gold/user_features).",
            owner="team:ml-platform",
            source_table=USER_FEATURES_TABLE,
        )
    ]
    if activity_uri is not None:
        tables.append(activity_table(activity_uri, activity_version))
    return tables


def activity_table(uri: str, version: int | None = None) -> FeatureTableSpec:
    """``user_activity``: a user's newest event time as of any instant (the row with the newest ``last_seen``)."""
    return FeatureTableSpec(
        name=ACTIVITY_VIEW,
        delta_uri=uri,
        entity_key="user_id",
        timestamp_field="last_seen",
        features={"last_event_at": "UnixTimestamp"},
        field_mapping={"last_seen": "last_event_at"},
        ttl=None,
        version=version,
        online=True,
        description="Each user's newest event timestamp (gold/user_landing_summary.last_seen), the input of "
        "seconds_since_last_event.",
        owner="team:ml-platform",
        source_table=ACTIVITY_TABLE,
    )


def on_demand_views(tables: Iterable[FeatureTableSpec]) -> list[OnDemandSpec]:
    """The on-demand views whose every input view is among ``tables``, with their inputs' versions."""
    versions = {t.name: t.content_version() for t in tables}
    specs = [on_demand.USER_REQUEST_FEATURES]
    return [replace(s, input_versions={v: versions[v] for v in s.inputs}) for s in specs
            if all(v in versions for v in s.inputs)]


def view_versions(tables: Iterable[FeatureTableSpec]) -> dict[str, str]:
    """Content version of every view (table views and the on-demand views over them), by view name."""
    tables = list(tables)
    versions = {t.name: t.content_version() for t in tables}
    versions.update({s.name: s.version(s.input_versions) for s in on_demand_views(tables)})
    return versions


def versioned_name(view: str, version: str) -> str:
    """``user_features__v<first 8 hex digits of the content version>``."""
    return f"{view}__v{version[:8]}"


def versioned_table(spec: FeatureTableSpec) -> FeatureTableSpec:
    """``spec`` registered under its versioned name, offline only (serving reads the current name)."""
    return replace(spec, name=versioned_name(spec.name, spec.content_version()), online=False,
                   description=f"{spec.name} at content version {spec.content_version()}. {spec.description}".strip())


def versioned_names(versions: Mapping[str, str]) -> set[str]:
    """The versioned view names of ``{view: version}`` (as a training set or a model records them)."""
    return {versioned_name(view, version) for view, version in versions.items()}


def _spec_json(spec: FeatureTableSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["ttl"] = None if spec.ttl is None else spec.ttl.total_seconds()
    return d


def _spec_from_json(d: Mapping[str, Any]) -> FeatureTableSpec:
    d = dict(d)
    d["ttl"] = None if d.get("ttl") is None else timedelta(seconds=d["ttl"])
    return FeatureTableSpec(**d)


def retained_versions(repo_dir: str | Path) -> dict[str, FeatureTableSpec]:
    """The versioned table views the repo in ``repo_dir`` registers now (``data/view_versions.json``)."""
    path = Path(repo_dir) / "data" / VERSIONS_FILE
    if not path.exists():
        return {}
    return {name: _spec_from_json(d) for name, d in json.loads(path.read_text()).items()}


def write_repo(
    repo_dir: str | Path,
    online_setting: str,
    user_features_uri: str,
    activity_uri: str | None,
    *,
    feature_services: Mapping[str, list[str]] | None = None,
    storage_options: Mapping[str, str] | None = None,
    versions_in_use: set[str] | None = None,
) -> dict[str, Any]:
    """Generate the Feast repo: the current views, their versioned copies and the older versions still needed.

    ``versions_in_use``: versioned names that models holding a registry alias were trained on
    (:func:`versions_in_use`); an older versioned view is kept when it is among them and dropped
    otherwise. ``None`` (unknown, e.g. a model that predates version records) keeps every older
    version registered so far. Returns ``{"versions", "registered", "dropped"}``.
    """
    from hybrid_pipeline.features.repo import write_feature_repo

    tables = feature_tables(user_features_uri, activity_uri=activity_uri)
    current = {versioned_table(t).name: versioned_table(t) for t in tables}
    previous = retained_versions(repo_dir)
    kept = {n: s for n, s in previous.items()
            if n not in current and (versions_in_use is None or n in versions_in_use)}
    dropped = sorted(n for n in previous if n not in current and n not in kept)
    registered = {**kept, **current}
    write_feature_repo(repo_dir, PROJECT, [*tables, *registered.values()], online_store_config(online_setting, str(repo_dir)),
                       feature_services=feature_services, offline_storage_options=storage_options,
                       on_demand=on_demand_views(tables))
    path = Path(repo_dir) / "data" / VERSIONS_FILE
    path.write_text(json.dumps({n: _spec_json(s) for n, s in sorted(registered.items())}, indent=1))
    return {"versions": view_versions(tables), "registered": sorted(registered), "dropped": dropped}


def is_versioned_name(name: str) -> bool:
    return _VERSIONED.match(name) is not None


def versions_in_use(tracking_uri: str, model_names: Iterable[str] = FEATURE_STORE_MODELS) -> set[str] | None:
    """Versioned view names that versions of ``model_names`` holding an alias (``production``...) were trained on.

    Read from each aliased version's run tag ``feature_view_versions``; ``None`` when one of them
    did not record it (then nothing may be dropped). An MLflow store that does not exist yet holds
    no models: empty set.
    """
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists():
        return set()
    from hybrid_pipeline.ml.registry import mlflow_client

    client = mlflow_client(tracking_uri)
    used: set[str] = set()
    wanted = set(model_names)
    for model in client.search_registered_models():
        if model.name not in wanted:
            continue
        for version in set((model.aliases or {}).values()):
            run_id = client.get_model_version(model.name, str(version)).run_id
            recorded = client.get_run(run_id).data.tags.get("feature_view_versions") if run_id else None
            if not recorded:
                return None
            used |= versioned_names(json.loads(recorded))
    return used


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
