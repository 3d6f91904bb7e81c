"""Generate a Feast feature repo whose offline store is the Delta store of this package.

``write_feature_repo`` writes ``feature_store.yaml`` and one definitions module
(``feature_definitions.py``) built from :class:`FeatureTableSpec` values: one entity per
distinct entity key, one ``FeatureView`` over a :class:`DeltaSource` per table, optionally
on-demand feature views (:class:`~hybrid_pipeline.features.on_demand.OnDemandSpec`: a
``RequestSource`` and an ``OnDemandFeatureView`` in python mode whose UDF is a function of an
importable module, so training and serving run the same code), and feature services (by
default one named ``<project>_all`` listing every view).

Every table spec has a content version (:meth:`FeatureTableSpec.content_version`: a hash of
its source table, keys, timestamp fields, columns and types, field mapping and TTL, not of
where the table lives or which Delta version is pinned); the generated views carry it as the
tag ``content_version``.

The generated module only holds literals checked here (identifiers, Feast type names,
repr'd strings), so it can be regenerated on every run and applied with ``feast apply``
(run with ``cwd=repo_dir``; Feast imports repo files by their path relative to the
working directory) or in-process with :func:`apply_feature_repo`.

:func:`temporary_feature_store` builds the same objects from the same generated text in
memory (for instance with every table pinned to a Delta version) and registers them in a
throwaway registry, so a retrieval at other versions never rewrites the generated repo
that the ``feast`` CLI, the online materialization and the checks read meanwhile.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import keyword
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFINITIONS_FILE",
    "FEAST_TYPES",
    "FeatureTableSpec",
    "apply_feature_repo",
    "feature_objects",
    "key_index_dir",
    "load_feature_definitions",
    "temporary_feature_store",
    "write_feature_repo",
]

DEFINITIONS_FILE = "feature_definitions.py"
OFFLINE_STORE_TYPE = "hybrid_pipeline.features.delta_offline_store.DeltaOfflineStore"

# Feast scalar types accepted in specs; "Array(<scalar>)" is accepted too.
FEAST_TYPES = frozenset(
    {"Bool", "Bytes", "Float32", "Float64", "Int32", "Int64", "String", "UnixTimestamp", "Json"}
)
_ARRAY = re.compile(r"^Array\((\w+)\)$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VALUE_TYPES = {"string": "STRING", "int64": "INT64", "int32": "INT32", "bytes": "BYTES"}


def _ident(value: str, what: str) -> str:
    if not _IDENT.match(value) or keyword.iskeyword(value):
        raise ValueError(f"{what} {value!r} is not a valid identifier")
    return value


def _feast_type(value: str) -> str:
    match = _ARRAY.match(value)
    inner = match.group(1) if match else value
    if inner not in FEAST_TYPES:
        raise ValueError(f"unknown Feast type {value!r}; use one of {sorted(FEAST_TYPES)} or Array(<type>)")
    return value


@dataclass(frozen=True)
class FeatureTableSpec:
    """One Delta table exposed as one Feast feature view.

    Attributes:
        name: feature view name.
        delta_uri: Delta table URI (absolute path, repo-relative path, or ``s3://``...).
        entity_key: join key column (e.g. ``user_id``).
        timestamp_field: event timestamp column.
        features: feature column -> Feast type name (``Float64``, ``Int64``, ``String``,
            ``Array(Float32)``...), in output order.
        ttl: feature age limit; ``None`` means no limit.
        entity_name: Feast entity name; default: the key without a trailing ``_id``.
        entity_value_type: ``string``, ``int64``, ``int32`` or ``bytes``.
        created_timestamp_field: optional tie-breaker column.
        version: pinned Delta table version (time travel), ``None`` = latest.
        online: whether ``feast materialize`` loads this view into the online store.
        description, tags, owner: copied onto the view.
        field_mapping: source column -> feature name (Feast's ``field_mapping``), e.g. to serve
            the timestamp column itself as a feature (``{"last_seen": "last_event_at"}``).
        source_table: the table's logical name (``gold/user_features``); what the content
            version hashes instead of ``delta_uri``, so moving the lakehouse is no new version.
        vector_fields: ``Array(Float32)`` features indexed for Feast's vector search
            (``retrieve_online_documents_v2``), feature -> vector length; ``vector_metric`` their metric.
    """

    name: str
    delta_uri: str
    entity_key: str
    timestamp_field: str
    features: Mapping[str, str]
    ttl: timedelta | None = None
    entity_name: str | None = None
    entity_value_type: str = "string"
    created_timestamp_field: str | None = None
    version: int | None = None
    online: bool = True
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    owner: str = ""
    field_mapping: Mapping[str, str] = field(default_factory=dict)
    source_table: str = ""
    vector_fields: Mapping[str, int] = field(default_factory=dict)
    vector_metric: str = "COSINE"

    def content_version(self) -> str:
        """A hash of what the view is (source table, keys, timestamps, columns, mapping, TTL), 16 hex digits.

        Not of its name, location, pinned Delta version, description or tags: the same
        definition under a versioned name (``<name>__v<hash[:8]>``) has the same version.
        """
        payload = {
            "source": self.source_table or self.delta_uri,
            "entity": [self.resolved_entity_name(), self.entity_key, self.entity_value_type],
            "timestamp": self.timestamp_field,
            "created": self.created_timestamp_field or "",
            "features": list(dict(self.features).items()),
            "field_mapping": sorted(dict(self.field_mapping).items()),
            "ttl": None if self.ttl is None else self.ttl.total_seconds(),
        }
        if self.vector_fields:  # only then: the versions of views without vectors stay what they were
            payload["vectors"] = [sorted(dict(self.vector_fields).items()), self.vector_metric]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def resolved_entity_name(self) -> str:
        if self.entity_name:
            return self.entity_name
        return self.entity_key[: -len("_id")] if self.entity_key.endswith("_id") and len(self.entity_key) > 3 else self.entity_key

    def validate(self) -> None:
        _ident(self.name, "feature view name")
        _ident(self.resolved_entity_name(), "entity name")
        if not self.features:
            raise ValueError(f"table {self.name!r} declares no features")
        for column, dtype in self.features.items():
            _feast_type(dtype)
            if column in (self.entity_key, self.timestamp_field, self.created_timestamp_field):
                raise ValueError(f"table {self.name!r}: {column!r} is a key/timestamp column, not a feature")
        for source_column, feature in self.field_mapping.items():
            if feature not in self.features:
                raise ValueError(f"table {self.name!r}: field_mapping maps {source_column!r} to {feature!r}, "
                                 "which is not a declared feature")
        if self.entity_value_type not in _VALUE_TYPES:
            raise ValueError(f"entity_value_type must be one of {sorted(_VALUE_TYPES)}")
        if self.ttl is not None and self.ttl < timedelta(0):
            raise ValueError("ttl must be >= 0")
        for name, length in self.vector_fields.items():
            if self.features.get(name) not in ("Array(Float32)", "Array(Float64)") or int(length) < 1:
                raise ValueError(f"table {self.name!r}: vector field {name!r} must be an Array(Float32|Float64) "
                                 f"feature with a length >= 1")
        if self.vector_metric not in ("COSINE", "L2", "INNER_PRODUCT"):
            raise ValueError(f"vector_metric must be COSINE, L2 or INNER_PRODUCT, got {self.vector_metric!r}")


def _udf_parts(ref: str) -> tuple[str, str]:
    """``"package.module:function"`` -> (module, function), both checked identifiers."""
    module, _, function = ref.partition(":")
    for part in module.split("."):
        _ident(part, "UDF module")
    return module, _ident(function, "UDF function")


def _render_on_demand(on_demand: Sequence[Any]) -> list[str]:
    lines: list[str] = []
    for index, spec in enumerate(on_demand):
        module, function = _udf_parts(spec.udf_ref)
        source = spec.request_source
        lines += [
            f"import {module} as _udf_module_{index}",
            "",
            f"{source} = RequestSource(",
            f"    name={source!r},",
            "    schema=[",
            *[f"        Field(name={name!r}, dtype={dtype})," for name, dtype in spec.request_fields.items()],
            "    ],",
            ")",
            "",
            f"{spec.name} = OnDemandFeatureView(",
            f"    name={spec.name!r},",
            "    sources=[",
            *[f"        {view}[{list(features)!r}]," for view, features in spec.inputs.items()],
            f"        {source},",
            "    ],",
            "    schema=[",
            *[f"        Field(name={name!r}, dtype={dtype})," for name, dtype in spec.outputs.items()],
            "    ],",
            f"    feature_transformation=PythonTransformation(udf=_udf_module_{index}.{function}, "
            f"udf_string={spec.udf_source()!r}),",
            "    mode='python',",
            f"    description={spec.description!r},",
            f"    tags={{'content_version': {spec.version(spec.input_versions)!r}}},",
            ")",
            "",
        ]
    return lines


def _vector_args(spec: FeatureTableSpec, column: str) -> str:
    if column not in spec.vector_fields:
        return ""
    return (f", vector_index=True, vector_length={int(spec.vector_fields[column])}, "
            f"vector_search_metric={spec.vector_metric!r}")


def _render_definitions(project: str, tables: Sequence[FeatureTableSpec], services: Mapping[str, Sequence[str]],
                        on_demand: Sequence[Any] = ()) -> str:
    all_types = [t for spec in tables for t in spec.features.values()]
    all_types += [t for spec in on_demand for t in (*spec.request_fields.values(), *spec.outputs.values())]
    arrays = [m.group(1) for m in map(_ARRAY.match, all_types) if m]
    types_used = sorted({t for t in all_types if not _ARRAY.match(t)} | set(arrays) | ({"Array"} if arrays else set()))
    lines = [
        f'"""Feast definitions for project {project!r}. Generated by hybrid_pipeline.features.repo; do not edit."""',
        "",
        "from datetime import timedelta",
        "",
        "from feast import Entity, FeatureService, FeatureView, Field, ValueType",
        *(["from feast import OnDemandFeatureView, RequestSource",
           "from feast.transformation.python_transformation import PythonTransformation"] if on_demand else []),
        f"from feast.types import {', '.join(types_used)}",
        "",
        "from hybrid_pipeline.features.delta_offline_store import DeltaSource",
        "",
    ]
    entities: dict[str, FeatureTableSpec] = {}
    for spec in tables:
        name = spec.resolved_entity_name()
        prior = entities.setdefault(name, spec)
        if (prior.entity_key, prior.entity_value_type) != (spec.entity_key, spec.entity_value_type):
            raise ValueError(f"entity {name!r} declared with different keys/types by {prior.name!r} and {spec.name!r}")
    for name, spec in entities.items():
        lines += [
            f"{name} = Entity(",
            f"    name={name!r},",
            f"    join_keys=[{spec.entity_key!r}],",
            f"    value_type=ValueType.{_VALUE_TYPES[spec.entity_value_type]},",
            ")",
            "",
        ]
    for spec in tables:
        ttl = "None" if spec.ttl is None else f"timedelta(seconds={spec.ttl.total_seconds()!r})"
        lines += [
            f"{spec.name}_source = DeltaSource(",
            f"    name={spec.name + '_source'!r},",
            f"    path={spec.delta_uri!r},",
            f"    version={spec.version!r},",
            f"    timestamp_field={spec.timestamp_field!r},",
            f"    created_timestamp_column={(spec.created_timestamp_field or '')!r},",
            *([f"    field_mapping={dict(spec.field_mapping)!r},"] if spec.field_mapping else []),
            ")",
            "",
            f"{spec.name} = FeatureView(",
            f"    name={spec.name!r},",
            f"    entities=[{spec.resolved_entity_name()}],",
            f"    ttl={ttl},",
            "    schema=[",
            *[f"        Field(name={col!r}, dtype={dtype}{_vector_args(spec, col)})," for col, dtype in spec.features.items()],
            "    ],",
            f"    source={spec.name}_source,",
            f"    online={spec.online!r},",
            f"    description={spec.description!r},",
            f"    tags={dict(spec.tags) | {'content_version': spec.content_version()}!r},",
            f"    owner={spec.owner!r},",
            ")",
            "",
        ]
    lines += _render_on_demand(on_demand)
    for service, views in services.items():
        lines += [
            f"{service} = FeatureService(",
            f"    name={service!r},",
            f"    features=[{', '.join(views)}],",
            ")",
            "",
        ]
    return "\n".join(lines)


def _checked_services(
    project: str, tables: Sequence[FeatureTableSpec], feature_services: Mapping[str, Sequence[str]] | None,
    on_demand: Sequence[Any] = (),
) -> dict[str, Sequence[str]]:
    """Validate the project, tables, on-demand views and services; the services, defaulted to ``<project>_all``."""
    _ident(project, "project")
    if not tables:
        raise ValueError("a feature repo needs at least one table")
    for spec in tables:
        spec.validate()
    names = [spec.name for spec in tables]
    declared = {spec.name: spec for spec in tables}
    for odfv in on_demand:
        _ident(odfv.name, "on-demand feature view name")
        _ident(odfv.request_source, "request source name")
        _udf_parts(odfv.udf_ref)
        for view, features in odfv.inputs.items():
            if view not in declared:
                raise ValueError(f"on-demand view {odfv.name!r} reads {view!r}, which is not a declared table")
            unknown_features = set(features) - set(declared[view].features)
            if unknown_features:
                raise ValueError(f"on-demand view {odfv.name!r} reads unknown features {sorted(unknown_features)} "
                                 f"of {view!r}")
        for dtype in (*odfv.request_fields.values(), *odfv.outputs.values()):
            _feast_type(dtype)
    all_names = [*names, *(o.name for o in on_demand), *(o.request_source for o in on_demand)]
    if len(set(all_names)) != len(all_names):
        raise ValueError(f"duplicate feature view names in {all_names}")
    services: dict[str, Sequence[str]] = (
        dict(feature_services) if feature_services is not None else {f"{project}_all": names}
    )
    views_known = {*names, *(o.name for o in on_demand)}
    for service, views in services.items():
        _ident(service, "feature service name")
        unknown = set(views) - views_known
        if unknown or not views:
            raise ValueError(f"feature service {service!r} names unknown or no views: {sorted(unknown)}")
        if service in all_names:
            raise ValueError(f"feature service {service!r} has the name of a feature view")
    return services


def _store_config(
    project: str,
    registry: str | Mapping[str, Any],
    online_store: Mapping[str, Any],
    offline_store: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``feature_store.yaml`` mapping; the generated repo and the temporary stores share it."""
    return {
        "project": project,
        "provider": "local",
        "registry": dict(registry) if isinstance(registry, Mapping) else str(registry),
        "offline_store": {"type": OFFLINE_STORE_TYPE, **dict(offline_store or {})},
        "online_store": dict(online_store),
        "entity_key_serialization_version": 3,
        # Feast would copy the whole entity frame to make naive timestamps UTC-aware; the Delta
        # store reads naive timestamps as UTC itself (features.pit.to_utc), in its one pass.
        "coerce_tz_aware": False,
    }


def write_feature_repo(
    repo_dir: str | Path,
    project: str,
    tables: Sequence[FeatureTableSpec],
    online_store: Mapping[str, Any],
    *,
    feature_services: Mapping[str, Sequence[str]] | None = None,
    registry: str | Mapping[str, Any] | None = None,
    offline_storage_options: Mapping[str, str] | None = None,
    on_demand: Sequence[Any] = (),
) -> Path:
    """Write ``feature_store.yaml`` and the definitions module into ``repo_dir``.

    Args:
        repo_dir: directory to (re)write; created if missing.
        project: Feast project name (letters, digits, underscores).
        tables: one :class:`FeatureTableSpec` per feature view.
        online_store: the ``online_store`` block, e.g. ``{"type": "sqlite", "path": ...}``
            or ``{"type": "redis", "connection_string": "localhost:6379"}``.
        feature_services: service name -> feature view names; default
            ``{"<project>_all": [every view]}``.
        registry: registry path or block; default ``<repo_dir>/data/registry.db``.
        offline_storage_options: storage options for every Delta source (the store config).
        on_demand: :class:`~hybrid_pipeline.features.on_demand.OnDemandSpec` values, each over
            declared tables.

    Returns:
        ``repo_dir`` as a ``Path``; ``FeatureStore(repo_path=...)`` reads it.
    """
    services = _checked_services(project, tables, feature_services, on_demand)
    repo = Path(repo_dir).resolve()
    repo.mkdir(parents=True, exist_ok=True)
    offline = {"storage_options": dict(offline_storage_options)} if offline_storage_options else {}
    config = _store_config(project, registry or str(repo / "data" / "registry.db"), online_store, offline)
    (repo / "data").mkdir(exist_ok=True)
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (repo / DEFINITIONS_FILE).write_text(_render_definitions(project, tables, services, on_demand))
    # keep feast from importing anything else that may live in the directory
    (repo / ".feastignore").write_text("data/\n")
    return repo


def key_index_dir(repo_dir: str | Path) -> Path:
    """Where the Delta store of the repo generated in ``repo_dir`` keeps its key indexes
    (its default, ``<repo>/data/key_index``): stores over the same tables share them."""
    return Path(repo_dir).resolve() / "data" / "key_index"


def _feast_objects(namespace: Mapping[str, Any]) -> list[Any]:
    from feast import Entity, FeatureService, FeatureView, OnDemandFeatureView

    wanted = (Entity, FeatureView, FeatureService, OnDemandFeatureView)
    return [obj for obj in namespace.values() if isinstance(obj, wanted)]


def feature_objects(
    project: str,
    tables: Sequence[FeatureTableSpec],
    feature_services: Mapping[str, Sequence[str]] | None = None,
    on_demand: Sequence[Any] = (),
) -> list[Any]:
    """The entities, feature views and services that :func:`write_feature_repo` would declare.

    Executes the very text the definitions module would hold, without writing it, so the
    objects a temporary store registers cannot differ from the ones ``feast apply`` reads.
    """
    services = _checked_services(project, tables, feature_services, on_demand)
    source = _render_definitions(project, tables, services, on_demand)
    namespace: dict[str, Any] = {"__name__": f"_hybrid_feast_defs_{uuid.uuid4().hex}"}
    # the same generated text, whose literals were checked, that feast apply would import
    exec(compile(source, f"<{DEFINITIONS_FILE} for {project}>", "exec"), namespace)  # noqa: S102
    return _feast_objects(namespace)


@contextlib.contextmanager
def temporary_feature_store(
    project: str,
    tables: Sequence[FeatureTableSpec],
    *,
    feature_services: Mapping[str, Sequence[str]] | None = None,
    key_index_dir: str | Path | None = None,
    offline_storage_options: Mapping[str, str] | None = None,
    on_demand: Sequence[Any] = (),
) -> Iterator[Any]:
    """A ``feast.FeatureStore`` over ``tables`` whose registry and online store live in a
    temporary directory, removed on exit; nothing else is written.

    Why: retrieving at pinned table versions (each spec's ``version``) through the generated
    repo would mean rewriting and re-applying it, and everything reading that repo meanwhile
    (the ``feast`` CLI, online materialization, checks) would see the pinned definitions.
    Here the objects come from :func:`feature_objects` and are applied to a registry of
    their own. ``key_index_dir``: the key indexes to use (and where
    ``DeltaOfflineStore.build_key_index`` writes); ``None`` switches them off. Collect
    retrieval results before leaving the block.
    """
    from feast import FeatureStore, RepoConfig

    objects = feature_objects(project, tables, feature_services, on_demand)
    offline: dict[str, Any] = {"key_index": key_index_dir is not None}
    if key_index_dir is not None:
        offline["key_index_path"] = str(Path(key_index_dir).resolve())
    if offline_storage_options:
        offline["storage_options"] = dict(offline_storage_options)
    tmp = Path(tempfile.mkdtemp(prefix="hp-feast-"))
    try:
        config = RepoConfig(**_store_config(project, str(tmp / "registry.db"),
                                            {"type": "sqlite", "path": str(tmp / "online.db")}, offline))
        config.repo_path = tmp
        store = FeatureStore(repo_path=str(tmp), config=config)
        store.apply(objects)
        yield store
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_feature_definitions(repo_dir: str | Path) -> list[Any]:
    """Import the generated definitions module (under a unique name) and return its Feast objects."""
    path = Path(repo_dir) / DEFINITIONS_FILE
    module_name = f"_hybrid_feast_defs_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(module_name, None)
    return _feast_objects(vars(module))


def apply_feature_repo(repo_dir: str | Path):
    """In-process ``feast apply``: register the generated objects; returns the ``FeatureStore``."""
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo_dir))
    store.apply(load_feature_definitions(repo_dir))
    return store
