"""A Feast offline store over Delta tables, read through delta-rs and joined with polars.

Why not Feast's own stores: the ``file``/``dask`` store reads a Delta directory as plain
parquet and ignores the Delta log, so files removed by an overwrite, a delete or an
``optimize`` come back as stale rows; Feast's ``delta`` extra pins ``deltalake<1``.

``feature_store.yaml``::

    offline_store:
      type: hybrid_pipeline.features.delta_offline_store.DeltaOfflineStore
      storage_options: {AWS_REGION: eu-west-1}   # optional, merged under each source's

Feature views use :class:`DeltaSource` as their batch source. It names the table URI
(local path, relative paths resolve against the repo directory, or ``s3://...``), an
optional pinned table version, and optional storage options. Secrets belong in the store
config (``${ENV_VAR}`` works there), not in the source: a source is serialised into the
registry.

Reads are lazy ``pl.scan_delta`` plans (the Delta log decides which files exist, at the
pinned version if any); projections and filters on entity keys and the time window are
pushed into the scan, except filters the log's file statistics prove true for every row.
Historical retrieval reads one snapshot twice: keys and timestamps first, then only the
feature values of the winning rows; see :mod:`hybrid_pipeline.features.pit` for the join
and its semantics. ``filter_by_created_timestamp=True`` (Feast 0.67) retrieves as known at
each entity timestamp: only rows whose created timestamp is at or before it are candidates
(a row without one never is; views without a created timestamp column are unaffected), with
or without a key index (an index keeps the created timestamps in its key order).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Union
from urllib.parse import urlparse

import pandas as pd
import polars as pl
import pyarrow as pa
from feast.data_source import DataSource
from feast.feature_view import DUMMY_ENTITY_ID, DUMMY_ENTITY_VAL, FeatureView
from feast.infra.offline_stores.offline_store import OfflineStore, RetrievalJob, RetrievalMetadata
from feast.infra.offline_stores.offline_utils import (
    DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL,
    infer_event_timestamp_from_entity_df,
)
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.protos.feast.core.DataSource_pb2 import DataSource as DataSourceProto
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from feast.saved_dataset import SavedDatasetStorage
from feast.type_map import pa_to_feast_value_type
from feast.utils import _get_requested_feature_views_to_features_dict, compute_non_entity_date_range
from feast.value_type import ValueType
from pydantic import StrictStr

from hybrid_pipeline.features.key_index import KeyIndex, build_key_index, load_key_index, save_key_index, value_columns
from hybrid_pipeline.features.pit import (
    ColumnStats,
    EngineName,
    FeatureSourceSpec,
    SourcePart,
    point_in_time_join,
    point_in_time_join_lazy,
    to_utc,
)

__all__ = [
    "DELTA_OFFLINE_STORE_TYPE",
    "DELTA_SOURCE_CLASS_TYPE",
    "DeltaOfflineStore",
    "DeltaOfflineStoreConfig",
    "DeltaRetrievalJob",
    "DeltaSource",
    "feast_arrow_type",
]

DELTA_OFFLINE_STORE_TYPE = "hybrid_pipeline.features.delta_offline_store.DeltaOfflineStore"
DELTA_SOURCE_CLASS_TYPE = "hybrid_pipeline.features.delta_offline_store.DeltaSource"


# --------------------------------------------------------------------------- config


class DeltaOfflineStoreConfig(FeastConfigBaseModel):
    """Config of :class:`DeltaOfflineStore`.

    Feast 0.67 resolves ``offline_store.type`` ending in ``OfflineStore`` by importing
    ``<type>Config`` from the same module, and finds the store class back by stripping
    ``Config`` from this class' name, so both names are load-bearing.
    """

    type: StrictStr = DELTA_OFFLINE_STORE_TYPE
    """Offline store type selector (the class path)."""

    storage_options: Dict[str, str] = {}
    """delta-rs/object-store options used for every source (a source's own win)."""

    engine: Literal["auto", "in-memory", "streaming"] = "streaming"
    """polars engine for ``collect``; streaming keeps peak memory lower."""

    key_index: bool = True
    """Use the key index of a table version when one was built for it
    (:meth:`DeltaOfflineStore.build_key_index`): retrieval then skips the key scan and sort."""

    key_index_path: Optional[StrictStr] = None
    """Directory of key indexes; default ``<repo>/data/key_index``."""

    key_index_features: bool = True
    """Keep the view's number and boolean features in its key index too, in key order:
    retrieval then takes them from the index instead of reading the table's files. Costs
    their size again on disk (and in memory while the index is built)."""


# --------------------------------------------------------------------------- source


def _is_uri(path: str) -> bool:
    scheme = urlparse(path).scheme
    return len(scheme) > 1  # a Windows drive letter is not a scheme


class DeltaSource(DataSource):
    """A Feast batch source backed by a Delta table.

    Args:
        path: table URI; a relative local path resolves against the feature repo.
        version: pinned Delta table version (time travel); ``None`` reads the latest.
        storage_options: delta-rs storage options (serialised into the registry, so keep
            secrets in :class:`DeltaOfflineStoreConfig` instead).
        name, timestamp_field, created_timestamp_column, field_mapping, description,
        tags, owner: as for every Feast data source.
    """

    def __init__(
        self,
        *,
        path: str,
        name: Optional[str] = None,
        version: Optional[int] = None,
        storage_options: Optional[Dict[str, str]] = None,
        timestamp_field: Optional[str] = None,
        created_timestamp_column: Optional[str] = None,
        field_mapping: Optional[Dict[str, str]] = None,
        description: Optional[str] = "",
        tags: Optional[Dict[str, str]] = None,
        owner: Optional[str] = "",
    ):
        if not path:
            raise ValueError("DeltaSource needs a table path/URI")
        if version is not None and (isinstance(version, bool) or int(version) < 0):
            raise ValueError(f"DeltaSource version must be a non-negative int, got {version!r}")
        super().__init__(
            name=name or str(path),
            timestamp_field=timestamp_field,
            created_timestamp_column=created_timestamp_column,
            field_mapping=field_mapping,
            description=description,
            tags=tags,
            owner=owner,
        )
        self.path = str(path)
        self.version = None if version is None else int(version)
        self.storage_options = dict(storage_options or {})

    # ---- addressing

    def resolved_uri(self, repo_path: Optional[Union[str, Path]] = None) -> str:
        if _is_uri(self.path) or os.path.isabs(self.path) or repo_path is None:
            return self.path
        return str(Path(repo_path) / self.path)

    def merged_storage_options(self, config: Optional[RepoConfig] = None) -> Dict[str, str]:
        base: Dict[str, str] = {}
        store_cfg = getattr(config, "offline_store", None) if config is not None else None
        if isinstance(store_cfg, DeltaOfflineStoreConfig):
            base.update(store_cfg.storage_options)
        base.update(self.storage_options)
        return base

    def scan(self, config: Optional[RepoConfig] = None, version: Optional[int] = None) -> pl.LazyFrame:
        """Lazy scan of the table (pinned version unless ``version`` overrides it)."""
        repo_path = getattr(config, "repo_path", None) if config is not None else None
        return pl.scan_delta(
            self.resolved_uri(repo_path),
            version=self.version if version is None else version,
            storage_options=self.merged_storage_options(config) or None,
        )

    def delta_table(self, config: Optional[RepoConfig] = None):
        from deltalake import DeltaTable

        repo_path = getattr(config, "repo_path", None) if config is not None else None
        return DeltaTable(
            self.resolved_uri(repo_path),
            version=self.version,
            storage_options=self.merged_storage_options(config) or None,
        )

    # ---- DataSource API

    def source_type(self) -> DataSourceProto.SourceType.ValueType:
        return DataSourceProto.CUSTOM_SOURCE

    def __eq__(self, other):
        if not isinstance(other, DeltaSource):
            return False
        return (
            super().__eq__(other)
            and self.path == other.path
            and self.version == other.version
            and self.storage_options == other.storage_options
        )

    def __hash__(self):
        return super().__hash__()

    @staticmethod
    def source_datatype_to_feast_value_type() -> Callable[[str], ValueType]:
        return pa_to_feast_value_type

    def get_table_column_names_and_types(self, config: RepoConfig) -> Iterable[Tuple[str, str]]:
        schema = pa.schema(self.delta_table(config).schema().to_arrow())
        return [(f.name, str(feast_arrow_type(f.type))) for f in schema]

    def validate(self, config: RepoConfig):
        names = {name for name, _ in self.get_table_column_names_and_types(config)}
        for column in (self.timestamp_field, self.created_timestamp_column):
            if column and column not in names:
                raise ValueError(f"column {column!r} is not in Delta table {self.path!r} (columns: {sorted(names)})")

    def get_table_query_string(self) -> str:
        return f"delta.`{self.path}`"

    def _to_proto_impl(self) -> DataSourceProto:
        configuration = json.dumps(
            {"path": self.path, "version": self.version, "storage_options": self.storage_options},
            sort_keys=True,
        )
        return DataSourceProto(
            name=self.name,
            type=DataSourceProto.CUSTOM_SOURCE,
            data_source_class_type=DELTA_SOURCE_CLASS_TYPE,
            custom_options=DataSourceProto.CustomSourceOptions(configuration=configuration.encode("utf8")),
            description=self.description,
            tags=self.tags,
            owner=self.owner,
            timestamp_field=self.timestamp_field,
            created_timestamp_column=self.created_timestamp_column,
            field_mapping=self.field_mapping,
        )

    @staticmethod
    def from_proto(data_source: DataSourceProto) -> "DeltaSource":
        configuration = json.loads(data_source.custom_options.configuration.decode("utf8"))
        return DeltaSource(
            name=data_source.name,
            path=configuration["path"],
            version=configuration.get("version"),
            storage_options=configuration.get("storage_options") or None,
            timestamp_field=data_source.timestamp_field,
            created_timestamp_column=data_source.created_timestamp_column,
            field_mapping=dict(data_source.field_mapping),
            description=data_source.description,
            tags=dict(data_source.tags),
            owner=data_source.owner,
        )


# --------------------------------------------------------------------------- arrow types


def feast_arrow_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type Feast understands for ``t``.

    Feast's ``pa_to_feast_value_type`` reads ``large_string`` as JSON and does not know
    ``string_view`` or large lists, which delta-rs and polars produce.
    """
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return pa.list_(feast_arrow_type(t.value_type))
    if pa.types.is_list(t):
        return pa.list_(feast_arrow_type(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, feast_arrow_type(f.type), f.nullable) for f in t])
    return t


def _to_feast_arrow(df: pl.DataFrame) -> pa.Table:
    table = df.to_arrow(compat_level=pl.CompatLevel.oldest())
    schema = pa.schema([pa.field(f.name, feast_arrow_type(f.type), f.nullable) for f in table.schema])
    return table if schema == table.schema else table.cast(schema)


# --------------------------------------------------------------------------- retrieval job


class DeltaRetrievalJob(RetrievalJob):
    """A lazily evaluated retrieval; ``to_df``/``to_arrow``/``to_polars`` run it.

    ``evaluate`` builds the polars plan (``to_lazy``); ``compute``, when given, computes
    the result directly with ``engine`` (historical retrieval: the eager point-in-time
    join, which is faster than collecting the plan); otherwise the plan is collected.
    """

    def __init__(
        self,
        evaluate: Callable[[], pl.LazyFrame],
        full_feature_names: bool = False,
        on_demand_feature_views: Optional[List[OnDemandFeatureView]] = None,
        metadata: Optional[RetrievalMetadata] = None,
        engine: EngineName = "streaming",
        compute: Optional[Callable[[EngineName, Literal["null", "nan"]], pl.DataFrame]] = None,
    ):
        self._evaluate = evaluate
        self._compute = compute
        self._missing_floats: Literal["null", "nan"] = "null"
        self._engine = engine
        self._full_feature_names = full_feature_names
        self._on_demand_feature_views = on_demand_feature_views or []
        self._metadata = metadata

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> List[OnDemandFeatureView]:
        return self._on_demand_feature_views

    @property
    def metadata(self) -> Optional[RetrievalMetadata]:
        return self._metadata

    def to_lazy(self) -> pl.LazyFrame:
        """The polars plan (without on-demand transformations)."""
        return self._evaluate()

    def to_polars(self) -> pl.DataFrame:
        """Result as polars (without on-demand transformations)."""
        if self._compute is not None:
            return self._compute(self._engine, self._missing_floats)
        return self._evaluate().collect(engine=self._engine)

    def _to_arrow_internal(self, timeout: Optional[int] = None) -> pa.Table:
        return _to_feast_arrow(self.to_polars())

    def to_df(self, validation_reference: Optional[Any] = None, timeout: Optional[int] = None) -> pd.DataFrame:
        """As Feast's ``to_df`` (``to_arrow``, then pandas with a fresh RangeIndex), without
        the copies pandas conversion would make: columns are not consolidated into 2-D
        blocks, and missing float features come from the join as NaN (what pandas shows
        for them) rather than null, which pyarrow would copy and fill. Not when on-demand
        views or a validation reference read the arrow table first: they see nulls."""
        plain = not self.on_demand_feature_views and validation_reference is None
        self._missing_floats = "nan" if plain else "null"
        try:
            table = self.to_arrow(validation_reference=validation_reference, timeout=timeout)
        finally:
            self._missing_floats = "null"
        df = table.to_pandas(split_blocks=True)
        index = df.index
        if isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1:
            return df
        return df.reset_index(drop=True)

    def _to_df_internal(self, timeout: Optional[int] = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    def persist(self, storage: SavedDatasetStorage, allow_overwrite: bool = False, timeout: Optional[int] = None):
        raise NotImplementedError("DeltaRetrievalJob.persist: write to_arrow() to a Delta table instead")


# --------------------------------------------------------------------------- helpers


def _as_delta_source(data_source: Optional[DataSource]) -> DeltaSource:
    if not isinstance(data_source, DeltaSource):
        raise TypeError(
            f"DeltaOfflineStore reads DeltaSource batch sources only, got {type(data_source).__name__} "
            f"({getattr(data_source, 'name', data_source)!r})"
        )
    return data_source


def _aware(value: Optional[datetime]) -> Optional[datetime]:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _feast_ttl(ttl: Optional[timedelta]) -> Optional[timedelta]:
    """Feast: a ttl of 0 (or None) means no expiry."""
    return ttl if ttl and ttl.total_seconds() > 0 else None


def _time_filter(frame: pl.LazyFrame, column: str, start: Optional[datetime], end: Optional[datetime]) -> pl.LazyFrame:
    """Inclusive [start, end] filter on the raw column (pushdown-friendly), nulls dropped."""
    dtype = frame.collect_schema()[column]
    pred = pl.col(column).is_not_null()
    for bound, op in ((_aware(start), "ge"), (_aware(end), "le")):
        if bound is None:
            continue
        if isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
            lit = pl.lit(bound.replace(tzinfo=None)).cast(pl.Datetime(dtype.time_unit))
        elif isinstance(dtype, pl.Datetime):
            lit = pl.lit(bound).cast(pl.Datetime(dtype.time_unit, "UTC")).dt.convert_time_zone(str(dtype.time_zone))
        else:  # Date
            lit = pl.lit(bound.date())
        pred = pred & (pl.col(column) >= lit if op == "ge" else pl.col(column) <= lit)
    return frame.filter(pred)


def _normalise_ts(frame: pl.LazyFrame, columns: Iterable[str]) -> pl.LazyFrame:
    schema = frame.collect_schema()
    return frame.with_columns(to_utc(pl.col(c), schema[c]) for c in dict.fromkeys(columns) if c)


def _engine(config: RepoConfig) -> EngineName:
    store_cfg = getattr(config, "offline_store", None)
    return store_cfg.engine if isinstance(store_cfg, DeltaOfflineStoreConfig) else "streaming"


def _pull(
    config: RepoConfig,
    data_source: DataSource,
    join_key_columns: List[str],
    feature_name_columns: List[str],
    timestamp_field: str,
    created_timestamp_column: Optional[str],
    start_date: Optional[datetime],
    end_date: Optional[datetime],
    latest_only: bool,
) -> pl.LazyFrame:
    source = _as_delta_source(data_source)
    ts_columns = [timestamp_field] + ([created_timestamp_column] if created_timestamp_column else [])
    columns = list(dict.fromkeys([*join_key_columns, *feature_name_columns, *ts_columns]))
    frame = source.scan(config).select(columns)
    frame = _time_filter(frame, timestamp_field, start_date, end_date)
    frame = _normalise_ts(frame, ts_columns)
    if latest_only:
        frame = frame.sort(ts_columns, nulls_last=False, maintain_order=True)
        if join_key_columns:
            frame = frame.unique(subset=join_key_columns, keep="last", maintain_order=True)
        else:
            frame = frame.tail(1)
    if not join_key_columns:
        frame = frame.with_columns(pl.lit(DUMMY_ENTITY_VAL).alias(DUMMY_ENTITY_ID))
    return frame


# --------------------------------------------------------------------------- the store


class DeltaOfflineStore(OfflineStore):
    """Feast offline store for :class:`DeltaSource` tables (delta-rs + polars)."""

    supports_filter_by_created_timestamp = True
    """``get_historical_features(..., filter_by_created_timestamp=True)``: as-known-at
    retrieval, with and without key indexes (see :mod:`hybrid_pipeline.features.pit`)."""

    @staticmethod
    def build_key_index(
        config: RepoConfig, feature_view: FeatureView, keep: int = 3, rebuild: bool = True
    ) -> Optional[Dict[str, Any]]:
        """Build the key index of ``feature_view``'s table at the version a retrieval would
        read now, so retrievals of that version skip the key scan and sort (``rebuild=False``:
        keep a valid index already there), and, with ``key_index_features``, take the
        view's number and boolean features from the index instead of the table's files.

        An index keeps the features of every view that built it on this table version, so
        views sharing a table do not replace each other's. Keeps the index just built and
        the ``keep - 1`` newest other versions' indexes of the table; removes older ones.
        Returns what was built or found (path, version, rows, features kept, bytes on
        disk, seconds), or ``None`` when indexes are off or the view cannot be indexed (not
        one integer or string join key, a span of keys and timestamps too wide for 63 bits).
        """
        view = _view_source(config, feature_view)
        located = _key_index_location(config, view)
        if located is None:
            return None
        path, fingerprint = located
        started = time.perf_counter()
        schema = view.frame.collect_schema()
        keep_features = config.offline_store.key_index_features
        values = value_columns(schema, [f.name for f in feature_view.features if f.name in schema]) if keep_features else []
        existing = load_key_index(path, fingerprint)
        kept = {c for b in existing.blocks for c in b.columns} if existing is not None else set()
        keeps_created = existing is not None and (existing.created is not None or not view.created_timestamp_field)
        if not rebuild and keeps_created and (set(values) <= kept if keep_features else not kept):
            return dict(_index_report(path, view.version, existing, 0.0), reused=True)
        if keep_features:  # views sharing the table keep what the others asked for too
            values = value_columns(schema, [*values, *sorted(c for c in kept if c in schema)])
        del existing
        index = build_key_index(
            view.frame, view.join_keys[0], view.timestamp_field, view.created_timestamp_field,
            fingerprint=fingerprint, values=values,
        )
        if index is None:
            return None
        save_key_index(index, path)
        report = _index_report(path, view.version, index, time.perf_counter() - started)
        suffix = path.name.split("-", 1)[1]
        others = sorted(p for p in path.parent.glob(f"v*-{suffix}") if p.is_dir() and p != path)
        for old in others[: max(0, len(others) - (keep - 1))]:  # never the index just built
            shutil.rmtree(old, ignore_errors=True)
        return report

    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: List[str],
        feature_name_columns: List[str],
        timestamp_field: str,
        created_timestamp_column: Optional[str],
        start_date: datetime,
        end_date: datetime,
    ) -> RetrievalJob:
        """Latest row per entity key with ``start_date <= ts <= end_date`` (ties: created ts)."""
        _as_delta_source(data_source)
        return DeltaRetrievalJob(
            lambda: _pull(
                config, data_source, join_key_columns, feature_name_columns, timestamp_field,
                created_timestamp_column, start_date, end_date, latest_only=True,
            ),
            engine=_engine(config),
        )

    @staticmethod
    def pull_all_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: List[str],
        feature_name_columns: List[str],
        timestamp_field: str,
        created_timestamp_column: Optional[str] = None,
        start_date: Optional[datetime] = None,
        end_date: Optional[datetime] = None,
    ) -> RetrievalJob:
        """Every row with ``start_date <= ts <= end_date`` (bounds optional)."""
        _as_delta_source(data_source)
        return DeltaRetrievalJob(
            lambda: _pull(
                config, data_source, join_key_columns, feature_name_columns, timestamp_field,
                created_timestamp_column, start_date, end_date, latest_only=False,
            ),
            engine=_engine(config),
        )

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: List[FeatureView],
        feature_refs: List[str],
        entity_df: Optional[Union[pd.DataFrame, pl.DataFrame, str]],
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        **kwargs: Any,
    ) -> RetrievalJob:
        as_known_at = bool(kwargs.get("filter_by_created_timestamp"))
        if isinstance(entity_df, str):
            raise ValueError("DeltaOfflineStore needs entity_df as a DataFrame, not a SQL query")
        for fv in feature_views:
            _as_delta_source(fv.batch_source)

        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        fv_to_features, _ = _get_requested_feature_views_to_features_dict(feature_refs, feature_views, odfvs)

        if entity_df is None:
            start, end = compute_non_entity_date_range(
                feature_views, start_date=kwargs.get("start_date"), end_date=kwargs.get("end_date")
            )
            ts_col = DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
            bounds: Tuple[Optional[datetime], Optional[datetime]] = (start, end)
            entities: Union[pl.DataFrame, Callable[[], pl.DataFrame]] = lambda: _non_entity_rows(  # noqa: E731
                config, fv_to_features, start, end, ts_col
            )
            keys: List[str] = []
        else:
            if isinstance(entity_df, pl.DataFrame):
                schema = dict(zip(entity_df.columns, entity_df.to_pandas().head(0).dtypes))
            else:
                schema = dict(zip(entity_df.columns, entity_df.dtypes))
            ts_col = infer_event_timestamp_from_entity_df(schema)
            frame = entity_df if isinstance(entity_df, pl.DataFrame) else pl.from_pandas(entity_df)
            frame = frame.with_columns(to_utc(pl.col(ts_col), frame.schema[ts_col]))
            bounds = (frame[ts_col].min(), frame[ts_col].max())  # type: ignore[assignment]
            entities = frame
            keys = [c for c in frame.columns if c != ts_col]
            start = end = None  # type: ignore[assignment]

        def inputs() -> Tuple[pl.DataFrame, List[FeatureSourceSpec]]:
            left = entities() if callable(entities) else entities
            specs = [
                _spec_for(config, fv, features, clamp=(start, end) if entity_df is None else None, as_known_at=as_known_at)
                for fv, features in fv_to_features.items()
            ]
            return left, specs

        def evaluate() -> pl.LazyFrame:
            left, specs = inputs()
            return point_in_time_join_lazy(
                left, specs, entity_timestamp_col=ts_col, full_feature_names=full_feature_names
            )

        def compute(engine: EngineName, missing_floats: Literal["null", "nan"] = "null") -> pl.DataFrame:
            left, specs = inputs()
            return point_in_time_join(
                left, specs, entity_timestamp_col=ts_col, full_feature_names=full_feature_names, engine=engine,
                missing_floats=missing_floats,
            )

        return DeltaRetrievalJob(
            evaluate,
            compute=compute,
            full_feature_names=full_feature_names,
            on_demand_feature_views=odfvs,
            metadata=RetrievalMetadata(
                features=feature_refs,
                keys=keys,
                min_event_timestamp=bounds[0],
                max_event_timestamp=bounds[1],
            ),
            engine=_engine(config),
        )

    @staticmethod
    def offline_write_batch(
        config: RepoConfig,
        feature_view: FeatureView,
        table: pa.Table,
        progress: Optional[Callable[[int], Any]],
    ):
        """Append ``table`` (feature view column names) to the view's Delta table."""
        from deltalake import write_deltalake

        source = _as_delta_source(feature_view.batch_source)
        if source.version is not None:
            raise ValueError(f"DeltaSource {source.name!r} is pinned to version {source.version}; refusing to write")
        reverse = {v: k for k, v in source.field_mapping.items()}
        table = table.rename_columns([reverse.get(c, c) for c in table.column_names])
        write_deltalake(
            source.resolved_uri(config.repo_path),
            table,
            mode="append",
            storage_options=source.merged_storage_options(config) or None,
        )
        if progress:
            progress(table.num_rows)


@dataclass(frozen=True)
class _ViewSource:
    """One feature view's table at the version a retrieval reads, as the join sees it."""

    source: DeltaSource
    table: Any
    version: int
    frame: pl.LazyFrame
    renames: Dict[str, str]
    join_keys: List[str]
    timestamp_field: str
    created_timestamp_field: Optional[str]


def _view_source(config: RepoConfig, fv: FeatureView) -> _ViewSource:
    source = _as_delta_source(fv.batch_source)
    table = source.delta_table(config)
    version = table.version()  # the scan, the statistics and the index describe the same snapshot
    frame = source.scan(config, version=version)
    renames: Dict[str, str] = {}
    if source.field_mapping:
        schema = frame.collect_schema()
        renames = {k: v for k, v in source.field_mapping.items() if k in schema}
        frame = frame.rename(renames)
    ts_field = source.field_mapping.get(source.timestamp_field, source.timestamp_field)
    created = source.created_timestamp_column or None
    if created:
        created = source.field_mapping.get(created, created)
    return _ViewSource(source, table, version, frame, renames, [e.name for e in fv.entity_columns], ts_field, created)


def _spec_for(
    config: RepoConfig,
    fv: FeatureView,
    features: List[str],
    clamp: Optional[Tuple[Optional[datetime], Optional[datetime]]] = None,
    as_known_at: bool = False,
) -> FeatureSourceSpec:
    view = _view_source(config, fv)
    key_map = fv.projection.join_key_map or {}
    inverse = {v: k for k, v in view.renames.items()}
    stats = _column_stats(view.table, {inverse.get(c, c): c for c in [*view.join_keys, view.timestamp_field]})
    ttl = _feast_ttl(fv.ttl)
    if clamp is not None and clamp[0] is not None and clamp[1] is not None:
        window = clamp[1] - clamp[0]
        ttl = window if ttl is None else min(ttl, window)
    base_name = fv.projection.name_alias or fv.name
    located = _key_index_location(config, view)
    return FeatureSourceSpec(
        name=base_name,
        frame=view.frame,
        join_keys=view.join_keys,
        timestamp_field=view.timestamp_field,
        feature_columns=features,
        created_timestamp_field=view.created_timestamp_field,
        ttl=ttl,
        entity_join_keys=[key_map.get(k, k) for k in view.join_keys],
        column_stats=stats,
        rescannable=True,  # a fixed table version
        key_index=(index := None if located is None else load_key_index(*located)),
        parts=None if index is None else _file_parts(view, config),
        as_known_at=as_known_at,
    )


def _index_report(path: Path, version: int, index: KeyIndex, seconds: float) -> Dict[str, Any]:
    """What :meth:`DeltaOfflineStore.build_key_index` says of the index it built or found."""
    return {
        "path": str(path),
        "version": version,
        "rows": len(index),
        "features_kept": [c for b in index.blocks for c in b.columns],
        "bytes": sum(f.stat().st_size for f in path.iterdir()),
        "seconds": round(seconds, 3),
    }


def _file_parts(view: _ViewSource, config: RepoConfig) -> Optional[List[SourcePart]]:
    """The table version as one scan per data file, numbered as ``pl.scan_delta`` numbers
    its rows (it scans ``file_uris()`` in order, with these options); ``None`` where a
    file-by-file read could differ from that scan: deletion vectors, partition columns, a
    file without a row count in the log."""
    table = view.table
    if "deletionVectors" in (table.protocol().reader_features or []) or table.metadata().partition_columns:
        return None
    try:
        actions = pa.table(table.get_add_actions(flatten=True))
        counts = dict(zip(actions.column("path").to_pylist(), actions.column("num_records").to_pylist()))
    except Exception:  # noqa: BLE001 - parts are an optimisation only
        return None
    root = table.table_uri.removeprefix("file://").rstrip("/") + "/"
    options = view.source.merged_storage_options(config) or None
    schema = view.frame.collect_schema() if not view.renames else None
    parts, start = [], 0
    for uri in table.file_uris():
        path = uri.removeprefix("file://")
        rows = counts.get(path[len(root):]) if path.startswith(root) else None
        if rows is None:
            return None
        frame = pl.scan_parquet(
            uri, cast_options=pl.ScanCastOptions(integer_cast="upcast", float_cast="upcast"),
            missing_columns="insert", extra_columns="ignore", storage_options=options, schema=schema,
        )
        parts.append(SourcePart(start, int(rows), frame.rename(view.renames) if view.renames else frame))
        start += int(rows)
    return parts


def _key_index_location(config: RepoConfig, view: _ViewSource) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """Where the key index of ``view``'s table version lives, and the fingerprint it must
    carry (``None``: indexes are off, or the view has not exactly one join key).

    The fingerprint names the table, its version, a digest of its file list in scan order
    (a table deleted and re-created at the same path starts again at version 0), the
    columns, the view's renames of table columns (features kept in the index are kept
    under the view's names), and the polars and deltalake versions (they decide how rows
    are numbered).
    """
    store_cfg = getattr(config, "offline_store", None)
    if not isinstance(store_cfg, DeltaOfflineStoreConfig) or not store_cfg.key_index or len(view.join_keys) != 1:
        return None
    repo_path = getattr(config, "repo_path", None)
    base = store_cfg.key_index_path
    if base is None:
        if repo_path is None:
            return None
        base = str(Path(repo_path) / "data" / "key_index")
    elif not os.path.isabs(base) and repo_path is not None:
        base = str(Path(repo_path) / base)
    import deltalake

    uri = view.source.resolved_uri(repo_path)
    columns = [view.join_keys[0], view.timestamp_field, view.created_timestamp_field or ""]
    fingerprint = {
        "table": uri,
        "version": view.version,
        "files": hashlib.sha256("\n".join(view.table.file_uris()).encode()).hexdigest(),
        "key": columns[0],
        "timestamp": columns[1],
        "created": columns[2],
        "renames": sorted(view.renames.items()),
        "polars": pl.__version__,
        "deltalake": deltalake.__version__,
    }
    named = [*columns, *(f"{a}>{b}" for a, b in sorted(view.renames.items()))]
    digest = hashlib.sha256("\x00".join(named).encode()).hexdigest()[:12]
    table_dir = Path(base) / hashlib.sha256(uri.encode()).hexdigest()[:16]
    return table_dir / f"v{view.version:010d}-{digest}", fingerprint


def _column_stats(table: Any, columns: Dict[str, str]) -> Dict[str, ColumnStats]:
    """Bounds and null counts of ``columns`` (table name -> name in the scan) from the
    file statistics in the Delta log (no data read). Only numeric and timestamp columns,
    only when every file has statistics; timestamp maxima are widened by 1 ms because
    Delta stores them truncated to milliseconds (minima truncate downwards: still bounds).
    """
    try:
        actions = pa.table(table.get_add_actions(flatten=True))
    except Exception:  # noqa: BLE001 - statistics are an optimisation only
        return {}
    names = set(actions.column_names)
    out: Dict[str, ColumnStats] = {}
    if actions.num_rows == 0:
        return out
    for raw, name in columns.items():
        lo_col, hi_col, null_col = f"min.{raw}", f"max.{raw}", f"null_count.{raw}"
        if not {lo_col, hi_col, null_col} <= names or "num_records" not in names:
            continue
        lo, hi, nulls = actions.column(lo_col), actions.column(hi_col), actions.column(null_col)
        kind = lo.type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_timestamp(kind)):
            continue
        if nulls.null_count:
            continue
        records = actions.column("num_records").to_pylist()
        null_counts = nulls.to_pylist()
        lows, highs = lo.to_pylist(), hi.to_pylist()
        bounded = [(a, b) for a, b, n, r in zip(lows, highs, null_counts, records) if n < r]
        if any(a is None or b is None for a, b in bounded):
            continue  # a file with values but without bounds
        lower = min((a for a, _ in bounded), default=None)
        upper = max((b for _, b in bounded), default=None)
        if pa.types.is_timestamp(kind) and upper is not None:
            upper = upper + timedelta(milliseconds=1)
        out[name] = ColumnStats(lower=lower, upper=upper, null_count=int(sum(null_counts)))
    return out


def _non_entity_rows(
    config: RepoConfig,
    fv_to_features: Dict[FeatureView, List[str]],
    start: datetime,
    end: datetime,
    ts_col: str,
) -> pl.DataFrame:
    """Entity rows for retrieval without an entity_df: every key seen in [start, end], at ``end``."""
    key_sets = {tuple(e.name for e in fv.entity_columns) for fv in fv_to_features}
    if len(key_sets) > 1:
        raise ValueError(f"retrieval without entity_df needs feature views sharing join keys, got {key_sets}")
    keys = list(next(iter(key_sets), ()))
    frames = []
    for fv in fv_to_features:
        source = _as_delta_source(fv.batch_source)
        ts_field = source.timestamp_field
        frames.append(_time_filter(source.scan(config).select([*keys, ts_field]), ts_field, start, end).select(keys))
    if not keys:
        return pl.DataFrame({ts_col: [end]}).with_columns(pl.col(ts_col).cast(pl.Datetime("us", "UTC")))
    rows = pl.concat(frames).unique().collect()
    return rows.with_columns(pl.lit(end).cast(pl.Datetime("us", "UTC")).alias(ts_col)).sort(keys)
