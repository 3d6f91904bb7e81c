"""The purchase model's training set: labels joined point-in-time to the features at pinned Delta versions.

One function (:func:`build_training_set`) builds it for the ``features/training_set`` asset and
for :func:`hybrid_pipeline.ml.reproduce.reproduce`, so a rebuilt set is the recorded one byte
for byte. Both retrieve through Feast's ``get_historical_features`` on the Delta offline store,
from a store whose feature view is pinned to the features' version
(:func:`pinned_feature_store`): its objects live in memory and in a throwaway registry, so the
generated Feast repo, which the ``feast`` CLI, the online materialization and the skew check
read, is never rewritten.

**As known at each label.** ``gold/user_features`` rows are rewritten when late events land (a
landing day recomputes every feature row from its earliest event date on), and each row's
``created_timestamp`` says when its data became known (the end of the landing day that wrote
it). A plain point-in-time join would give a label at the end of day D the row for D as
rewritten days later, with events the model could not have seen when scoring on day D: the
training set would be better informed than serving ever is. Retrieved as known at each label's
timestamp (Feast's ``filter_by_created_timestamp``), a label sees only rows written by then, so
this is the default for tables that late events rewrite (:data:`REWRITTEN_BY_LATE_EVENTS`);
``HYBRID_TRAINING_AS_KNOWN_AT`` (``auto``/``true``/``false``) overrides it, and the training set
records which retrieval it used (:attr:`TrainingSet.retrieval`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import polars as pl

from hybrid_pipeline.transforms.features import FEATURE_COLUMNS, FEATURES_SCHEMA

if TYPE_CHECKING:
    from hybrid_pipeline.lakehouse import Lakehouse

LABEL: Final = "purchased_next_7d"
KEYS: Final = ("user_id", "event_timestamp")
TRAINING_SET_TABLE: Final = "features/training_set"
LABELS_TABLE: Final = "gold/user_labels"
FEATURES_TABLE: Final = "gold/user_features"
FEATURE_VIEW: Final = "user_features"
REWRITTEN_BY_LATE_EVENTS: Final = frozenset({FEATURES_TABLE})
"""Feature tables whose rows later landings rewrite: retrieved as known at each label by default."""
AS_KNOWN_AT: Final = "as_known_at"
POINT_IN_TIME: Final = "point_in_time"


def retrieves_as_known_at(setting: bool | None, table: str = FEATURES_TABLE) -> bool:
    """The retrieval a training set over ``table`` uses: ``setting`` (``HYBRID_TRAINING_AS_KNOWN_AT``)
    when given, else as-known-at exactly for tables that late events rewrite."""
    return table in REWRITTEN_BY_LATE_EVENTS if setting is None else bool(setting)


def feature_services() -> dict[str, list[str]]:
    """The Feast feature services of the generated repo (and of every pinned store): service -> views."""
    from hybrid_pipeline.features import catalog

    return {catalog.PURCHASE_SERVICE: [FEATURE_VIEW]}


def frame_hash(df: pl.DataFrame, keys: list[str]) -> str:
    """SHA-256 of the rows in a canonical order and encoding: equal content, equal hash.

    The encoding is the rows' JSON text, column names in a fixed order: unlike a binary
    format it does not depend on how the frame happens to be laid out in memory (chunks,
    string-view buffers, the bytes under null slots), which differ between equal frames.
    """
    sortable = [c for c, t in df.schema.items() if not t.is_nested()]
    ordered = df.select(sorted(df.columns)).sort([*keys, *(c for c in sorted(sortable) if c not in keys)])
    buf = io.BytesIO()
    ordered.write_ndjson(buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def content_sha256(rows: pl.DataFrame) -> str:
    """The training set's content hash, as ``features/training_set`` records it and reproduction checks it."""
    return frame_hash(rows, list(KEYS))


@contextlib.contextmanager
def pinned_feature_store(
    lakehouse: Lakehouse, features_version: int, *, key_index_dir: str | Path | None = None
) -> Iterator[Any]:
    """A ``feast.FeatureStore`` whose feature view reads ``gold/user_features@features_version``.

    The definitions are the generated repo's (same catalog, same services), pinned to the
    version and registered in a temporary registry removed on exit. ``key_index_dir``: the
    key indexes to use (the generated repo's, see ``features.repo.key_index_dir``); ``None``
    switches them off.
    """
    from hybrid_pipeline.features import catalog
    from hybrid_pipeline.features.repo import temporary_feature_store

    tables = catalog.feature_tables(lakehouse.uri(FEATURES_TABLE), features_version)
    with temporary_feature_store(catalog.PROJECT, tables, feature_services=feature_services(),
                                 key_index_dir=key_index_dir,
                                 offline_storage_options=lakehouse.storage_options) as store:
        yield store


@dataclass(frozen=True)
class TrainingSet:
    """The rows, sorted by ``(user_id, event_timestamp)``, and the versions they were built from."""

    rows: pl.DataFrame
    labels_version: int
    features_version: int
    key_index: dict[str, Any] = field(default_factory=lambda: {"built": False})
    as_known_at: bool = True

    @property
    def source_versions(self) -> dict[str, int]:
        return {FEATURES_TABLE: self.features_version, LABELS_TABLE: self.labels_version}

    @property
    def retrieval(self) -> str:
        """``as_known_at`` (``filter_by_created_timestamp``) or ``point_in_time``: what rebuilding it needs."""
        return AS_KNOWN_AT if self.as_known_at else POINT_IN_TIME

    def provenance(self) -> dict[str, str]:
        """What the training set's Delta commit records (custom commit metadata): the source
        versions, the retrieval and the content hash, so the table's history alone says how to
        rebuild each version."""
        import json

        return {
            "hybrid.source_versions": json.dumps(self.source_versions, sort_keys=True),
            "hybrid.retrieval": self.retrieval,
            "hybrid.content_sha256": self.content_sha256,
        }

    @property
    def content_sha256(self) -> str:
        return content_sha256(self.rows)

    @property
    def view_versions(self) -> dict[str, str]:
        """Content version of each feature view the rows came through (``features.catalog.view_versions``),
        recorded with the set and the models trained on it, so the registry keeps those versions readable."""
        from hybrid_pipeline.features import catalog

        return {FEATURE_VIEW: catalog.view_versions(catalog.feature_tables(""))[FEATURE_VIEW]}


def build_training_set(
    lakehouse: Lakehouse,
    labels_version: int,
    features_version: int,
    *,
    key_index_dir: str | Path | None = None,
    as_known_at: bool | None = None,
) -> TrainingSet:
    """``gold/user_labels@labels_version`` joined point-in-time to the ``purchase_model`` feature
    service over ``gold/user_features@features_version`` (30-day TTL).

    ``as_known_at``: retrieve as known at each label's timestamp (Feast's
    ``filter_by_created_timestamp``); ``None``: the default for the features table
    (:func:`retrieves_as_known_at`). With ``key_index_dir``, the key index of that features
    version is used, and built there first unless it exists (``key_index`` says which). Labels
    without a complete 7-day horizon do not exist yet: then the set is empty, with the full schema.
    """
    from hybrid_pipeline.features import catalog
    from hybrid_pipeline.features.delta_offline_store import DeltaOfflineStore

    known_at = retrieves_as_known_at(as_known_at)
    labels = lakehouse.read(LABELS_TABLE, version=labels_version).select(*KEYS, LABEL)
    with pinned_feature_store(lakehouse, features_version, key_index_dir=key_index_dir) as store:
        index: dict[str, Any] = {"built": False}
        if key_index_dir is not None:
            view = store.get_feature_view(FEATURE_VIEW)
            index = DeltaOfflineStore.build_key_index(store.config, view, rebuild=False) or index
        if labels.height:
            job = store.get_historical_features(entity_df=labels.to_pandas(),
                                                features=store.get_feature_service(catalog.PURCHASE_SERVICE),
                                                filter_by_created_timestamp=known_at)
            rows = job.to_polars().sort(list(KEYS))
        else:
            rows = labels.with_columns(pl.lit(None, FEATURES_SCHEMA[c]).alias(c) for c in FEATURE_COLUMNS)
    return TrainingSet(rows, int(labels_version), int(features_version), index, as_known_at=known_at)


__all__ = [
    "AS_KNOWN_AT",
    "FEATURES_TABLE",
    "POINT_IN_TIME",
    "REWRITTEN_BY_LATE_EVENTS",
    "FEATURE_VIEW",
    "KEYS",
    "LABEL",
    "LABELS_TABLE",
    "TRAINING_SET_TABLE",
    "TrainingSet",
    "build_training_set",
    "content_sha256",
    "feature_services",
    "frame_hash",
    "pinned_feature_store",
    "retrieves_as_known_at",
]
