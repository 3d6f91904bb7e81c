"""Rows, bytes and files of every catalog table, per table and per partition, from the Delta log.

What the metrics exporter publishes about the lakehouse. The figures come from the add actions
of the table's current version (file sizes and the row counts delta-rs records as file
statistics), so no data file is read; only a table written without row statistics falls back to
counting rows. Pure library: no Dagster import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import polars as pl

from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.lakehouse.catalog import (
    BRONZE_EVENTS,
    SILVER_EVENTS_QUARANTINE,
    SILVER_MEDIA_METADATA,
    SILVER_MEDIA_QUARANTINE,
    Table,
)


@dataclass(frozen=True)
class PartitionStats:
    rows: int
    bytes: int
    files: int


@dataclass(frozen=True)
class TableStats:
    """One catalog table at one Delta version; ``partitions`` is keyed by the partition value(s)."""

    table: Table
    version: int
    rows: int
    bytes: int
    files: int
    last_commit_ms: int | None
    partitions: dict[str, PartitionStats] = field(default_factory=dict)


def _partition_label(values: Iterable[object]) -> str:
    return ",".join("" if v is None else str(v) for v in values)


def table_stats(lakehouse: Lakehouse, table: Table, previous: TableStats | None = None) -> TableStats | None:
    """Stats of ``table`` now, or ``None`` before its first commit.

    ``previous`` (the last result for the same table) is returned as is when the table's version
    has not moved, so a scrape of an idle lakehouse reads only the log's newest entry.
    """
    if not lakehouse.exists(table.name):
        return None
    dt = lakehouse.delta(table.name)
    version = dt.version()
    if previous is not None and previous.version == version:
        return previous
    actions = pl.DataFrame(dt.get_add_actions(flatten=True))  # an Arrow stream (arro3) under deltalake 1.x
    part_cols = [f"partition.{c}" for c in table.partition_by if f"partition.{c}" in actions.columns]
    actions = actions.with_columns([pl.col(c).cast(pl.String) for c in part_cols])
    if "num_records" not in actions.columns:
        actions = actions.with_columns(num_records=pl.lit(None, pl.Int64))
    history = dt.history(1)
    last_ms = int(history[0]["timestamp"]) if history and history[0].get("timestamp") is not None else None
    stats_complete = actions["num_records"].null_count() == 0  # vacuously true for a table without files
    by_part = (actions.group_by(part_cols) if part_cols else actions.group_by(pl.lit("").alias("_all"))).agg(
        rows=pl.col("num_records").cast(pl.Int64).sum(), bytes=pl.col("size_bytes").cast(pl.Int64).sum(), files=pl.len()
    )
    if not stats_complete:  # files written without row statistics: count the rows themselves
        by_part = by_part.drop("rows").join(_count_rows(lakehouse, table, version, part_cols),
                                            on=part_cols or ["_all"], how="left").with_columns(pl.col("rows").fill_null(0))
    partitions: dict[str, PartitionStats] = {}
    if part_cols:
        for row in by_part.iter_rows(named=True):
            label = _partition_label(row[c] for c in part_cols)
            partitions[label] = PartitionStats(int(row["rows"]), int(row["bytes"]), int(row["files"]))
    return TableStats(
        table=table,
        version=version,
        rows=int(by_part["rows"].sum()) if by_part.height else 0,
        bytes=int(actions["size_bytes"].sum()) if actions.height else 0,
        files=actions.height,
        last_commit_ms=last_ms,
        partitions=partitions,
    )


def _count_rows(lakehouse: Lakehouse, table: Table, version: int, part_cols: list[str]) -> pl.DataFrame:
    """Rows per partition (columns ``partition.<col>`` as text, ``rows``) counted from the data."""
    scan = lakehouse.scan(table.name, version=version)
    if not part_cols:
        return scan.select(pl.lit("").alias("_all"), rows=pl.len().cast(pl.Int64)).collect()
    cols = [c.removeprefix("partition.") for c in part_cols]
    counts = scan.group_by(cols).agg(rows=pl.len().cast(pl.Int64)).collect()
    return counts.select(*[pl.col(c).cast(pl.String).alias(f"partition.{c}") for c in cols], "rows")


def quarantine_ratios(stats: Mapping[str, TableStats]) -> dict[tuple[str, str], float]:
    """Share of records set aside, by ``(source, partition)``; partition ``""`` is the whole table.

    Events: quarantined records / bronze records of the same landing day (both tables are
    partitioned by ``landing_date``). Media: quarantined files / (described + quarantined) files.
    A ratio with nothing to divide by is left out.
    """
    out: dict[tuple[str, str], float] = {}
    bronze, quarantine = stats.get(BRONZE_EVENTS.name), stats.get(SILVER_EVENTS_QUARANTINE.name)
    if bronze is not None:
        q_parts = quarantine.partitions if quarantine is not None else {}
        for day, part in bronze.partitions.items():
            if part.rows:
                out[("events", day)] = (q_parts[day].rows if day in q_parts else 0) / part.rows
        if bronze.rows:
            out[("events", "")] = (quarantine.rows if quarantine is not None else 0) / bronze.rows
    described, media_q = stats.get(SILVER_MEDIA_METADATA.name), stats.get(SILVER_MEDIA_QUARANTINE.name)
    total = (described.rows if described else 0) + (media_q.rows if media_q else 0)
    if total:
        out[("media", "")] = (media_q.rows if media_q else 0) / total
    return out
