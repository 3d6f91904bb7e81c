"""Point-in-time joins in pure polars.

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

Timestamps are compared as UTC instants: naive columns are taken to be UTC, aware ones
are converted. The entity timestamp column comes back as ``Datetime(<its unit>, "UTC")``.

The join is a backward ``join_asof`` by entity key. Sources stay lazy until the final
``collect``: each is projected to the key, timestamp and requested feature columns and
filtered on the entity key values and on the time window the entity rows can reach
(``[min(entity ts) - ttl, max(entity ts)]``), filters that polars pushes into parquet /
Delta scans, so a source is never read whole unless every row can matter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import polars as pl

__all__ = [
    "FeatureSourceSpec",
    "PitJoinError",
    "DEFAULT_ENTITY_TIMESTAMP_COL",
    "EngineName",
    "point_in_time_join",
    "point_in_time_join_lazy",
    "prepare_entity_frame",
    "to_utc",
]

DEFAULT_ENTITY_TIMESTAMP_COL = "event_timestamp"
EngineName = Literal["auto", "in-memory", "streaming"]
TimeUnit = Literal["ns", "us", "ms"]
_ROW_ID = "__pit_row_id"
# Above this many distinct key values the key filter is a semi-join instead of an
# ``is_in`` literal (still correct, only less pushdown).
_MAX_IN_LIST_KEYS = 2_000_000


class PitJoinError(ValueError):
    """Raised for inputs a point-in-time join cannot be defined on."""


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


def _prune_and_normalise(
    spec: FeatureSourceSpec,
    index: int,
    entities: pl.DataFrame,
    entity_timestamp_col: str,
    ts_dtype: pl.Datetime,
) -> tuple[pl.LazyFrame, str]:
    """Project, filter (pushdown-friendly) and normalise one source; returns (frame, ts alias)."""
    frame = spec.frame.lazy() if isinstance(spec.frame, pl.DataFrame) else spec.frame
    keys = list(spec.join_keys)
    entity_keys = spec.entity_keys()
    ts = spec.timestamp_field
    created = spec.created_timestamp_field or None
    features = list(spec.feature_columns)
    schema = frame.collect_schema()

    needed = [*keys, ts, *([created] if created else []), *features]
    missing = [c for c in dict.fromkeys(needed) if c not in schema]
    if missing:
        raise PitJoinError(f"source {spec.name!r} lacks columns {missing} (has {list(schema)})")
    frame = frame.select(list(dict.fromkeys(needed)))

    # ---- filters on raw columns (pushed into the scan)
    raw_ts = schema[ts]
    preds: list[pl.Expr] = [pl.col(ts).is_not_null()]
    if entities.height == 0:
        preds.append(pl.lit(False))
    elif isinstance(raw_ts, pl.Datetime):
        ts_col = entities[entity_timestamp_col]
        hi: datetime = ts_col.max()  # type: ignore[assignment]
        preds.append(pl.col(ts) <= _bound_literal(hi, raw_ts))
        if spec.ttl is not None:
            lo: datetime = ts_col.min() - spec.ttl  # type: ignore[operator, assignment]
            preds.append(pl.col(ts) >= _bound_literal(lo, raw_ts))
    semi_keys: list[tuple[str, str]] = []
    for key, ekey in zip(keys, entity_keys):
        preds.append(pl.col(key).is_not_null())
        values = entities[ekey].drop_nulls().unique()
        try:
            values = values.cast(schema[key])
        except Exception as exc:  # noqa: BLE001 - report the mismatch plainly
            raise PitJoinError(
                f"join key {key!r}: entity dtype {entities.schema[ekey]} cannot be compared with {schema[key]}"
            ) from exc
        if values.len() <= _MAX_IN_LIST_KEYS:
            if values.dtype.is_numeric() or values.dtype.is_temporal() or values.dtype == pl.String:
                if values.len():
                    preds.append(pl.col(key).is_between(pl.lit(values.min(), dtype=values.dtype), pl.lit(values.max(), dtype=values.dtype)))
            preds.append(pl.col(key).is_in(values.implode()))
        else:
            semi_keys.append((key, ekey))
    frame = frame.filter(pl.all_horizontal(preds))
    for key, ekey in semi_keys:
        frame = frame.join(
            entities.lazy().select(pl.col(ekey).cast(schema[key]).alias(key)).unique(), on=key, how="semi"
        )

    # ---- normalise: keys to the entity dtypes/names, timestamps to UTC at the entity unit
    ts_alias = f"__pit_ts_{index}"
    created_alias = f"__pit_created_{index}"
    exprs = [
        *(pl.col(k).cast(entities.schema[ek]).alias(ek) for k, ek in zip(keys, entity_keys)),
        to_utc(pl.col(ts), raw_ts, ts_dtype.time_unit).alias(ts_alias),
    ]
    if created:
        exprs.append(to_utc(pl.col(created), schema[created], ts_dtype.time_unit).alias(created_alias))
    exprs.extend(pl.col(f) for f in features)
    frame = frame.select(exprs)

    # ---- order for the asof join: within a timestamp, the largest created last (nulls first),
    # because a backward asof join takes the *last* right row whose timestamp qualifies.
    sort_cols = [ts_alias, created_alias] if created else [ts_alias]
    frame = frame.sort(sort_cols, nulls_last=False, maintain_order=True)
    if created:
        frame = frame.drop(created_alias)
    return frame, ts_alias


def point_in_time_join_lazy(
    entity_df: pl.DataFrame | pl.LazyFrame | Any,
    feature_sources: Sequence[FeatureSourceSpec],
    *,
    entity_timestamp_col: str = DEFAULT_ENTITY_TIMESTAMP_COL,
    full_feature_names: bool = False,
) -> pl.LazyFrame:
    """The plan of :func:`point_in_time_join`; entity rows are materialised (to derive the
    pushdown filters), feature sources stay lazy."""
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

    result = entities.lazy().with_row_index(_ROW_ID).sort(entity_timestamp_col, maintain_order=True)
    for index, spec in enumerate(feature_sources):
        right, ts_alias = _prune_and_normalise(spec, index, entities, entity_timestamp_col, ts_dtype)
        # private names on the right so nothing collides during the join
        private = {f: f"__pit_f_{index}_{i}" for i, f in enumerate(spec.feature_columns)}
        right = right.rename(private)
        entity_keys = spec.entity_keys()
        result = result.join_asof(
            right,
            left_on=entity_timestamp_col,
            right_on=ts_alias,
            by=entity_keys or None,
            strategy="backward",
            coalesce=False,
            check_sortedness=False,
            allow_parallel=True,
        )
        if spec.ttl is not None:
            fresh = pl.col(ts_alias) >= pl.col(entity_timestamp_col) - pl.lit(spec.ttl)
            outs = [
                pl.when(fresh).then(pl.col(p)).otherwise(None).alias(spec.output_column(f, full_feature_names))
                for f, p in private.items()
            ]
        else:
            outs = [pl.col(p).alias(spec.output_column(f, full_feature_names)) for f, p in private.items()]
        result = result.with_columns(outs).drop([ts_alias, *private.values()])

    return result.sort(_ROW_ID).drop(_ROW_ID)


def point_in_time_join(
    entity_df: pl.DataFrame | pl.LazyFrame | Any,
    feature_sources: Sequence[FeatureSourceSpec],
    *,
    entity_timestamp_col: str = DEFAULT_ENTITY_TIMESTAMP_COL,
    full_feature_names: bool = False,
    engine: EngineName = "auto",
) -> pl.DataFrame:
    """Point-in-time join of ``entity_df`` with every source in ``feature_sources``.

    Returns the entity rows (same order, same columns, duplicates kept; the timestamp
    column normalised to UTC) followed by each source's features, named
    ``feature`` or ``"<source name>__feature"`` when ``full_feature_names``.
    ``engine`` is passed to ``LazyFrame.collect`` (``"streaming"`` lowers peak memory).
    """
    return point_in_time_join_lazy(
        entity_df,
        feature_sources,
        entity_timestamp_col=entity_timestamp_col,
        full_feature_names=full_feature_names,
    ).collect(engine=engine)
