"""Point-in-time joins with polars (scans, filters, gathers) and numpy (the matching).

Semantics (the ones Feast documents for ``get_historical_features``), per entity row and
per feature source:

* candidates are the feature rows with the same join key values and
  ``event_timestamp <= entity timestamp``; with a TTL also
  ``event_timestamp >= entity timestamp - ttl`` (both bounds inclusive);
* the winner is the candidate with the latest event timestamp; among candidates sharing
  that timestamp, the one with the latest created timestamp (a null created timestamp
  loses against any value);
* an entity row without a candidate gets nulls for that source's features;
* every entity row is kept, duplicates included, in its original order and with all its
  extra columns.

As-known-at (``FeatureSourceSpec.as_known_at``, Feast's ``filter_by_created_timestamp``): a
candidate must also have been created at or before the entity timestamp. Where Feast is
silent: a row without a created timestamp is never a candidate (what Feast's own SQL, duckdb
and dask stores do: ``created <= t`` is not true for a null); ties on the event timestamp go
to the newest created timestamp among the candidates; the TTL applies to the event timestamp
as without the flag; a source without a created timestamp column is unaffected. Created
timestamps finer than the compared unit are rounded up (1 ns after an entity microsecond is
after it). The eager join finds the plain winner, then steps back along the key's rows (kept
in (event timestamp, created) order) past rows created too late, only for the entity rows
whose winner was; the lazy plan ranks rows by ``max(ts, created)`` (when a row becomes a
candidate) with each key's running newest row, and asof-joins on that.

Timestamps are compared as UTC instants: naive columns are taken to be UTC, aware ones
are converted. Entity and feature timestamps are compared at the finer of their two units
(a millisecond entity frame against a microsecond table: at microseconds), TTL bounds
included: converting to a finer unit is exact, whereas truncating the feature side to a
coarser entity unit would let a row written after the entity timestamp (12:00:00.000100)
match it (12:00:00.000) and mix up the order of rows within one entity unit. Created
timestamps keep their own unit (they only order rows among themselves). The entity
timestamp column comes back as ``Datetime(<its unit>, "UTC")``.

Join keys: numeric keys are compared by value, whatever their widths. An entity key the
source's key type cannot hold (3,000,000,000 against an ``Int32`` column, a ``UInt64`` key
above the ``Int64`` range) cannot occur in the source: its row gets nulls, like any other
unknown key, instead of failing the request. A numeric key against a non-numeric one
(integers against strings) is refused with :class:`PitJoinError` before anything is read,
whatever the values: whether a request fails must not depend on which keys it holds.

Every source is projected to the key, timestamp and requested feature columns and
filtered on the entity key values and on the time window the entity rows can reach
(``[min(entity ts) - ttl, max(entity ts)]``), filters that polars pushes into parquet /
Delta scans, so a source is never read whole unless every row can matter. A filter that
the source's known column statistics (:class:`ColumnStats`, e.g. from the Delta log) prove
true for every row is left out: it could skip nothing and would cost a pass over the data.

Two implementations of the same semantics:

* :func:`point_in_time_join` (the one retrieval uses) matches rows late, on integer
  arrays. Each feature row gets one ``int64`` sort key, ``key code << B | (ts - min ts + 1)``
  (key code: the integer key itself, offset, or a dense code from a hash join for any other
  key type; timestamps divided by a unit they all share, or densely ranked, when the span
  does not fit ``B`` bits). The keys are sorted as packed ``(coarse key, row number)``
  values (a value sort, several times faster than an argsort; runs sharing a coarse key
  are then put in exact order, equal keys by created timestamp), and a ``searchsorted`` of
  the entity rows' keys gives each entity row its candidate, accepted when it has the same
  key code and is inside the TTL. Only then are feature columns touched: a source that can
  be read twice (``rescannable``, e.g. a Delta table at a fixed version, or an in-memory
  frame) is read first for keys and timestamps only, then for the features of the winning
  rows only (selected by row number inside the scan); any other source is collected once
  and the winning rows are gathered from memory. No wide sort, and the entity rows' extra
  columns are never sorted. A source with a :class:`~hybrid_pipeline.features.key_index.KeyIndex`
  (its sorted keys kept per table version) skips the first read and the sort: the entity
  rows are searched in the index; features the index keeps (numbers, booleans) are taken
  from it, the others read (by consecutive :class:`SourcePart` pieces in parallel where
  given) with each row read back checked against the key and timestamp the index holds for
  it (when nothing else is read, the winners of the smallest piece holding any are read and
  checked).
* :func:`point_in_time_join_lazy` is the same join as one lazy polars plan (backward
  ``join_asof`` by entity key after sorting each source by timestamp and created
  timestamp, the TTL applied to the matched timestamp); kept for callers that want a plan,
  and as a second implementation the tests hold against the first.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from hybrid_pipeline.features.key_index import KeyIndex

__all__ = [
    "ColumnStats",
    "FeatureSourceSpec",
    "PitJoinError",
    "SourcePart",
    "DEFAULT_ENTITY_TIMESTAMP_COL",
    "EngineName",
    "fetch_rows",
    "gather_rows",
    "key_order",
    "known_at_arrays",
    "match_rows",
    "point_in_time_join",
    "point_in_time_join_lazy",
    "prepare_entity_frame",
    "to_utc",
]

DEFAULT_ENTITY_TIMESTAMP_COL = "event_timestamp"
EngineName = Literal["auto", "in-memory", "streaming"]
TimeUnit = Literal["ns", "us", "ms"]
_ROW_ID = "__pit_row_id"
_SOURCE_ROW = "__pit_source_row"
# Above this many distinct key values the key filter is a semi-join instead of an
# ``is_in`` literal (still correct, only less pushdown).
_MAX_IN_LIST_KEYS = 2_000_000
# The eager join pushes an ``is_in`` key filter into the scan only up to this many distinct
# keys: with more, it rarely lets a scan skip data, costs a hash probe per row read, and
# the match step ignores rows of other keys anyway (a min/max key range is always pushed).
_MAX_EAGER_IN_LIST_KEYS = 10_000
_INT64_MAX = 2**63 - 1


class PitJoinError(ValueError):
    """Raised for inputs a point-in-time join cannot be defined on."""


@dataclass(frozen=True)
class ColumnStats:
    """What is known of one source column without reading it (e.g. from the Delta log).

    ``lower <= value <= upper`` holds for every non-null value (bounds may be loose;
    ``None``: unknown); ``null_count`` is the number of nulls (``None``: unknown). A filter
    these prove true for every row is left out of the scan: it could not skip anything
    and would still cost a pass over every column read.
    """

    lower: Any = None
    upper: Any = None
    null_count: int | None = None


@dataclass(frozen=True)
class SourcePart:
    """A consecutive piece of a feature source: its rows are the source's rows ``start``
    to ``start + rows - 1`` (``frame.with_row_index()`` numbering), e.g. one file of a
    Delta table version. Lets the second read skip pieces without winning rows and read
    the others in parallel."""

    start: int
    rows: int
    frame: pl.LazyFrame


@dataclass(frozen=True)
class FeatureSourceSpec:
    """One feature source of a point-in-time join.

    Attributes:
        name: view name; prefix of output columns when ``full_feature_names`` is set
            (``"<name>__<feature>"``, Feast's convention).
        frame: the feature rows, lazily (``pl.scan_delta``/``pl.scan_parquet``...); an
            eager DataFrame is accepted and made lazy.
        join_keys: key columns in ``frame``.
        timestamp_field: event timestamp column in ``frame``.
        feature_columns: columns of ``frame`` to return.
        created_timestamp_field: optional tie-breaker for rows with equal event timestamps.
        ttl: maximum age of a feature row relative to the entity row; ``None`` means
            unbounded. (Feast's ``ttl=timedelta(0)`` means unbounded too; translate it to
            ``None`` before building a spec: here ``timedelta(0)`` means "same instant only".)
        entity_join_keys: names of the join keys in the entity frame, positionally
            matching ``join_keys`` (Feast's ``join_key_map``); default: ``join_keys``.
        output_names: explicit output name per feature column; overrides the naming rule.
        column_stats: optional :class:`ColumnStats` per column of ``frame`` (key and
            timestamp columns are used), to leave out filters they prove redundant.
        rescannable: ``frame`` yields the same rows in the same order every time it is
            collected (a scan of files that do not change, e.g. a Delta table at a fixed
            version): features are then read in a second pass, only for winning rows.
        key_index: a :class:`~hybrid_pipeline.features.key_index.KeyIndex` built from
            ``frame`` (its row numbers are ``frame.with_row_index()``'s): the join then
            searches it instead of scanning and sorting keys and timestamps. Used for a
            rescannable source with one join key when the index serves the entity key
            type (entity timestamps in any unit: a coarser one than the index's is
            converted to it); otherwise the join scans as without it.
        parts: ``frame`` as consecutive :class:`SourcePart` pieces, read instead of
            ``frame`` when the features of the winning rows are fetched through
            ``key_index`` (where the index's check of the rows read back guards the
            numbering); when the index keeps every feature asked for, only the smallest
            piece holding winners is read, for that check.
        as_known_at: as-known-at retrieval (Feast's ``filter_by_created_timestamp``): only
            rows whose created timestamp is at or before the entity timestamp are
            candidates; a row without a created timestamp is never a candidate. Ignored
            for a source without ``created_timestamp_field`` (Feast leaves such views
            unaffected).
    """

    name: str
    frame: pl.LazyFrame | pl.DataFrame
    join_keys: Sequence[str]
    timestamp_field: str
    feature_columns: Sequence[str]
    created_timestamp_field: str | None = None
    ttl: timedelta | None = None
    entity_join_keys: Sequence[str] | None = None
    output_names: Mapping[str, str] | None = field(default=None)
    column_stats: Mapping[str, ColumnStats] | None = field(default=None)
    rescannable: bool = False
    key_index: KeyIndex | None = field(default=None)
    parts: Sequence[SourcePart] | None = field(default=None)
    as_known_at: bool = False

    def entity_keys(self) -> list[str]:
        keys = list(self.entity_join_keys) if self.entity_join_keys is not None else list(self.join_keys)
        if len(keys) != len(self.join_keys):
            raise PitJoinError(
                f"source {self.name!r}: entity_join_keys {keys} do not match join_keys {list(self.join_keys)}"
            )
        return keys

    def output_column(self, feature: str, full_feature_names: bool) -> str:
        if self.output_names and feature in self.output_names:
            return self.output_names[feature]
        return f"{self.name}__{feature}" if full_feature_names else feature


# --------------------------------------------------------------------------- timestamps


def to_utc(expr: pl.Expr, dtype: pl.DataType, unit: TimeUnit | None = None) -> pl.Expr:
    """Expression turning a Datetime/Date column of ``dtype`` into ``Datetime(unit, "UTC")``.

    Naive datetimes are taken to be UTC; aware ones are converted. ``unit`` defaults to
    the column's own unit (microseconds for Date).
    """
    if dtype == pl.Date:
        return expr.cast(pl.Datetime(unit or "us")).dt.replace_time_zone("UTC")
    if not isinstance(dtype, pl.Datetime):
        raise PitJoinError(f"expected a Datetime or Date column, got {dtype}")
    out = expr
    if dtype.time_zone is None:
        out = out.dt.replace_time_zone("UTC")
    elif dtype.time_zone != "UTC":
        out = out.dt.convert_time_zone("UTC")
    target = unit or dtype.time_unit
    if target != dtype.time_unit:
        out = out.dt.cast_time_unit(target)  # type: ignore[arg-type]
    return out


_NS_PER_UNIT: dict[str, int] = {"ns": 1, "us": 1_000, "ms": 1_000_000}


def _match_unit(entity_unit: TimeUnit, source_ts: pl.DataType) -> TimeUnit:
    """The unit a source's timestamps (of dtype ``source_ts``) are compared with entity
    timestamps at: the finer of the two units (the entity's for a Date column). Both
    sides convert to it exactly; truncating either would let a row match an entity
    timestamp it is later than."""
    if isinstance(source_ts, pl.Datetime) and _NS_PER_UNIT[source_ts.time_unit] < _NS_PER_UNIT[entity_unit]:
        return source_ts.time_unit  # type: ignore[return-value]
    return entity_unit


def _require_fits(ts: pl.Series, unit: TimeUnit) -> None:
    """Raises :class:`PitJoinError` when the entity timestamps ``ts`` (a Datetime column)
    hold an instant that ``unit`` (theirs or a finer one) cannot (nanoseconds: 1677 to
    2262). Clamping it instead would move that entity row's TTL window."""
    assert isinstance(ts.dtype, pl.Datetime)
    limit = _INT64_MAX // (_NS_PER_UNIT[ts.dtype.time_unit] // _NS_PER_UNIT[unit])
    physical = ts.to_physical()
    if physical.len() and (physical.min() < -limit or physical.max() > limit):  # type: ignore[operator]
        first, last = str(ts.min()), str(ts.max())
        raise PitJoinError(
            f"entity timestamps from {first} to {last} cannot be compared with feature timestamps in {unit}: "
            f"outside the range of that unit"
        )


def _entity_ts_in(ts: pl.Series, unit: TimeUnit) -> pl.Series:
    """The entity timestamps ``ts`` (a Datetime column) in ``unit``, theirs or a finer one:
    exact (see :func:`_require_fits` for instants that ``unit`` cannot hold)."""
    assert isinstance(ts.dtype, pl.Datetime)
    if ts.dtype.time_unit == unit:
        return ts
    _require_fits(ts, unit)
    return ts.dt.cast_time_unit(unit)


def _latest_instant(ts: pl.Series) -> datetime:
    """The latest of the timestamps ``ts`` as a datetime, rounded up to the microsecond
    (Python's resolution; rounding down would make an upper bound that leaves out
    feature rows a few nanoseconds before it)."""
    latest: datetime = ts.max()  # type: ignore[assignment]
    if isinstance(ts.dtype, pl.Datetime) and ts.dtype.time_unit == "ns" and ts.to_physical().max() % 1_000:  # type: ignore[operator]
        latest += timedelta(microseconds=1)
    return latest


def _utc_value(value: Any) -> Any:
    """A datetime bound as an aware UTC datetime (naive = UTC); other values unchanged."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return value


def _bound_literal(value: datetime, dtype: pl.DataType) -> pl.Expr:
    """A literal comparable with a *raw* column of ``dtype`` (so the filter is pushed down)."""
    value = value.astimezone(timezone.utc)
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        return pl.lit(value).cast(pl.Datetime(dtype.time_unit, "UTC")).dt.convert_time_zone(dtype.time_zone)
    if isinstance(dtype, pl.Datetime):
        return pl.lit(value.replace(tzinfo=None)).cast(pl.Datetime(dtype.time_unit))
    raise PitJoinError(f"cannot build a time bound for dtype {dtype}")


def prepare_entity_frame(
    entity_df: pl.DataFrame | pl.LazyFrame | Any,
    entity_timestamp_col: str = DEFAULT_ENTITY_TIMESTAMP_COL,
) -> pl.DataFrame:
    """Entity rows as an eager polars frame with a UTC entity timestamp column.

    Accepts polars (eager or lazy), pandas or pyarrow input.
    """
    if isinstance(entity_df, pl.LazyFrame):
        df = entity_df.collect()
    elif isinstance(entity_df, pl.DataFrame):
        df = entity_df
    else:
        df = pl.from_pandas(entity_df) if hasattr(entity_df, "iloc") else pl.from_arrow(entity_df)  # type: ignore[assignment]
        if not isinstance(df, pl.DataFrame):
            raise PitJoinError("entity_df must be tabular")
    if entity_timestamp_col not in df.columns:
        raise PitJoinError(f"entity_df has no timestamp column {entity_timestamp_col!r} (columns: {df.columns})")
    dtype = df.schema[entity_timestamp_col]
    if dtype == pl.String:
        df = df.with_columns(pl.col(entity_timestamp_col).str.to_datetime(time_zone="UTC"))
        dtype = df.schema[entity_timestamp_col]
    unit = dtype.time_unit if isinstance(dtype, pl.Datetime) else "us"
    df = df.with_columns(to_utc(pl.col(entity_timestamp_col), dtype, unit))
    if df[entity_timestamp_col].null_count():
        raise PitJoinError(f"entity_df has null values in {entity_timestamp_col!r}")
    return df


# --------------------------------------------------------------------------- the join


def _require_columns(source: str, schema: Mapping[str, Any], needed: Sequence[str]) -> None:
    missing = [c for c in dict.fromkeys(needed) if c not in schema]
    if missing:
        raise PitJoinError(f"source {source!r} lacks columns {missing} (has {list(schema)})")


def _prune_and_normalise(
    spec: FeatureSourceSpec,
    index: int,
    entities: pl.DataFrame,
    entity_timestamp_col: str,
    ts_dtype: pl.Datetime,
    *,
    max_in_list_keys: int = _MAX_IN_LIST_KEYS,
) -> tuple[pl.LazyFrame, str, str | None]:
    """Project, filter (pushdown-friendly) and normalise one source, unsorted.

    Returns ``(frame, ts alias, created alias or None)``; the frame has the entity key
    names and dtypes, the UTC timestamps under the aliases (event timestamps in the unit
    of :func:`_match_unit`, created timestamps in their own), then the features. With
    more than ``max_in_list_keys`` distinct key values the ``is_in`` filter is left out
    (the lazy join then uses a semi-join instead, see ``_MAX_IN_LIST_KEYS``).
    """
    frame = spec.frame.lazy() if isinstance(spec.frame, pl.DataFrame) else spec.frame
    keys = list(spec.join_keys)
    entity_keys = spec.entity_keys()
    ts = spec.timestamp_field
    created = spec.created_timestamp_field or None
    features = list(spec.feature_columns)
    schema = frame.collect_schema()

    needed = [*keys, ts, *([created] if created else []), *features]
    _require_columns(spec.name, schema, needed)
    frame = frame.select(list(dict.fromkeys(needed)))

    # ---- filters on raw columns (pushed into the scan), unless the stats prove them true
    stats = spec.column_stats or {}

    def proven(column: str, check: Callable[[ColumnStats], bool]) -> bool:
        try:
            return column in stats and bool(check(stats[column]))
        except TypeError:  # bounds not comparable with the filter's value
            return False

    raw_ts = schema[ts]
    preds: list[pl.Expr] = []
    if not proven(ts, lambda c: c.null_count == 0):
        preds.append(pl.col(ts).is_not_null())
    if entities.height == 0:
        preds.append(pl.lit(False))
    elif isinstance(raw_ts, pl.Datetime):
        ts_col = entities[entity_timestamp_col]
        _require_fits(ts_col, _match_unit(ts_dtype.time_unit, raw_ts))
        hi = _latest_instant(ts_col)
        if not proven(ts, lambda c: c.upper is not None and _utc_value(c.upper) <= hi):
            preds.append(pl.col(ts) <= _bound_literal(hi, raw_ts))
        if spec.ttl is not None:
            lo: datetime = ts_col.min() - spec.ttl  # type: ignore[operator, assignment]
            if not proven(ts, lambda c: c.lower is not None and _utc_value(c.lower) >= lo):
                preds.append(pl.col(ts) >= _bound_literal(lo, raw_ts))
        if created and spec.as_known_at and isinstance(schema[created], pl.Datetime):
            # no row created after every entity timestamp can win (nor one without a created timestamp)
            preds.append(pl.col(created) <= _bound_literal(hi, schema[created]))
    semi_keys: list[tuple[str, pl.Series]] = []
    for key, ekey in zip(keys, entity_keys):
        if not proven(key, lambda c: c.null_count == 0):
            preds.append(pl.col(key).is_not_null())
        values = _entity_key_values(spec.name, key, schema[key], entities[ekey])
        if values.dtype.is_numeric() or values.dtype.is_temporal() or values.dtype == pl.String:
            if values.len():
                v_min, v_max = values.min(), values.max()
                if not proven(
                    key, lambda c: c.lower is not None and c.upper is not None and v_min <= c.lower and c.upper <= v_max
                ):
                    preds.append(pl.col(key).is_between(pl.lit(v_min, dtype=values.dtype), pl.lit(v_max, dtype=values.dtype)))
        if values.len() <= max_in_list_keys:
            preds.append(pl.col(key).is_in(values.implode()))
        elif max_in_list_keys == _MAX_IN_LIST_KEYS:
            semi_keys.append((key, values))
    if preds:
        frame = frame.filter(pl.all_horizontal(preds))
    for key, values in semi_keys:
        frame = frame.join(values.alias(key).to_frame().lazy(), on=key, how="semi")

    # ---- normalise: keys to the entity dtypes/names (the filters above leave only values
    # the entity type holds), timestamps to UTC at the unit they are compared at
    ts_alias = f"__pit_ts_{index}"
    created_alias = f"__pit_created_{index}"
    exprs = [
        *(pl.col(k).cast(entities.schema[ek]).alias(ek) for k, ek in zip(keys, entity_keys)),
        to_utc(pl.col(ts), raw_ts, _match_unit(ts_dtype.time_unit, raw_ts)).alias(ts_alias),
    ]
    if created:
        exprs.append(to_utc(pl.col(created), schema[created]).alias(created_alias))
    exprs.extend(pl.col(f) for f in features)
    return frame.select(exprs), ts_alias, created_alias if created else None


def _entity_key_values(source: str, key: str, dtype: pl.DataType, entity_keys: pl.Series) -> pl.Series:
    """The distinct entity values of join key ``key`` as the source's key type ``dtype``.

    Numeric keys compare by value: an entity value that ``dtype`` cannot hold (3e9 for an
    ``Int32`` column) cannot occur in the source and is left out, so its entity rows find
    nothing. A numeric key against a non-numeric one (integers against strings) raises
    :class:`PitJoinError` whatever the values, so whether a request fails never depends
    on which keys it asks for; other pairs must cast (e.g. strings to categoricals).
    """
    values = entity_keys.drop_nulls().unique()
    if values.dtype == pl.Null:  # no key at all
        return values.cast(dtype)
    if values.dtype.is_numeric() and dtype.is_numeric():
        return values.cast(dtype, strict=False).drop_nulls()
    mismatch = f"source {source!r}, join key {key!r}: entity dtype {values.dtype} cannot be compared with {dtype}"
    if values.dtype.is_numeric() or dtype.is_numeric():
        raise PitJoinError(mismatch)
    try:
        return values.cast(dtype)
    except Exception as exc:  # noqa: BLE001 - report the mismatch plainly
        raise PitJoinError(mismatch) from exc


def _sorted_source(
    spec: FeatureSourceSpec,
    index: int,
    entities: pl.DataFrame,
    entity_timestamp_col: str,
    ts_dtype: pl.Datetime,
) -> tuple[pl.LazyFrame, str]:
    """The source ordered for a backward asof join; returns (frame, ts alias)."""
    frame, ts_alias, created_alias = _prune_and_normalise(spec, index, entities, entity_timestamp_col, ts_dtype)
    # within a timestamp, the largest created last (nulls first), because a backward asof
    # join takes the *last* right row whose timestamp qualifies.
    sort_cols = [ts_alias, created_alias] if created_alias else [ts_alias]
    frame = frame.sort(sort_cols, nulls_last=False, maintain_order=True)
    if created_alias:
        frame = frame.drop(created_alias)
    return frame, ts_alias


def _known_at_source(
    spec: FeatureSourceSpec,
    index: int,
    entities: pl.DataFrame,
    entity_timestamp_col: str,
    ts_dtype: pl.Datetime,
) -> tuple[pl.LazyFrame, pl.LazyFrame, str, str, str]:
    """An as-known-at source for a backward asof join: returns ``(searched, values, known
    alias, winner alias, ts alias)``.

    A row becomes a candidate at ``known = max(ts, created)`` (both must be at or before
    the entity timestamp); rows without a created timestamp never do. In ``known`` order
    (then created), each key's running winner is the newest row by (ts, created) so far
    (``winner``, a row number of ``values``): the asof match on ``known`` gives the row
    known last at the entity timestamp, and its running winner is the answer.
    """
    frame, ts_alias, created_alias = _prune_and_normalise(spec, index, entities, entity_timestamp_col, ts_dtype)
    assert created_alias is not None
    schema = frame.collect_schema()
    unit: TimeUnit = schema[ts_alias].time_unit  # type: ignore[attr-defined]
    keys = spec.entity_keys()
    row, known, winner = f"__pit_r_{index}", f"__pit_known_{index}", f"__pit_win_{index}"
    frame = frame.filter(pl.col(created_alias).is_not_null()).with_row_index(row)
    created_in_unit = _ceil_to_unit(pl.col(created_alias), schema[created_alias], unit)  # type: ignore[arg-type]
    ordered = frame.select(
        *keys, row, ts_alias, created_alias,
        pl.max_horizontal(pl.col(ts_alias).dt.epoch(unit), created_in_unit)  # type: ignore[arg-type]
        .cast(pl.Datetime(unit, "UTC")).alias(known),
    ).sort([known, created_alias], maintain_order=True)
    newest = pl.col(ts_alias).cum_max()
    record = pl.col(ts_alias) == (newest.over(keys) if keys else newest)
    running = pl.when(pl.col("__pit_record")).then(pl.col(row)).forward_fill()
    searched = ordered.with_columns(record.alias("__pit_record")).select(
        *keys, known, (running.over(keys) if keys else running).alias(winner)
    )
    values = frame.select(row, ts_alias, *spec.feature_columns)
    return searched, values, known, winner, ts_alias


def _ceil_to_unit(expr: pl.Expr, dtype: pl.Datetime, unit: TimeUnit) -> pl.Expr:
    """A UTC Datetime column of ``dtype`` as integers in ``unit``, rounded up (see
    :func:`known_at_arrays`)."""
    own, target = _NS_PER_UNIT[dtype.time_unit], _NS_PER_UNIT[unit]
    values = expr.dt.epoch(dtype.time_unit)  # type: ignore[arg-type]
    if own < target:
        return -((-values) // (target // own))
    return values * (own // target)


def _checked_entities(
    entity_df: pl.DataFrame | pl.LazyFrame | Any,
    feature_sources: Sequence[FeatureSourceSpec],
    entity_timestamp_col: str,
    full_feature_names: bool,
) -> tuple[pl.DataFrame, pl.Datetime]:
    """Prepared entity rows and their timestamp dtype; refuses missing keys and name clashes."""
    entities = prepare_entity_frame(entity_df, entity_timestamp_col)
    if _ROW_ID in entities.columns:
        raise PitJoinError(f"entity_df may not contain a column named {_ROW_ID!r}")
    ts_dtype = entities.schema[entity_timestamp_col]
    assert isinstance(ts_dtype, pl.Datetime)

    # output names must not collide with each other nor with entity columns
    taken = set(entities.columns)
    for spec in feature_sources:
        for ekey in spec.entity_keys():
            if ekey not in entities.columns:
                raise PitJoinError(f"entity_df lacks join key {ekey!r} needed by source {spec.name!r}")
        for feature in spec.feature_columns:
            out = spec.output_column(feature, full_feature_names)
            if out in taken:
                hint = "" if full_feature_names else " (use full_feature_names=True)"
                raise PitJoinError(f"output column {out!r} of source {spec.name!r} is ambiguous{hint}")
            taken.add(out)
    return entities, ts_dtype


def point_in_time_join_lazy(
    entity_df: pl.DataFrame | pl.LazyFrame | Any,
    feature_sources: Sequence[FeatureSourceSpec],
    *,
    entity_timestamp_col: str = DEFAULT_ENTITY_TIMESTAMP_COL,
    full_feature_names: bool = False,
) -> pl.LazyFrame:
    """The plan of :func:`point_in_time_join`; entity rows are materialised (to derive the
    pushdown filters), feature sources stay lazy."""
    entities, ts_dtype = _checked_entities(entity_df, feature_sources, entity_timestamp_col, full_feature_names)

    left = entities.lazy().with_row_index(_ROW_ID)
    sources = []
    for index, spec in enumerate(feature_sources):
        right, ts_alias = _sorted_source(spec, index, entities, entity_timestamp_col, ts_dtype)
        # the entity timestamps in the unit the source's are compared at, under a private
        # name where it differs (the entity column keeps its own unit)
        unit: TimeUnit = right.collect_schema()[ts_alias].time_unit  # type: ignore[attr-defined]
        left_ts = entity_timestamp_col
        if unit != ts_dtype.time_unit:
            left_ts = f"__pit_t_{index}"
            left = left.with_columns(_entity_ts_in(entities[entity_timestamp_col], unit).alias(left_ts))
        sources.append((spec, index, right, ts_alias, left_ts, unit))

    result = left.sort(entity_timestamp_col, maintain_order=True)
    for spec, index, right, ts_alias, left_ts, unit in sources:
        if spec.as_known_at and spec.created_timestamp_field:
            result = _join_known_at(result, spec, index, entities, entity_timestamp_col, ts_dtype, left_ts, full_feature_names)
            continue
        # private names on the right so nothing collides during the join
        private = {f: f"__pit_f_{index}_{i}" for i, f in enumerate(spec.feature_columns)}
        right = right.rename(private)
        entity_keys = spec.entity_keys()
        result = result.join_asof(
            right,
            left_on=left_ts,
            right_on=ts_alias,
            by=entity_keys or None,
            strategy="backward",
            coalesce=False,
            check_sortedness=False,
            allow_parallel=True,
        )
        if spec.ttl is not None:
            # the TTL as a duration in the compared unit: ``datetime[ns] - duration[us]`` is
            # computed in microseconds, truncating the entity timestamps
            fresh = pl.col(ts_alias) >= pl.col(left_ts) - pl.lit(spec.ttl).cast(pl.Duration(unit))
            outs = [
                pl.when(fresh).then(pl.col(p)).otherwise(None).alias(spec.output_column(f, full_feature_names))
                for f, p in private.items()
            ]
        else:
            outs = [pl.col(p).alias(spec.output_column(f, full_feature_names)) for f, p in private.items()]
        private_ts = [left_ts] if left_ts != entity_timestamp_col else []
        result = result.with_columns(outs).drop([ts_alias, *private.values(), *private_ts])

    return result.sort(_ROW_ID).drop(_ROW_ID)


def _join_known_at(
    result: pl.LazyFrame,
    spec: FeatureSourceSpec,
    index: int,
    entities: pl.DataFrame,
    entity_timestamp_col: str,
    ts_dtype: pl.Datetime,
    left_ts: str,
    full_feature_names: bool,
) -> pl.LazyFrame:
    """``result`` with the as-known-at features of ``spec`` (see :func:`_known_at_source`)."""
    searched, values, known, winner, ts_alias = _known_at_source(spec, index, entities, entity_timestamp_col, ts_dtype)
    unit: TimeUnit = values.collect_schema()[ts_alias].time_unit  # type: ignore[attr-defined]
    private = {f: f"__pit_f_{index}_{i}" for i, f in enumerate(spec.feature_columns)}
    row = f"__pit_r_{index}"
    joined = result.join_asof(
        searched, left_on=left_ts, right_on=known, by=spec.entity_keys() or None, strategy="backward",
        coalesce=False, check_sortedness=False, allow_parallel=True,
    ).join(values.rename(private), left_on=winner, right_on=row, how="left", maintain_order="left")
    fresh = pl.col(ts_alias).is_not_null()
    if spec.ttl is not None:
        fresh &= pl.col(ts_alias) >= pl.col(left_ts) - pl.lit(spec.ttl).cast(pl.Duration(unit))
    outs = [pl.when(fresh).then(pl.col(p)).alias(spec.output_column(f, full_feature_names)) for f, p in private.items()]
    drop = [known, winner, ts_alias, *private.values(), *(c for c in [row] if c in joined.collect_schema())]
    if left_ts != entity_timestamp_col:
        drop.append(left_ts)
    return joined.with_columns(outs).drop(drop)


def point_in_time_join(
    entity_df: pl.DataFrame | pl.LazyFrame | Any,
    feature_sources: Sequence[FeatureSourceSpec],
    *,
    entity_timestamp_col: str = DEFAULT_ENTITY_TIMESTAMP_COL,
    full_feature_names: bool = False,
    engine: EngineName = "auto",
    missing_floats: Literal["null", "nan"] = "null",
) -> pl.DataFrame:
    """Point-in-time join of ``entity_df`` with every source in ``feature_sources``.

    Returns the entity rows (same order, same columns, duplicates kept; the timestamp
    column normalised to UTC) followed by each source's features, named
    ``feature`` or ``"<source name>__feature"`` when ``full_feature_names``.
    ``engine`` is the polars engine that collects each (projected, filtered) source.
    ``missing_floats="nan"`` gives float features NaN instead of null where they are
    missing: what pandas shows for them, so a conversion to pandas needs no copy.

    A source that can be read twice (``rescannable``, or an in-memory frame) is read in
    two passes: keys and timestamps first, then only the feature values of the winning
    rows (selected by row number inside the scan); any other source is collected once with
    its features and the winning rows are gathered from memory.
    """
    entities, ts_dtype = _checked_entities(entity_df, feature_sources, entity_timestamp_col, full_feature_names)
    entity_ts: dict[str, np.ndarray] = {}  # the entity timestamps as integers, by unit

    def entity_ts_in(unit: TimeUnit) -> np.ndarray:
        if unit not in entity_ts:
            entity_ts[unit] = _entity_ts_in(entities[entity_timestamp_col], unit).to_physical().to_numpy()
        return entity_ts[unit]

    nan_floats = missing_floats == "nan"
    columns: list[pl.Series] = []
    for index, spec in enumerate(feature_sources):
        source = spec.frame.lazy() if isinstance(spec.frame, pl.DataFrame) else spec.frame
        two_pass = (spec.rescannable or isinstance(spec.frame, pl.DataFrame)) and _SOURCE_ROW not in source.collect_schema()
        if two_pass:
            numbered = source.with_row_index(_SOURCE_ROW)
            narrow = replace(spec, frame=numbered, feature_columns=[_SOURCE_ROW])
        else:
            narrow = spec
        names = {f: spec.output_column(f, full_feature_names) for f in spec.feature_columns}
        fetched = _fetch_by_index(spec, numbered, entities, entity_ts_in, ts_dtype, list(names), engine, nan_floats) if two_pass else None
        if fetched is not None:
            columns.extend(fetched.select(pl.col(f).alias(o) for f, o in names.items()).get_columns())
            continue
        frame, ts_alias, created_alias = _prune_and_normalise(
            narrow, index, entities, entity_timestamp_col, ts_dtype, max_in_list_keys=_MAX_EAGER_IN_LIST_KEYS
        )
        right = frame.collect(engine=engine)
        entity_keys = spec.entity_keys()
        nullable = [c for c in (ts_alias, *entity_keys) if right[c].null_count()]
        if nullable:  # only when stats claimed no nulls wrongly; the match step needs none
            right = right.filter(pl.all_horizontal(pl.col(c).is_not_null() for c in nullable))
        if entities.height == 0 or right.height == 0:
            empty = source.select(pl.col(f).alias(o) for f, o in names.items()).clear().collect()
            columns.extend(_all_missing(empty, entities.height, nan_floats).get_columns())
            continue
        left_code, right_code = _key_codes(entities, right, entity_keys)
        unit: TimeUnit = right.schema[ts_alias].time_unit  # type: ignore[attr-defined]  # of _match_unit
        created = None
        known = None
        if created_alias:
            created = right[created_alias].to_physical().fill_null(np.iinfo(np.int64).min).to_numpy()
            if spec.as_known_at:
                known = (known_at_arrays(right[created_alias], unit), entity_ts_in(unit))
        match = match_rows(
            left_code,
            entity_ts_in(unit),
            right_code,
            right[ts_alias].to_physical().to_numpy(),
            created,
            None if spec.ttl is None else _ttl_units(spec.ttl, unit),
            known,
        )
        if two_pass:
            source_rows = right[_SOURCE_ROW].to_numpy()
            del right
            rows = np.where(match >= 0, source_rows[np.maximum(match, 0)].astype(np.int64), -1)
            fetched = fetch_rows(numbered, list(names), rows, engine, nan_floats=nan_floats)
        else:
            fetched = gather_rows(right.select(list(names)), match, nan_floats)
            del right
        columns.extend(fetched.select(pl.col(f).alias(o) for f, o in names.items()).get_columns())
    return entities.hstack(columns) if columns else entities


# --------------------------------------------------------------------------- eager join steps


def _fetch_by_index(
    spec: FeatureSourceSpec,
    numbered: pl.LazyFrame,
    entities: pl.DataFrame,
    entity_ts_in: Callable[[TimeUnit], np.ndarray],
    ts_dtype: pl.Datetime,
    features: list[str],
    engine: EngineName,
    nan_floats: bool = False,
) -> pl.DataFrame | None:
    """The winners' ``features`` found through ``spec.key_index``, in entity row order;
    ``None`` when the source has no index that serves these entity rows, or when the rows
    read back do not hold the keys and timestamps the index gave them (an index of some
    other table: the join then scans, and says so). ``entity_ts_in(unit)`` gives the
    entity timestamps as integers in ``unit``; they are matched at the finer of their
    unit and the index's (:func:`_match_unit`), as the scanning join matches them.

    Features the index keeps are taken from it; the others are read from the table by row
    number, with the key and timestamp of every row read, checked against the index. When
    the index keeps them all, the key and timestamp of the winners in one part of the
    table (the smallest holding any; the whole table without parts) are read and checked.
    """
    index = spec.key_index
    entity_keys = spec.entity_keys()
    if index is None or len(entity_keys) != 1:
        return None
    key = entities[entity_keys[0]]
    unit = _match_unit(ts_dtype.time_unit, pl.Datetime(index.time_unit))
    if not index.serves(key.dtype, unit):
        return None
    known_at = spec.as_known_at and bool(spec.created_timestamp_field)
    if known_at and index.created is None:  # an index built without created timestamps
        return None
    source_key, source_ts = spec.join_keys[0], spec.timestamp_field
    schema = numbered.collect_schema()
    _require_columns(spec.name, schema, list(dict.fromkeys([*features, source_key, source_ts])))
    ttl = None if spec.ttl is None else _ttl_units(spec.ttl, unit)
    at, pos = index.winners(key, entity_ts_in(unit), unit, ttl, known_at=known_at)
    n = entities.height
    rows, packed = index.sources(at, pos, n)
    kept = [f for f in features if index.covers(f, schema[f])]
    rest = [f for f in features if f not in kept]
    parts = spec.parts
    try:
        if not rest:  # nothing to read but the check: one part of it
            rows, packed, parts = _spot_check(rows, packed, parts)
        read = list(dict.fromkeys([*rest, source_key, source_ts]))
        fetched = fetch_rows(numbered, read, rows, engine, parts=parts, nan_floats=nan_floats)
        if not index.verify(fetched[source_key], fetched[source_ts], packed):
            raise PitJoinError("rows read back differ from the index")
    except PitJoinError:
        warnings.warn(
            f"source {spec.name!r}: its key index does not describe the table read; joined by a scan instead",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    if not kept:
        return fetched.select(features)
    where = np.full(n, -1, dtype=np.int64)
    where[at] = np.arange(len(at), dtype=np.int64)
    from_index = _place(index.values(pos, kept), where, nan_floats)
    return pl.concat([from_index, fetched.select(rest)], how="horizontal").select(features)


def _spot_check(
    rows: np.ndarray, packed: np.ndarray, parts: Sequence[SourcePart] | None
) -> tuple[np.ndarray, np.ndarray, Sequence[SourcePart] | None]:
    """``rows`` and ``packed`` cut to the rows of the smallest part holding any (``-1``
    elsewhere), and that part; unchanged without parts. Raises :class:`PitJoinError` when
    a row lies in no part (an index of a longer table)."""
    hit = rows[rows >= 0]
    if not parts or len(hit) == 0:
        return rows, packed, parts
    starts = np.array([p.start for p in parts], dtype=np.int64)  # parts are consecutive: ascending
    ends = starts + np.array([p.rows for p in parts], dtype=np.int64)
    at = np.searchsorted(starts, hit, side="right") - 1
    if (at < 0).any() or (hit >= ends[np.maximum(at, 0)]).any():
        raise PitJoinError("the index names rows the table does not have")
    winners = np.bincount(at, minlength=len(parts))
    part = min((parts[i] for i in np.flatnonzero(winners)), key=lambda p: p.rows)
    inside = (rows >= part.start) & (rows < part.start + part.rows)
    return np.where(inside, rows, -1), np.where(inside, packed, -1), [part]


def _ttl_units(ttl: timedelta, unit: TimeUnit) -> int:
    """``ttl`` in whole units of ``unit`` (floored: timestamps are whole units, so
    ``ts >= t - ttl`` holds exactly when ``ts >= t - floor(ttl)``)."""
    micros = (ttl.days * 86_400 + ttl.seconds) * 1_000_000 + ttl.microseconds
    if unit == "ns":
        return micros * 1_000
    if unit == "ms":
        return micros // 1_000
    return micros


def _key_codes(entities: pl.DataFrame, right: pl.DataFrame, entity_keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative ``int64`` codes of the join keys, equal codes iff equal keys.

    Entity rows whose key is null or does not occur among the feature rows get ``-1``.
    A single integer key is its own code (offset by the smallest feature key); any other
    key (strings, several columns, ...) is coded through a hash join on the distinct
    feature keys.
    """
    if not entity_keys:  # no join keys: one group
        return np.zeros(entities.height, dtype=np.int64), np.zeros(right.height, dtype=np.int64)
    if len(entity_keys) == 1 and right.schema[entity_keys[0]].is_integer():
        key = entity_keys[0]
        lo, hi = int(right[key].min()), int(right[key].max())  # type: ignore[arg-type]
        if hi - lo <= _INT64_MAX:
            # unsigned arithmetic for UInt64 keys above the int64 range; hi - lo fits int64
            wide, base = (np.uint64, np.uint64(lo)) if right.schema[key] == pl.UInt64 else (np.int64, np.int64(lo))
            # in polars: its allocator reuses memory where a fresh numpy array of this size
            # costs page faults
            right_values = right[key]
            if right_values.dtype == pl.UInt64:
                right_code = (right_values - lo).cast(pl.Int64).to_numpy()
            else:  # narrower types widen first: key - lo may not fit theirs
                right_code = (right_values.cast(pl.Int64) - lo).to_numpy()
            left = entities[key]
            inside = (left.is_not_null() & (left >= lo) & (left <= hi)).fill_null(False).to_numpy()
            raw = left.fill_null(lo).to_numpy().astype(wide)
            left_code = np.where(inside, (np.where(inside, raw, base) - base).astype(np.int64), -1)
            return left_code, right_code
    code = "__pit_code"
    distinct = right.select(entity_keys).unique().with_row_index(code).with_columns(pl.col(code).cast(pl.Int64))
    right_code = right.select(entity_keys).join(distinct, on=entity_keys, how="left", maintain_order="left")[code]
    left_code = entities.select(entity_keys).join(distinct, on=entity_keys, how="left", maintain_order="left")[code]
    return left_code.fill_null(-1).to_numpy(), right_code.to_numpy()


def match_rows(
    left_code: np.ndarray,
    left_ts: np.ndarray,
    right_code: np.ndarray,
    right_ts: np.ndarray,
    right_created: np.ndarray | None = None,
    ttl: int | None = None,
    known_at: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """For every left row, the index of its point-in-time right row, or ``-1``.

    Inputs are integer arrays: key codes (``>= 0``; a left code of ``-1`` never matches),
    timestamps in one unit, the right rows' created timestamps (``int64`` min for null)
    and the TTL in the same unit. The right row of left row ``i`` is, among right rows
    with the same code and ``left_ts[i] - ttl <= ts <= left_ts[i]``, one with the latest
    ``ts`` and, among those, the latest created timestamp.

    ``known_at=(right_known, left_cutoff)`` (as-known-at retrieval) also requires
    ``right_known[j] <= left_cutoff[i]``: the right rows' created timestamps and the left
    rows' timestamps as integers in one unit (``int64`` max for a null created timestamp:
    never known), see :func:`known_at_arrays`.
    """
    n_left = len(left_code)
    match = np.full(n_left, -1, dtype=np.int64)
    if n_left == 0 or len(right_code) == 0:
        return match
    left_code = np.asarray(left_code, dtype=np.int64)
    left_ts = np.asarray(left_ts, dtype=np.int64)
    right_code = np.asarray(right_code, dtype=np.int64)
    right_ts = np.asarray(right_ts, dtype=np.int64)
    if right_created is not None:
        right_created = np.asarray(right_created, dtype=np.int64)
    n_codes = int(right_code.max()) + 1

    # timestamp offsets >= 1 (0 = before every right row): exact when the span fits next
    # to the code in 63 bits (after dividing out a unit the right timestamps all share,
    # e.g. nanosecond columns holding whole microseconds), else the dense rank among all
    # timestamps (same order). The offsets only order rows; TTL checks use ``right_ts``.
    sort_ts, probe_ts = right_ts, left_ts
    t_min, t_max = int(right_ts.min()), int(right_ts.max())
    bits = (t_max - t_min + 2).bit_length()
    for divisor in (1_000, 1_000_000, 1_000_000_000):
        if (n_codes << bits) <= _INT64_MAX + 1 or (right_ts % divisor).any():
            break
        # ts <= t  <=>  ts / d <= floor(t / d)  when d divides ts
        sort_ts, probe_ts = right_ts // divisor, left_ts // divisor
        t_min, t_max = int(sort_ts.min()), int(sort_ts.max())
        bits = (t_max - t_min + 2).bit_length()
    if (n_codes << bits) > _INT64_MAX + 1 and n_codes > len(right_code):
        # sparse codes (e.g. integer keys far apart): make them dense first
        distinct, right_code = _unique_inverse(right_code)
        at = np.minimum(np.searchsorted(distinct, left_code), len(distinct) - 1)
        left_code = np.where((left_code >= 0) & (distinct[at] == left_code), at, -1)
        n_codes = len(distinct)
    # right_key = code << bits | offset
    if (n_codes << bits) <= _INT64_MAX + 1:
        # (ts - t_min + 1) + code * 2^bits: every intermediate stays inside int64 (a
        # single code when bits is 63). In polars: parallel, and no fresh pages for a
        # new array of this size
        offset = pl.col("ts") - t_min + 1
        code_part = pl.col("code") * (1 << bits) if n_codes > 1 else pl.lit(0, dtype=pl.Int64)
        right_key = (
            pl.LazyFrame({"code": right_code, "ts": sort_ts})
            .select(offset + code_part)
            .collect(engine="streaming")
            .to_series()
            .to_numpy()
        )
        left_off = np.clip(probe_ts, t_min - 1, t_max) - (t_min - 1)
    else:
        everything, _ = _unique_inverse(np.concatenate([sort_ts, probe_ts]))
        left_off = np.searchsorted(everything, probe_ts) + 1
        bits = (len(everything) + 1).bit_length()
        if (n_codes << bits) > _INT64_MAX + 1:  # pragma: no cover - needs ~2^31 keys and rows
            raise PitJoinError("too many distinct keys and timestamps for a 63-bit sort key")
        right_key = np.left_shift(right_code, bits)
        np.add(right_key, np.searchsorted(everything, sort_ts) + 1, out=right_key)
    del sort_ts, probe_ts

    if len(right_key) < 2 or bool((right_key[1:] >= right_key[:-1]).all()):
        # already in order (e.g. a table sorted by key and time): no sort at all
        perm = _order_ties(np.arange(len(right_key)), right_key, right_created)
        order_of_rows = _SortedRows(right_key, row_bits=0, shift=0, perm=perm)
    else:
        order_of_rows = _SortedRows.of(right_key, bits, n_codes, right_created)

    valid = left_code >= 0
    left_key = np.where(valid, (np.maximum(left_code, 0) << bits) | left_off, -1)
    order = _sort_order(left_key)  # sorted probes: a cache-friendly search
    probes = left_key[order]
    pos = order_of_rows.last_at_or_below(probes, right_key)
    del right_key
    found = (pos >= 0) & valid[order]
    rows = order_of_rows.rows(np.maximum(pos, 0))
    found &= right_code[rows] == left_code[order]
    t = left_ts[order]
    found &= right_ts[rows] <= t
    if known_at is not None:
        _step_back_to_known(known_at, order, left_code, right_code, right_ts, ttl, order_of_rows, pos, rows, found, t)
    if ttl is not None:
        found &= right_ts[rows] >= t - ttl
    match[order] = np.where(found, rows, -1)
    return match


def _step_back_to_known(
    known_at: tuple[np.ndarray, np.ndarray],
    order: np.ndarray,
    left_code: np.ndarray,
    right_code: np.ndarray,
    right_ts: np.ndarray,
    ttl: int | None,
    order_of_rows: _SortedRows,
    pos: np.ndarray,
    rows: np.ndarray,
    found: np.ndarray,
    t: np.ndarray,
) -> None:
    """As-known-at: moves each probe's winner (``pos``/``rows``/``found``, in probe order,
    updated in place) back along its key's rows until one was created at or before the
    entity row's cutoff. Rows of a key are in (event timestamp, created) order, so the first
    accepted row going back is the newest by event timestamp, ties by created timestamp,
    among those known at the cutoff. Each step handles only the probes still stepping: the
    work is the number of rows passed over (rows created after the entity timestamp).
    """
    right_known, left_known = known_at
    cutoff = left_known[order]
    idx = np.flatnonzero(found & (right_known[rows] > cutoff))
    codes = left_code[order]
    while len(idx):
        p = pos[idx] - 1
        r = order_of_rows.rows(np.maximum(p, 0))
        ok = (p >= 0) & (right_code[r] == codes[idx])
        if ttl is not None:  # going back only makes rows older: stop at the TTL
            ok &= right_ts[r] >= t[idx] - ttl
        pos[idx], rows[idx], found[idx] = p, r, ok
        idx = idx[ok & (right_known[r] > cutoff[idx])]


def known_at_arrays(created: pl.Series, unit: TimeUnit) -> np.ndarray:
    """Created timestamps (a Datetime column) as integers in ``unit``, for the as-known-at
    test ``created <= t`` against entity timestamps ``t`` in ``unit``: rounded up where
    ``unit`` is coarser (``created <= t`` holds exactly when ``ceil(created) <= t`` for a
    whole ``t``), ``int64`` max for a null (a row never known)."""
    assert isinstance(created.dtype, pl.Datetime)
    own = _NS_PER_UNIT[created.dtype.time_unit]
    target = _NS_PER_UNIT[unit]
    values = created.to_physical()
    if own < target:  # finer than unit: round up
        ratio = target // own
        values = -((-values) // ratio)
    elif own > target:
        values = values * (own // target)
    return values.fill_null(_INT64_MAX).to_numpy().astype(np.int64, copy=False)


def key_order(key: np.ndarray, bits: int, n_codes: int, created: np.ndarray | None = None) -> np.ndarray:
    """Positions that sort ``key`` (values ``code << bits | offset``, ``n_codes`` codes)
    ascending, equal keys by ``created`` ascending (the order a backward search needs)."""
    if len(key) < 2:
        return np.arange(len(key), dtype=np.int64)
    return _SortedRows.of(key, bits, n_codes, created).rows(np.arange(len(key), dtype=np.int64))


def _sort_order(values: np.ndarray) -> np.ndarray:
    """``np.argsort(values)`` (any order among equal values), on polars' parallel sort."""
    return pl.Series(values).arg_sort().to_numpy().astype(np.int64, copy=False)


_CHUNK = 1 << 20  # elements per slice of a pass over a long array (small temporaries)


@dataclass(frozen=True)
class _SortedRows:
    """The right rows in key order (``key = code << bits | offset``), equal keys by
    created timestamp ascending, as a backward search needs.

    ``values`` ascending: ``(key >> shift) << row_bits | row`` (the row number packed
    under a coarse key), or, with ``perm`` given, the exact sorted keys (``row_bits`` and
    ``shift`` 0). Rows of a run sharing a coarse key are put in exact order by
    ``fixed_rows`` at the positions ``fixed_at``. Nothing of length n beyond ``values``
    is kept: rows are unpacked only at the positions a search asks for.
    """

    values: np.ndarray
    row_bits: int
    shift: int
    perm: np.ndarray | None = None
    fixed_at: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    fixed_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @classmethod
    def of(cls, key: np.ndarray, bits: int, n_codes: int, created: np.ndarray | None) -> _SortedRows:
        """Sort ``key`` (values ``code << bits | offset``, ``n_codes`` codes).

        Instead of an ``argsort`` (slow: it moves indices around), the row number is
        packed into the low bits of a coarser key, ``code << (bits - shift) | offset >>
        shift``, and the packed values are sorted (a value sort, on polars' parallel
        sort); the few runs of rows sharing a coarse key (same code, offsets equal after
        the shift) are then put in exact order. Falls back to ``argsort`` when codes and
        row numbers leave too few bits.
        """
        n = len(key)
        row_bits = max(1, (n - 1).bit_length())
        code_bits = max(1, (n_codes - 1).bit_length())
        room = 63 - code_bits - row_bits  # bits left for the (shifted) offset
        if room < 8:
            perm = _argsort_order(key, created)
            return cls(key[perm], row_bits=0, shift=0, perm=perm)
        shift = max(0, bits - room)
        # (key >> shift) << row_bits | row, in polars (parallel, and its allocator reuses
        # memory where fresh numpy arrays of this size cost page faults)
        packed = (
            pl.LazyFrame({"key": key})
            .select((pl.col("key") // (1 << shift)) * (1 << row_bits) + pl.int_range(pl.len(), dtype=pl.Int64))
            .collect(engine="streaming")
            .to_series()
        )
        values = packed.sort().to_numpy()
        del packed
        sorted_rows = cls(values, row_bits=row_bits, shift=shift)
        if not shift and created is None:
            return sorted_rows  # equal coarse keys are equal keys, in any order
        at = _run_positions(values, row_bits)
        if len(at) == 0:
            return sorted_rows
        rows = sorted_rows.rows(at)
        coarse = values[at] >> row_bits
        sort_keys = (key[rows], coarse) if created is None else (created[rows], key[rows], coarse)
        return replace(sorted_rows, fixed_at=at, fixed_rows=rows[np.lexsort(sort_keys)])

    def rows(self, pos: np.ndarray) -> np.ndarray:
        """Row numbers at sorted positions ``pos``."""
        if self.perm is not None:
            return self.perm[pos]
        rows = self.values[pos] & ((1 << self.row_bits) - 1)
        if len(self.fixed_at):
            i = np.minimum(np.searchsorted(self.fixed_at, pos), len(self.fixed_at) - 1)
            rows = np.where(self.fixed_at[i] == pos, self.fixed_rows[i], rows)
        return rows

    def last_at_or_below(self, probes: np.ndarray, key: np.ndarray) -> np.ndarray:
        """For each of the ascending ``probes``, the last sorted position ``p`` whose row
        has ``key <= probe``, or ``-1``.

        Positions whose coarse key is below the probe's are all below it, so only a run
        sharing the probe's coarse key needs the exact keys (``key``, by row), found by a
        binary search inside that run.
        """
        low_mask = (1 << self.row_bits) - 1
        probe_coarse = probes >> self.shift
        hi = np.searchsorted(self.values, (probe_coarse << self.row_bits) | low_mask, side="right")
        pos = hi - 1
        if not self.shift or len(self.values) == 0:
            return pos
        coarse_at = self.values[np.maximum(pos, 0)] >> self.row_bits
        shared = np.flatnonzero((pos >= 0) & (coarse_at == probe_coarse))
        if len(shared):
            # first position in [lo, hi) whose exact key is above the probe
            lo = np.searchsorted(self.values, probe_coarse[shared] << self.row_bits, side="left")
            hi, probe = hi[shared], probes[shared]
            last = len(self.values) - 1
            while (open_ := lo < hi).any():
                mid = (lo + hi) // 2
                above = key[self.rows(np.minimum(mid, last))] > probe
                hi = np.where(open_ & above, mid, hi)
                lo = np.where(open_ & ~above, mid + 1, lo)
            pos[shared] = lo - 1
        return pos


def _argsort_order(key: np.ndarray, created: np.ndarray | None) -> np.ndarray:
    perm = np.argsort(key)
    return _order_ties(perm, key[perm], created)


def _order_ties(perm: np.ndarray, sorted_key: np.ndarray, created: np.ndarray | None) -> np.ndarray:
    """Within runs of equal ``sorted_key``, order ``perm`` by ``created`` ascending (the
    latest created last: a backward search takes the last)."""
    if created is not None:
        positions = _run_positions(sorted_key)
        if len(positions):
            rows = perm[positions]
            perm[positions] = rows[np.lexsort((created[rows], sorted_key[positions]))]
    return perm


def _run_positions(ascending: np.ndarray, shift: int = 0) -> np.ndarray:
    """Positions inside runs of equal ``ascending >> shift`` values, ascending (computed
    in slices: no temporaries as long as the array)."""
    found = []
    for start in range(0, len(ascending) - 1, _CHUNK):
        values = ascending[start : start + _CHUNK + 1] >> shift
        same = values[1:] == values[:-1]
        if same.any():
            in_run = np.zeros(len(values), dtype=bool)
            in_run[1:] |= same
            in_run[:-1] |= same
            found.append(np.flatnonzero(in_run) + start)
    if not found:
        return np.zeros(0, dtype=np.int64)
    at = np.concatenate(found)  # slices overlap by one position
    return at[np.concatenate([[True], at[1:] != at[:-1]])]


def _unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` for integer arrays, through one argsort
    (numpy 2.4's ``np.unique`` is about 100x slower than a sort on a million int64)."""
    values = np.asarray(values)
    if len(values) == 0:
        return values.copy(), np.zeros(0, dtype=np.int64)
    order = _sort_order(values)
    ordered = values[order]
    first = np.empty(len(ordered), dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(len(values), dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return ordered[first], inverse


def fetch_rows(
    numbered: pl.LazyFrame,
    columns: list[str],
    rows: np.ndarray,
    engine: EngineName = "auto",
    parts: Sequence[SourcePart] | None = None,
    nan_floats: bool = False,
) -> pl.DataFrame:
    """``columns`` of the rows of ``numbered`` (a frame with a ``__pit_source_row`` row
    number) at ``rows`` (``-1``: a row of nulls, NaN in float columns with ``nan_floats``),
    read by a scan that keeps only those row numbers (pushed into parquet/Delta scans),
    then put in the requested order.

    With ``parts`` (consecutive pieces of the source, see :class:`SourcePart`), only the
    pieces holding wanted rows are read, on as many threads as polars has, each thread
    reading its pieces one after the other (fewer buffers in flight than one scan of the
    whole source, and both cores busy).

    Raises :class:`PitJoinError` when the scan does not return exactly the rows asked for
    (a source that changed between two reads).
    """
    n = len(rows)
    hit = np.flatnonzero(rows >= 0)
    if len(hit) == 0:
        return _all_missing(numbered.select(columns).clear().collect(), n, nan_floats)
    wanted, inverse = _unique_inverse(rows[hit])
    # row numbers looked up in a mask (an array read per row, cheaper than a hash probe)
    last = int(wanted[-1])
    keep = np.zeros(last + 1, dtype=bool)
    keep[wanted] = True
    if parts:
        fetched = _fetch_parts(parts, columns, keep, engine)
    else:
        row = pl.col(_SOURCE_ROW)
        wanted_row = (row <= last) & pl.lit(pl.Series(keep)).gather(row.clip(upper_bound=last))
        fetched = numbered.filter(wanted_row).select(_SOURCE_ROW, *columns).collect(engine=engine)
    if fetched.n_chunks() > 1:  # a gather across many chunks is several times slower than a rechunk
        fetched = fetched.rechunk()
    got = fetched[_SOURCE_ROW]
    if not got.is_sorted():
        fetched = fetched.sort(_SOURCE_ROW)
        got = fetched[_SOURCE_ROW]
    if got.len() != len(wanted) or not np.array_equal(got.to_numpy(), wanted):
        raise PitJoinError("a feature source returned different rows on its second read; mark it rescannable=False")
    where = np.full(n, -1, dtype=np.int64)
    where[hit] = inverse.reshape(-1)
    return _place(fetched.drop(_SOURCE_ROW), where, nan_floats)


def _fetch_parts(parts: Sequence[SourcePart], columns: list[str], keep: np.ndarray, engine: EngineName) -> pl.DataFrame:
    """The rows of ``parts`` whose row number is set in ``keep``, numbered, in row order."""
    plans = []
    for part in parts:
        lo, hi = part.start, min(part.start + part.rows, len(keep))
        if lo >= hi or not keep[lo:hi].any():
            continue
        local = pl.lit(pl.Series(keep[lo:hi]))
        row = pl.col(_SOURCE_ROW) - lo
        plans.append(
            part.frame.with_row_index(_SOURCE_ROW, offset=lo)
            .filter((row < hi - lo) & local.gather(row.clip(upper_bound=hi - lo - 1)))
            .select(_SOURCE_ROW, *columns)
        )
    if not plans:
        raise PitJoinError("the parts of a feature source do not hold the rows asked for")
    threads = max(1, min(len(plans), pl.thread_pool_size()))
    if threads == 1:
        return pl.concat([plan.collect(engine=engine) for plan in plans])
    with ThreadPoolExecutor(threads) as pool:
        shares = list(pool.map(lambda share: [p.collect(engine=engine) for p in share], [plans[i::threads] for i in range(threads)]))
    return pl.concat([shares[i % threads][i // threads] for i in range(len(plans))])


def _place(fetched: pl.DataFrame, where: np.ndarray, nan_floats: bool = False) -> pl.DataFrame:
    """Rows of ``fetched`` at ``where`` (``-1``: nulls; NaN in float columns with
    ``nan_floats``, where nulls inside them become NaN too).

    A gather by an index without nulls, masked in the same expression: about twice as fast
    as a gather by an index holding nulls, and no second copy of the columns."""
    hit = where >= 0
    if fetched.height == 0:  # nothing to gather from: every row is missing
        return _all_missing(fetched, len(where), nan_floats)
    index = pl.Series(np.where(hit, where, 0)).cast(pl.get_index_type())
    found = pl.lit(pl.Series(hit))
    exprs = []
    for name, dtype in fetched.schema.items():
        value = pl.col(name).gather(index)
        if nan_floats and dtype.is_float():
            exprs.append(pl.when(found).then(value.fill_null(float("nan"))).otherwise(float("nan")).alias(name))
        elif hit.all():
            exprs.append(value)
        else:
            exprs.append(pl.when(found).then(value).alias(name))
    return fetched.select(exprs)


def _all_missing(frame: pl.DataFrame, n: int, nan_floats: bool) -> pl.DataFrame:
    """``n`` rows of ``frame``'s columns with every value missing: null, or NaN in float
    columns with ``nan_floats`` (what pandas shows for them)."""
    empty = frame.clear(n)
    floats = [name for name, dtype in empty.schema.items() if dtype.is_float()] if nan_floats and n else []
    return empty.with_columns(pl.col(floats).fill_null(float("nan"))) if floats else empty


def gather_rows(frame: pl.DataFrame, rows: np.ndarray, nan_floats: bool = False) -> pl.DataFrame:
    """``frame``'s rows at ``rows`` (``-1``: a row of nulls, NaN in float columns with
    ``nan_floats``), for any chunk layout.

    The rows are fetched in ascending order, chunk by chunk (a random gather over a
    multi-chunk frame is several times slower, and a rechunk copies the whole frame),
    then put in the requested order.
    """
    n = len(rows)
    hit = np.flatnonzero(rows >= 0)
    if len(hit) == 0 or frame.width == 0:
        return _all_missing(frame, n, nan_floats)
    order = np.argsort(rows[hit], kind="stable")
    wanted = rows[hit][order]
    fetched = pl.DataFrame([_gather_sorted(s, wanted) for s in frame.get_columns()])
    # position of every output row in ``fetched`` (-1: no match)
    where = np.full(n, -1, dtype=np.int64)
    where[hit[order]] = np.arange(len(wanted), dtype=np.int64)
    return _place(fetched, where, nan_floats)


def _gather_sorted(series: pl.Series, rows: np.ndarray) -> pl.Series:
    """``series[rows]`` for ascending ``rows``, gathering inside each chunk."""
    chunks = series.get_chunks()
    if len(chunks) == 1:
        return series.gather(rows)
    ends = np.cumsum([len(c) for c in chunks])
    cuts = np.searchsorted(rows, ends, side="left")
    parts, start, begin = [], 0, 0
    for chunk, end, cut in zip(chunks, ends, cuts):
        if cut > begin:
            parts.append(chunk.gather(rows[begin:cut] - start))
        start, begin = int(end), int(cut)
    out = pl.concat(parts, rechunk=True) if parts else series.clear()
    return out.rename(series.name)
