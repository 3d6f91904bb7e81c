"""Delta tables for Spark without the delta-spark jars: Spark computes, delta-rs keeps the log.

This is how Daft and Ray write Delta: the engine reads the Parquet files of a pinned snapshot and
writes new Parquet files in parallel; a single small commit on the driver makes them a table
version. Nothing here bypasses the Delta protocol:

Reads (:func:`read_snapshot`)
    delta-rs replays the log of a pinned version and lists its live files with their partition
    values (``get_add_actions``); Spark reads exactly those files (never a directory listing, so
    removed or uncommitted files are never seen) and gets the partition columns from the log
    values, not from directory names.

Writes (:func:`write_files`)
    Each Spark task writes its rows with pyarrow (``mapInArrow``) to uniquely named files
    ``<col>=<value>/part-<uuid>.parquet`` directly under the table root and returns one row of
    metadata per file (path, size, partition values, row count, min/max/null statistics). No
    ``_temporary`` directory, no rename, no output committer: a file is invisible until a commit
    adds it, which is also why this works on object stores. Files are cast to the table's Arrow
    schema by the task, so column types are those of the table (e.g. ``hour`` stays int8).

Commits (:func:`commit_files`)
    delta-rs commits the add (and remove) actions of one logical write as one atomic version
    (``DeltaTable.create_write_transaction``, or ``create_table_with_add_actions`` for a new
    table), so history, time travel and vacuum behave as for any delta-rs write.

Replace-where (:func:`replace_where`)
    The same semantics as Delta's ``replaceWhere`` and delta-rs ``write_deltalake(predicate=)``:
    rows matching the predicate are replaced by the new rows, nothing else changes. Files that
    can hold matching rows (delta-rs pruning on partition values and file statistics) are
    classified by one Spark job: fully matching files are removed, partly matching files are
    removed and their surviving rows rewritten, files without a match are left alone. New rows
    must satisfy the predicate (Delta's constraint check), else nothing is committed.

Conflicts
    delta-rs 1.6.6 only checks conflicts between its own operations; a commit of raw actions
    that removes files of a partition is NOT refused when another writer appended to that
    partition meanwhile (measured: the concurrent rows silently survive the "replace"). Commits
    therefore run an optimistic concurrency check of their own, Delta's WriteSerializable rules:
    against every version committed since the snapshot that was read, a write conflicts when a
    file it removes is gone (concurrent delete), when a new file may hold rows its predicate
    replaces (concurrent append), or when schema, partitioning or protocol changed. The commit
    itself is attempted at exactly ``latest + 1`` (``max_commit_retries=0``); if another writer
    takes that version first, the check runs again against it. Blind appends never conflict.

With delta-spark jars on the session (:func:`hybrid_pipeline.engines.spark_session.delta_jars_configured`),
:class:`SparkLakehouse` uses ``format("delta")`` instead (``versionAsOf``, ``replaceWhere``); that
path cannot run on this machine (no Maven) and is not covered by tests here.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable, Schema
from deltalake.exceptions import CommitFailedError
from deltalake.transaction import AddAction, CommitProperties, RemoveAction, create_table_with_add_actions

from hybrid_pipeline.engines.spark_session import delta_jars_configured, spark_path

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import StructType

    from hybrid_pipeline.lakehouse import Lakehouse, TableRef

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
MAX_ROWS_PER_FILE = 2_000_000
# Reader features whose files a plain Parquet read of the live files still reads correctly.
_READER_FEATURES_OK = {"timestampNtz", "vacuumProtocolCheck", "v2Checkpoint"}
# Writer features that add no obligation on a writer of plain add/remove actions
# (appendOnly is enforced by delta-rs itself: it refuses data-changing removes).
_WRITER_FEATURES_OK = {"timestampNtz", "appendOnly", "vacuumProtocolCheck", "v2Checkpoint"}
_WRITE_METADATA = (
    "path string, size long, partition_values string, modification_time long, "
    "num_records long, stats string, violations long"
)
_STAT_STRING_MAX = 256


class DeltaCommitConflict(RuntimeError):
    """A concurrent commit makes this write invalid; recompute from a fresh snapshot and retry."""


class UnsupportedTableFeature(RuntimeError):
    """The table uses a Delta feature this no-jar path cannot read or write correctly."""


# ---------------------------------------------------------------------------------------------
# snapshots
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataFile:
    """One live file of a snapshot."""

    path: str  # relative to the table root, decoded (as on storage)
    uri: str  # absolute
    size: int
    partition_values: dict[str, Any]  # typed (date, int, str, None, ...)
    num_records: int | None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def remove_action(self, deletion_timestamp: int) -> RemoveAction:
        return RemoveAction(
            self.path,  # delta-rs encodes it; an already encoded path would silently remove nothing
            True,
            deletion_timestamp,
            self.size,
            {k: partition_string(v) for k, v in self.partition_values.items()},
        )


@dataclass(frozen=True)
class Snapshot:
    """A pinned version of a table: schema, partitioning and the exact list of live files."""

    uri: str
    version: int
    schema: Schema
    partition_columns: list[str]
    files: list[DataFile]
    storage_options: dict[str, str] = field(default_factory=dict)

    @property
    def arrow_schema(self) -> pa.Schema:
        return arrow_schema_of(self.schema)

    def spark_schema(self) -> StructType:
        from pyspark.sql.types import StructType

        return StructType.fromJson(json.loads(self.schema.to_json()))

    def delta_table(self) -> DeltaTable:
        return DeltaTable(self.uri, version=self.version, storage_options=self.storage_options or None)

    def files_matching(self, predicate: str | None) -> list[DataFile]:
        """Files that may hold rows matching ``predicate`` (exact on partitions, stats otherwise).

        A predicate delta-rs cannot parse keeps every file: a superset is always safe here.
        """
        if predicate is None or predicate.strip().lower() == "true":
            return list(self.files)
        try:
            keep = set(self.delta_table().file_uris(file_pruning_predicate=predicate))
        except Exception:  # noqa: BLE001 - delta-rs raises several error types on a parse failure
            return list(self.files)
        return [f for f in self.files if f.uri in keep]


def table_root(dt: DeltaTable) -> str:
    """The table root as ``file_uris`` spells file locations (a plain path for local tables)."""
    root = dt.table_uri.rstrip("/")
    if root.startswith("file://"):
        root = unquote(root[len("file://") :])
    return root


def arrow_schema_of(schema: Schema) -> pa.Schema:
    """The Arrow schema of a Delta schema, with plain (not large or view) strings and binaries."""
    raw = pa.schema(schema.to_arrow())

    def plain(t: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return pa.string()
        if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
            return pa.binary()
        if pa.types.is_large_list(t) or pa.types.is_list_view(t) or pa.types.is_list(t):
            return pa.list_(pa.field(t.value_field.name, plain(t.value_type), t.value_field.nullable))
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, plain(f.type), f.nullable) for f in t])
        if pa.types.is_map(t):
            return pa.map_(plain(t.key_type), plain(t.item_type))
        return t

    return pa.schema([pa.field(f.name, plain(f.type), f.nullable, f.metadata) for f in raw])


def check_protocol(dt: DeltaTable, writing: bool) -> None:
    """Refuse tables whose features a plain Parquet reader/writer would get wrong."""
    proto = dt.protocol()
    readers = set(proto.reader_features or [])
    if proto.min_reader_version == 2 or readers - _READER_FEATURES_OK:
        raise UnsupportedTableFeature(
            f"{dt.table_uri}: reader protocol {proto.min_reader_version} {sorted(readers)} (e.g. deletion vectors or "
            "column mapping) needs the delta-spark jars"
        )
    if writing:
        writers = set(proto.writer_features or [])
        if proto.min_writer_version in (3, 4, 5, 6) or writers - _WRITER_FEATURES_OK:
            raise UnsupportedTableFeature(
                f"{dt.table_uri}: writer protocol {proto.min_writer_version} {sorted(writers)} (constraints, generated "
                "columns, change data feed, ...) needs the delta-spark jars"
            )


def load_snapshot(
    uri: str, version: int | None = None, storage_options: Mapping[str, str] | None = None, writing: bool = False
) -> Snapshot:
    """The live files of ``uri`` at ``version`` (latest when None), as the Delta log lists them."""
    opts = dict(storage_options or {})
    dt = DeltaTable(uri, version=version, storage_options=opts or None)
    check_protocol(dt, writing)
    partition_columns = list(dt.metadata().partition_columns)
    actions = pa.table(dt.get_add_actions(flatten=False))
    root = table_root(dt)
    files = []
    parts = actions.column("partition").to_pylist() if "partition" in actions.column_names else [None] * actions.num_rows
    for path, size, rows, pv in zip(
        actions.column("path").to_pylist(),
        actions.column("size_bytes").to_pylist(),
        actions.column("num_records").to_pylist(),
        parts,
        strict=True,
    ):
        decoded = unquote(path)  # the log stores URL-encoded paths
        files.append(
            DataFile(
                path=decoded,
                uri=decoded if "://" in decoded or decoded.startswith("/") else f"{root}/{decoded}",
                size=int(size),
                partition_values={c: (pv or {}).get(c) for c in partition_columns},
                num_records=rows,
            )
        )
    return Snapshot(uri, dt.version(), dt.schema(), partition_columns, files, opts)


# ---------------------------------------------------------------------------------------------
# reads
# ---------------------------------------------------------------------------------------------


def read_snapshot(
    spark: SparkSession,
    uri: str | Snapshot,
    version: int | None = None,
    storage_options: Mapping[str, str] | None = None,
    predicate: str | None = None,
    with_file_name: bool = False,
) -> DataFrame:
    """A Spark DataFrame of the table at a pinned version (the latest when ``version`` is None).

    ``predicate`` (SQL) prunes files through the log and then filters rows. With
    ``with_file_name`` the frame carries ``_hp_file`` (the file each row came from).
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    snap = uri if isinstance(uri, Snapshot) else load_snapshot(uri, version, storage_options)
    schema = snap.spark_schema()
    files = snap.files_matching(predicate)
    out_cols = [f.name for f in schema.fields] + (["_hp_file"] if with_file_name else [])
    if not files:
        empty_schema = StructType(schema.fields + ([StructField("_hp_file", StringType())] if with_file_name else []))
        return spark.createDataFrame([], empty_schema)
    pcols = snap.partition_columns
    data_schema = StructType([f for f in schema.fields if f.name not in pcols])
    names = [f.name for f in files]
    unique_names = len(set(names)) == len(names)

    def scan(group: Sequence[DataFile]) -> DataFrame:
        return (
            spark.read.schema(data_schema)
            .parquet(*[spark_path(f.uri) for f in group])
            .withColumn("_hp_file", F.col("_metadata.file_name"))
        )

    if not pcols:
        df = scan(files)
    elif unique_names:
        # One scan of every file; partition values joined from the log by file name (a broadcast).
        ptypes = {f.name: f.dataType for f in schema.fields if f.name in pcols}
        lookup_schema = StructType([StructField("_hp_file", StringType(), False)] + [StructField(c, ptypes[c]) for c in pcols])
        lookup = spark.createDataFrame([(f.name, *[f.partition_values[c] for c in pcols]) for f in files], lookup_schema)
        df = scan(files).join(F.broadcast(lookup), on="_hp_file", how="inner")
    else:
        # Same file name in several directories (e.g. written by Spark's own writer): one scan per
        # partition with literal values, exact whatever the directory layout.
        ptypes = {f.name: f.dataType for f in schema.fields if f.name in pcols}
        groups: dict[tuple, list[DataFile]] = {}
        for f in files:
            groups.setdefault(tuple(f.partition_values[c] for c in pcols), []).append(f)
        frames = [
            scan(group).select("*", *[F.lit(v).cast(ptypes[c]).alias(c) for c, v in zip(pcols, key, strict=True)])
            for key, group in groups.items()
        ]
        df = frames[0]
        for other in frames[1:]:
            df = df.unionByName(other)
    if predicate is not None and predicate.strip().lower() != "true":
        df = df.filter(F.expr(predicate))
    return df.select(*out_cols)


# ---------------------------------------------------------------------------------------------
# partition values, statistics, file names
# ---------------------------------------------------------------------------------------------

_HIVE_ESCAPE = set('"#%\'*/:=?\\\x7f{[]^') | {chr(c) for c in range(0x01, 0x20)}


def escape_path_name(value: str) -> str:
    """Hive/Spark escaping of a partition value in a directory name (``a/b`` -> ``a%2Fb``)."""
    return "".join(f"%{ord(ch):02X}" if ch in _HIVE_ESCAPE else ch for ch in value)


def partition_string(value: Any) -> str | None:
    """A typed partition value as the Delta log writes it (protocol: partition value serialization)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value.isoformat(sep=" ", timespec="microseconds")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def partition_dir(columns: Sequence[str], values: Sequence[Any]) -> str:
    parts = []
    for col, value in zip(columns, values, strict=True):
        text = partition_string(value)
        parts.append(f"{col}={HIVE_NULL if text is None or text == '' else escape_path_name(text)}")
    return "/".join(parts)


def _stat_value(value: Any, upper: bool) -> Any:
    """A min (``upper=False``) or max statistic as Delta's JSON stats encode it, or None to omit it."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return value if len(value) <= _STAT_STRING_MAX else None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return None  # timestamp_ntz: no stats rather than a wrong zone
        value = value.astimezone(timezone.utc)
        # Stats have millisecond precision: round the lower bound down and the upper bound up.
        floor = value.replace(microsecond=value.microsecond // 1000 * 1000)
        if upper and floor != value:
            floor += timedelta(milliseconds=1)
        return floor.strftime("%Y-%m-%dT%H:%M:%S.") + f"{floor.microsecond // 1000:03d}Z"
    if isinstance(value, date):
        return value.isoformat()
    return None


class _FileStats:
    """numRecords, minValues, maxValues and nullCount of one file, accumulated batch by batch."""

    def __init__(self, schema: pa.Schema) -> None:
        self.rows = 0
        self.cols = [
            f.name
            for f in schema
            if pa.types.is_integer(f.type)
            or pa.types.is_floating(f.type)
            or pa.types.is_string(f.type)
            or pa.types.is_boolean(f.type)
            or pa.types.is_date(f.type)
            or pa.types.is_timestamp(f.type)
        ]
        self.nulls = {f.name: 0 for f in schema}
        self.min: dict[str, Any] = {}
        self.max: dict[str, Any] = {}
        self.poisoned: set[str] = set()  # NaN seen: no min/max

    def update(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        for name in self.nulls:
            self.nulls[name] += table.column(name).null_count
        for name in self.cols:
            col = table.column(name)
            if pa.types.is_floating(col.type) and pc.any(pc.is_nan(col)).as_py():
                self.poisoned.add(name)
                continue
            mm = pc.min_max(col).as_py()
            lo, hi = mm["min"], mm["max"]
            if lo is None:
                continue
            self.min[name] = lo if name not in self.min else min(self.min[name], lo)
            self.max[name] = hi if name not in self.max else max(self.max[name], hi)

    def to_json(self) -> str:
        mins = {k: _stat_value(v, False) for k, v in self.min.items() if k not in self.poisoned}
        maxs = {k: _stat_value(v, True) for k, v in self.max.items() if k not in self.poisoned}
        return json.dumps(
            {
                "numRecords": self.rows,
                "minValues": {k: v for k, v in mins.items() if v is not None},
                "maxValues": {k: v for k, v in maxs.items() if v is not None},
                "nullCount": self.nulls,
            },
            separators=(",", ":"),
        )


def _filesystem(table_uri: str, storage_options: Mapping[str, str]) -> tuple[Any, str]:
    """A pyarrow filesystem and the table root on it (local disk, or delta-rs' object store)."""
    from hybrid_pipeline.lakehouse.storage import filesystem

    return filesystem(table_uri, storage_options)


def _join(root: str, rel: str) -> str:
    return f"{root}/{rel}" if root else rel


# ---------------------------------------------------------------------------------------------
# writes (executor side)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenFile:
    """A file a Spark task wrote and nobody has committed yet."""

    path: str  # relative, as on storage
    size: int
    partition_values: dict[str, str | None]
    modification_time: int
    num_records: int
    stats: str

    def add_action(self) -> AddAction:
        return AddAction(self.path, self.size, self.partition_values, self.modification_time, True, self.stats)


@dataclass(frozen=True)
class WriteResult:
    files: list[WrittenFile]
    violations: int  # rows that did not satisfy the replace predicate

    @property
    def rows(self) -> int:
        return sum(f.num_records for f in self.files)


def _partition_writer(
    table_uri: str,
    storage_options: dict[str, str],
    data_schema: pa.Schema,
    partition_columns: list[str],
    ok_column: str | None,
    max_rows_per_file: int,
):
    """The ``mapInArrow`` function: write a task's rows, one open file per partition value."""

    out_schema = pa.schema(
        [
            ("path", pa.string()),
            ("size", pa.int64()),
            ("partition_values", pa.string()),
            ("modification_time", pa.int64()),
            ("num_records", pa.int64()),
            ("stats", pa.string()),
            ("violations", pa.int64()),
        ]
    )

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        fs, root = _filesystem(table_uri, storage_options)
        open_files: dict[tuple, dict[str, Any]] = {}
        done: list[dict[str, Any]] = []
        violations = 0

        def close(key: tuple) -> None:
            entry = open_files.pop(key)
            entry["writer"].close()
            entry["sink"].close()
            info = fs.get_file_info(_join(root, entry["path"]))
            done.append(
                {
                    "path": entry["path"],
                    "size": info.size,
                    "partition_values": json.dumps(dict(zip(partition_columns, key, strict=True))),
                    "modification_time": int(time.time() * 1000),
                    "num_records": entry["stats"].rows,
                    "stats": entry["stats"].to_json(),
                    "violations": 0,
                }
            )

        def append(key: tuple, values: tuple, table: pa.Table) -> None:
            entry = open_files.get(key)
            if entry is None:
                prefix = partition_dir(partition_columns, values)
                rel = f"{prefix}/part-{uuid.uuid4()}.parquet" if prefix else f"part-{uuid.uuid4()}.parquet"
                if root:  # local disk: directories must exist (an unpartitioned new table has no root yet)
                    fs.create_dir(_join(root, prefix) if prefix else root, recursive=True)
                sink = fs.open_output_stream(_join(root, rel))
                entry = {
                    "path": rel,
                    "sink": sink,
                    "writer": pq.ParquetWriter(sink, data_schema, compression="snappy"),
                    "stats": _FileStats(data_schema),
                }
                open_files[key] = entry
            entry["writer"].write_table(table, row_group_size=min(max_rows_per_file, 1_000_000))
            entry["stats"].update(table)
            if entry["stats"].rows >= max_rows_per_file:
                close(key)

        for batch in batches:
            table = pa.Table.from_batches([batch])
            if ok_column is not None:
                ok = pc.fill_null(table.column(ok_column), False)
                violations += table.num_rows - int(pc.sum(pc.cast(ok, pa.int64())).as_py() or 0)
                table = table.drop_columns([ok_column])
            if table.num_rows == 0:
                continue
            if not partition_columns:
                append((), (), table.select(data_schema.names).cast(data_schema))
                continue
            keys = table.select(partition_columns).group_by(partition_columns, use_threads=False).aggregate([])
            for values in keys.to_pylist():
                mask = None
                for col in partition_columns:
                    v = values[col]
                    m = pc.is_null(table.column(col)) if v is None else pc.fill_null(pc.equal(table.column(col), v), False)
                    mask = m if mask is None else pc.and_(mask, m)
                part = table.filter(mask).select(data_schema.names).cast(data_schema)
                typed = tuple(values[c] for c in partition_columns)
                key = tuple(partition_string(v) for v in typed)
                append(key, typed, part)
        for key in list(open_files):
            close(key)
        if violations:
            done.append(
                {
                    "path": None,
                    "size": 0,
                    "partition_values": "{}",
                    "modification_time": 0,
                    "num_records": 0,
                    "stats": "",
                    "violations": violations,
                }
            )
        if done:
            yield pa.RecordBatch.from_pylist(done, schema=out_schema)

    return write


def write_files(
    df: DataFrame,
    uri: str,
    table_schema: pa.Schema,
    partition_by: Sequence[str] = (),
    storage_options: Mapping[str, str] | None = None,
    ok_column: str | None = None,
    max_rows_per_file: int = MAX_ROWS_PER_FILE,
) -> WriteResult:
    """Write ``df`` as Parquet files under the table root, in parallel, without committing them.

    ``table_schema`` is the table's full Arrow schema (partition columns included); each file
    holds the non-partition columns cast to it. ``ok_column`` names a boolean column that is
    counted (false or null = a violation) and not written.
    """
    partition_by = list(partition_by)
    data_schema = pa.schema([f for f in table_schema if f.name not in partition_by])
    missing = [n for n in table_schema.names if n not in df.columns]
    if missing:
        raise ValueError(f"frame lacks table columns {missing}")
    keep = table_schema.names + ([ok_column] if ok_column else [])
    fn = _partition_writer(uri, dict(storage_options or {}), data_schema, partition_by, ok_column, max_rows_per_file)
    rows = df.select(*keep).mapInArrow(fn, _WRITE_METADATA).collect()
    files, violations = [], 0
    for r in rows:
        violations += r["violations"]
        if r["path"] is None:
            continue
        files.append(
            WrittenFile(
                path=r["path"],
                size=r["size"],
                partition_values=json.loads(r["partition_values"]),
                modification_time=r["modification_time"],
                num_records=r["num_records"],
                stats=r["stats"],
            )
        )
    return WriteResult(files, violations)


def delete_files(uri: str, files: Sequence[WrittenFile], storage_options: Mapping[str, str] | None = None) -> None:
    """Best-effort removal of written but uncommitted files (vacuum would remove them later too)."""
    fs, root = _filesystem(uri, dict(storage_options or {}))
    for f in files:
        try:
            fs.delete_file(_join(root, f.path))
        except Exception:  # noqa: BLE001, S112 - best effort
            continue


# ---------------------------------------------------------------------------------------------
# commits
# ---------------------------------------------------------------------------------------------


def _custom_metadata(
    operation: str, predicate: str | None, read_version: int | None, extra: Mapping[str, str] | None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"engine": "spark", "hybrid.operation": operation}
    params: dict[str, str] = {}
    if predicate is not None:
        params["predicate"] = predicate
    if params:
        meta["operationParameters"] = params
    if read_version is not None:
        meta["readVersion"] = int(read_version)
    meta["isolationLevel"] = "WriteSerializable"
    meta.update(extra or {})
    return meta


def find_conflicts(
    read: Snapshot, latest: DeltaTable, removes: Sequence[DataFile], predicate: str | None
) -> list[str]:
    """Why committing on top of ``latest`` would break a write computed from ``read`` (empty: fine)."""
    if latest.version() == read.version:
        return []
    problems = []
    if latest.schema().to_json() != read.schema.to_json():
        problems.append("schema changed concurrently")
    if list(latest.metadata().partition_columns) != read.partition_columns:
        problems.append("partitioning changed concurrently")
    try:
        check_protocol(latest, writing=True)
    except UnsupportedTableFeature as exc:
        problems.append(f"protocol changed concurrently: {exc}")
    live_paths = {unquote(p) for p in pa.table(latest.get_add_actions(flatten=False)).column("path").to_pylist()}
    gone = [f.path for f in removes if f.path not in live_paths]
    if gone:
        problems.append(f"{len(gone)} file(s) this write replaces were removed concurrently, e.g. {gone[0]}")
    if predicate is not None:
        before = {f.path for f in read.files}
        new = live_paths - before
        if new:
            latest_snap = Snapshot(
                read.uri,
                latest.version(),
                latest.schema(),
                list(latest.metadata().partition_columns),
                [DataFile(p, "", 0, {}, None) for p in sorted(live_paths)],
                read.storage_options,
            )
            matching = _paths_matching(latest, latest_snap, predicate)
            hits = sorted(new & matching)
            if hits:
                problems.append(
                    f"{len(hits)} file(s) with rows matching {predicate!r} were added concurrently, e.g. {hits[0]}"
                )
    return problems


def _paths_matching(dt: DeltaTable, snap: Snapshot, predicate: str) -> set[str]:
    if predicate.strip().lower() == "true":
        return {f.path for f in snap.files}
    root = table_root(dt)
    try:
        uris = dt.file_uris(file_pruning_predicate=predicate)
    except Exception:  # noqa: BLE001 - unparseable for delta-rs: every file may match
        return {f.path for f in snap.files}
    return {u[len(root) + 1 :] if u.startswith(root + "/") else u for u in uris}


def commit_files(
    uri: str,
    adds: Sequence[WrittenFile],
    removes: Sequence[DataFile] = (),
    *,
    read: Snapshot | None = None,
    predicate: str | None = None,
    table_schema: pa.Schema | None = None,
    partition_by: Sequence[str] = (),
    storage_options: Mapping[str, str] | None = None,
    operation: str = "append",
    commit_metadata: Mapping[str, str] | None = None,
    max_attempts: int = 20,
) -> int:
    """Commit written files (and removals) as one new table version; returns that version.

    ``read`` is the snapshot the write was computed from; without it the write is a blind append
    (no removes allowed). Raises :class:`DeltaCommitConflict` when a concurrent commit conflicts.
    """
    opts = dict(storage_options or {})
    if removes and read is None:
        raise ValueError("removing files needs the snapshot they were read from")
    meta = _custom_metadata(operation, predicate, read.version if read else None, commit_metadata)
    if read is None and not DeltaTable.is_deltatable(uri, storage_options=opts or None):
        if table_schema is None:
            raise ValueError("creating a table needs its schema")
        try:
            create_table_with_add_actions(
                uri,
                Schema.from_arrow(table_schema),
                [f.add_action() for f in adds],
                mode="error",
                partition_by=list(partition_by) or None,
                storage_options=opts or None,
                commit_properties=CommitProperties(custom_metadata=meta),
            )
        except Exception as exc:  # noqa: BLE001 - created concurrently: append instead
            if not DeltaTable.is_deltatable(uri, storage_options=opts or None):
                raise
            if "exist" not in str(exc).lower():
                raise
        else:
            return DeltaTable(uri, storage_options=opts or None).version()
    now = int(time.time() * 1000)
    actions: list[AddAction | RemoveAction] = [f.add_action() for f in adds] + [f.remove_action(now) for f in removes]
    for _ in range(max_attempts):
        latest = DeltaTable(uri, storage_options=opts or None)
        check_protocol(latest, writing=True)
        if read is not None:
            problems = find_conflicts(read, latest, removes, predicate)
            if problems:
                raise DeltaCommitConflict(f"{uri}: " + "; ".join(problems))
        version = latest.version()
        try:
            latest.create_write_transaction(
                actions,
                mode="append",
                schema=latest.schema(),
                partition_by=list(latest.metadata().partition_columns) or None,
                commit_properties=CommitProperties(custom_metadata=meta, max_commit_retries=0),
            )
        except CommitFailedError as exc:
            # With no retries, a commit that finds its version taken fails; any other failure
            # is delta-rs' own conflict detection.
            if DeltaTable(uri, storage_options=opts or None).version() > version:
                continue  # another writer took the version: check against it and try on top
            raise DeltaCommitConflict(f"{uri}: {exc}") from exc
        return version + 1
    raise DeltaCommitConflict(f"{uri}: gave up after {max_attempts} attempts (version keeps moving)")


# ---------------------------------------------------------------------------------------------
# write operations
# ---------------------------------------------------------------------------------------------


def _nullable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, f.type, True, f.metadata) for f in schema])


def spark_to_arrow_schema(struct: StructType) -> pa.Schema:
    """Arrow schema of a Spark schema through Delta's (identical) JSON schema format; all nullable."""
    return _nullable(arrow_schema_of(Schema.from_json(struct.json())))


def append(
    df: DataFrame,
    uri: str,
    partition_by: Sequence[str] | None = None,
    storage_options: Mapping[str, str] | None = None,
    commit_metadata: Mapping[str, str] | None = None,
) -> int:
    """Append the rows of ``df`` (creating the table, partitioned by ``partition_by``, if needed)."""
    opts = dict(storage_options or {})
    if DeltaTable.is_deltatable(uri, storage_options=opts or None):
        snap = load_snapshot(uri, storage_options=opts, writing=True)
        schema, pcols = snap.arrow_schema, snap.partition_columns
    else:
        schema, pcols = spark_to_arrow_schema(df.schema), list(partition_by or [])
    written = write_files(df, uri, schema, pcols, opts)
    try:
        return commit_files(
            uri, written.files, table_schema=schema, partition_by=pcols, storage_options=opts,
            operation="append", commit_metadata=commit_metadata,
        )
    except BaseException:
        delete_files(uri, written.files, opts)
        raise


def replace_where(
    df: DataFrame,
    uri: str,
    predicate: str,
    partition_by: Sequence[str] | None = None,
    storage_options: Mapping[str, str] | None = None,
    read_version: int | None = None,
    commit_metadata: Mapping[str, str] | None = None,
    check_predicate: bool = True,
) -> int:
    """Atomically replace the rows matching ``predicate`` with the rows of ``df``; returns the version.

    ``read_version`` pins the snapshot whose rows are replaced (default: the latest now); any
    conflicting commit after it makes this raise :class:`DeltaCommitConflict`, nothing is lost.
    A new table is created (partitioned by ``partition_by``) when ``uri`` holds none, as
    :meth:`hybrid_pipeline.lakehouse.Lakehouse.replace_where` does.
    """
    from pyspark.sql import functions as F

    opts = dict(storage_options or {})
    if not DeltaTable.is_deltatable(uri, storage_options=opts or None):
        return append(df, uri, partition_by=partition_by, storage_options=opts, commit_metadata=commit_metadata)
    spark = df.sparkSession
    snap = load_snapshot(uri, read_version, opts, writing=True)
    schema, pcols = snap.arrow_schema, snap.partition_columns
    match: Column = F.coalesce(F.expr(predicate), F.lit(False))

    # 1. which candidate files hold matching rows, and are they entirely matching?
    candidates = snap.files_matching(predicate)
    full: list[DataFile] = []
    partial: list[DataFile] = []
    if candidates:
        sub = Snapshot(snap.uri, snap.version, snap.schema, pcols, candidates, opts)
        counts = (
            read_snapshot(spark, sub, with_file_name=True)
            .groupBy("_hp_file")
            .agg(F.count(F.lit(1)).alias("n"), F.sum(match.cast("long")).alias("hit"))
            .collect()
        )
        by_name = {r["_hp_file"]: (r["n"], r["hit"] or 0) for r in counts}
        for f in candidates:
            n, hit = by_name.get(f.name, (0, 0))
            if n == 0 or hit == n:
                full.append(f)  # an empty file matches vacuously; removing it loses nothing
            elif hit:
                partial.append(f)

    # 2. new rows (checked against the predicate) and the survivors of partly matching files.
    ok = "_hp_ok"
    new_df = df.withColumn(ok, match) if check_predicate else df
    written = write_files(new_df, uri, schema, pcols, opts, ok_column=ok if check_predicate else None)
    files = list(written.files)
    try:
        if written.violations:
            raise ValueError(
                f"{written.violations} new row(s) do not satisfy the replace predicate {predicate!r}; nothing committed"
            )
        if partial:
            sub = Snapshot(snap.uri, snap.version, snap.schema, pcols, partial, opts)
            survivors = read_snapshot(spark, sub).filter(~match)
            files += write_files(survivors, uri, schema, pcols, opts).files
        return commit_files(
            uri, files, [*full, *partial], read=snap, predicate=predicate, storage_options=opts,
            operation="replace_where", commit_metadata=commit_metadata,
        )
    except BaseException:
        delete_files(uri, files, opts)
        raise


# ---------------------------------------------------------------------------------------------
# the lakehouse, seen from Spark
# ---------------------------------------------------------------------------------------------


class SparkLakehouse:
    """:class:`~hybrid_pipeline.lakehouse.Lakehouse` for Spark frames: same tables, same semantics.

    Reads return Spark DataFrames of a pinned version; writes are one Delta commit each. Uses
    ``format("delta")`` when the session has the delta-spark jars (``use_delta_jars=None``
    decides from the session), the no-jar path of this module otherwise. Versions, history and
    existence always come from delta-rs (it reads tables written either way).
    """

    def __init__(self, lakehouse: Lakehouse, spark: SparkSession, use_delta_jars: bool | None = None) -> None:
        self.lakehouse = lakehouse
        self.spark = spark
        self.use_delta_jars = delta_jars_configured(spark) if use_delta_jars is None else use_delta_jars

    @property
    def storage_options(self) -> dict[str, str]:
        return self.lakehouse.storage_options

    def uri(self, table: str | TableRef) -> str:
        return self.lakehouse.uri(table)

    def exists(self, table: str | TableRef) -> bool:
        return self.lakehouse.exists(table)

    def version(self, table: str | TableRef) -> int | None:
        return self.lakehouse.version(table)

    def history(self, table: str | TableRef, limit: int | None = None) -> list[dict[str, Any]]:
        return self.lakehouse.history(table, limit)

    def scan(self, table: str | TableRef, version: int | None = None, predicate: str | None = None) -> DataFrame:
        from pyspark.sql import functions as F

        if self.use_delta_jars:
            reader = self.spark.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", version)
            df = reader.load(spark_path(self.uri(table)))
            return df.filter(F.expr(predicate)) if predicate else df
        return read_snapshot(self.spark, self.uri(table), version, self.storage_options, predicate=predicate)

    def append(
        self, table: str | TableRef, df: DataFrame, partition_by: list[str] | None = None,
        commit_properties: dict[str, str] | None = None,
    ) -> int:
        if self.use_delta_jars:
            writer = df.write.format("delta").mode("append")
            if partition_by and not self.exists(table):
                writer = writer.partitionBy(*partition_by)
            if commit_properties:
                writer = writer.option("userMetadata", json.dumps(commit_properties))
            writer.save(spark_path(self.uri(table)))
            return int(self.lakehouse.version(table))
        return append(df, self.uri(table), partition_by, self.storage_options, commit_properties)

    def replace_where(
        self, table: str | TableRef, df: DataFrame, predicate: str, partition_by: list[str] | None = None,
        commit_properties: dict[str, str] | None = None, read_version: int | None = None,
    ) -> int:
        if self.use_delta_jars:
            writer = df.write.format("delta")
            if self.exists(table):
                writer = writer.mode("overwrite").option("replaceWhere", predicate)
            else:
                writer = writer.mode("append")
                if partition_by:
                    writer = writer.partitionBy(*partition_by)
            if commit_properties:
                writer = writer.option("userMetadata", json.dumps(commit_properties))
            writer.save(spark_path(self.uri(table)))
            return int(self.lakehouse.version(table))
        return replace_where(
            df, self.uri(table), predicate, partition_by, self.storage_options, read_version, commit_properties
        )
