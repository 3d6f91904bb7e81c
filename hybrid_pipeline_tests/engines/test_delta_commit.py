"""Spark writes Parquet, delta-rs commits: versions, time travel, replace-where, conflicts, history."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from hybrid_pipeline.lakehouse import Lakehouse

pytest.importorskip("pyspark")

from hybrid_pipeline.engines import delta_commit as dc  # noqa: E402
from hybrid_pipeline.engines.spark_session import delta_jars_configured  # noqa: E402

SCHEMA = "id long, day date, kind string, value double"
D1, D2, D3 = date(2024, 3, 1), date(2024, 3, 2), date(2024, 3, 3)


def rows_of(table: pl.DataFrame) -> list[tuple]:
    return sorted(table.select("id", "day", "kind", "value").rows())


def polars_rows(uri: str, version: int | None = None) -> list[tuple]:
    return rows_of(pl.read_delta(uri, version=version))


def frame(spark, rows: list[tuple]):
    return spark.createDataFrame(rows, SCHEMA)


def data_files(uri: str) -> set[str]:
    return {str(p.relative_to(uri)) for p in Path(uri).rglob("*.parquet")}


def live_files(uri: str) -> set[str]:
    return set(f.path for f in dc.load_snapshot(uri).files)


@pytest.fixture
def table(spark, tmp_path: Path) -> str:
    """A table made by Spark: two days, two kinds, partitioned by day (version 0)."""
    uri = str(tmp_path / "t")
    rows = [(i, D1 if i < 4 else D2, "a" if i % 2 else "b", float(i)) for i in range(8)]
    assert dc.append(frame(spark, rows), uri, partition_by=["day"]) == 0
    return uri


def test_spark_files_committed_by_delta_rs_are_a_new_table_version(spark, table: str) -> None:
    assert not delta_jars_configured(spark)  # this machine: the no-jar path
    dt = DeltaTable(table)
    assert dt.version() == 0 and dt.metadata().partition_columns == ["day"]
    assert polars_rows(table) == sorted((i, D1 if i < 4 else D2, "a" if i % 2 else "b", float(i)) for i in range(8))
    # every file on disk is in the log, named part-<uuid> under its partition directory
    assert data_files(table) == live_files(table)
    assert all(p.startswith(("day=2024-03-01/part-", "day=2024-03-02/part-")) for p in live_files(table))
    # statistics are in the log, so delta-rs can prune files on data columns
    stats = pl.from_arrow(pa.table(dt.get_add_actions(flatten=True)))
    assert stats["num_records"].sum() == 8 and stats["max.value"].max() == 7.0

    v = dc.append(frame(spark, [(100, D3, "c", 1.5)]), table)
    assert v == 1
    assert len(polars_rows(table)) == 9
    assert polars_rows(table, version=0) == polars_rows(table)[:8]  # time travel to the previous version


def test_spark_reads_a_pinned_version_through_the_log(spark, table: str) -> None:
    dc.replace_where(frame(spark, [(50, D1, "z", 0.0)]), table, "day = '2024-03-01'")
    current = dc.read_snapshot(spark, table).toArrow()
    previous = dc.read_snapshot(spark, table, version=0).toArrow()
    assert rows_of(pl.from_arrow(current)) == polars_rows(table)
    assert rows_of(pl.from_arrow(previous)) == polars_rows(table, version=0)
    # removed files are still on disk (time travel needs them) but not read
    assert data_files(table) > live_files(table)
    assert dc.read_snapshot(spark, table).schema.simpleString() == "struct<id:bigint,day:date,kind:string,value:double>"


def test_replace_where_on_a_partition_replaces_exactly_its_rows(spark, table: str) -> None:
    before = polars_rows(table)
    v = dc.replace_where(frame(spark, [(10, D1, "x", 1.0), (11, D1, "y", 2.0)]), table, "day = '2024-03-01'")
    assert v == 1
    after = polars_rows(table)
    assert after == sorted([r for r in before if r[1] != D1] + [(10, D1, "x", 1.0), (11, D1, "y", 2.0)])
    assert polars_rows(table, version=0) == before


def test_replace_where_on_a_data_column_rewrites_the_survivors_of_partly_matching_files(spark, table: str) -> None:
    before = polars_rows(table)
    files_before = live_files(table)
    v = dc.replace_where(frame(spark, [(20, D2, "a", 9.0)]), table, "kind = 'a'")
    assert v == 1
    assert polars_rows(table) == sorted([r for r in before if r[2] != "a"] + [(20, D2, "a", 9.0)])
    # both old files held kind a and b rows: both were removed and their "b" rows rewritten
    assert not (live_files(table) & files_before)
    history = DeltaTable(table).history(1)[0]
    assert history["operationParameters"]["predicate"] == "kind = 'a'" and history["readVersion"] == 0


def test_new_rows_outside_the_predicate_are_refused_and_nothing_is_left_behind(spark, table: str) -> None:
    files = data_files(table)
    with pytest.raises(ValueError, match="do not satisfy"):
        dc.replace_where(frame(spark, [(30, D2, "a", 1.0)]), table, "day = '2024-03-01'")
    assert DeltaTable(table).version() == 0
    assert data_files(table) == files  # the written files were deleted again


def test_a_concurrent_append_into_the_replaced_rows_is_a_conflict(spark, table: str) -> None:
    # writer A computed its replacement of day 1 from version 0 ...
    replacement = frame(spark, [(40, D1, "n", 0.0)])
    # ... meanwhile writer B appends a row to day 1 (delta-rs, as the polars engine does)
    write_deltalake(table, pl.DataFrame({"id": [99], "day": [D1], "kind": ["late"], "value": [0.5]}).to_arrow(), mode="append")
    assert DeltaTable(table).version() == 1
    with pytest.raises(dc.DeltaCommitConflict, match="added concurrently"):
        dc.replace_where(replacement, table, "day = '2024-03-01'", read_version=0)
    # B's row is neither lost nor silently replaced; A committed nothing
    assert DeltaTable(table).version() == 1
    assert (99, D1, "late", 0.5) in polars_rows(table)


def test_two_writers_replacing_the_same_partition_cannot_both_win(spark, table: str) -> None:
    dc.replace_where(frame(spark, [(41, D1, "first", 0.0)]), table, "day = '2024-03-01'", read_version=0)
    with pytest.raises(dc.DeltaCommitConflict, match="removed concurrently"):
        dc.replace_where(frame(spark, [(42, D1, "second", 0.0)]), table, "day = '2024-03-01'", read_version=0)
    assert [r for r in polars_rows(table) if r[1] == D1] == [(41, D1, "first", 0.0)]


def test_writes_to_other_rows_commute(spark, table: str) -> None:
    write_deltalake(table, pl.DataFrame({"id": [77], "day": [D2], "kind": ["b"], "value": [7.7]}).to_arrow(), mode="append")
    v = dc.replace_where(frame(spark, [(43, D1, "n", 0.0)]), table, "day = '2024-03-01'", read_version=0)
    assert v == 2
    assert (77, D2, "b", 7.7) in polars_rows(table) and (43, D1, "n", 0.0) in polars_rows(table)


def test_a_stale_blind_append_still_commits_on_top(spark, table: str) -> None:
    written = dc.write_files(frame(spark, [(60, D3, "c", 0.0)]), table, dc.load_snapshot(table).arrow_schema, ["day"])
    write_deltalake(table, pl.DataFrame({"id": [61], "day": [D3], "kind": ["c"], "value": [0.0]}).to_arrow(), mode="append")
    assert dc.commit_files(table, written.files) == 2
    assert {r[0] for r in polars_rows(table)} >= {60, 61}


def test_history_shows_each_operation(spark, table: str) -> None:
    dc.append(frame(spark, [(1000, D3, "c", 0.0)]), table, commit_metadata={"run_id": "r1"})
    dc.replace_where(frame(spark, [(1001, D3, "c", 0.0)]), table, "day = '2024-03-03'")
    history = DeltaTable(table).history()
    assert [h["version"] for h in history] == [2, 1, 0]
    assert [h["hybrid.operation"] for h in history] == ["replace_where", "append", "append"]
    assert history[0]["operationParameters"]["predicate"] == "day = '2024-03-03'"
    assert history[1]["run_id"] == "r1" and all(h["engine"] == "spark" for h in history)
    assert history[-1]["operation"] == "CREATE TABLE"


def test_awkward_partition_values_round_trip(spark, tmp_path: Path) -> None:
    uri = str(tmp_path / "odd")
    df = spark.createDataFrame([(1, "a b"), (2, "c/d"), (3, None), (4, "x=y%z")], "id long, p string")
    dc.append(df, uri, partition_by=["p"])
    expected = [(1, "a b"), (2, "c/d"), (3, None), (4, "x=y%z")]
    assert sorted(pl.read_delta(uri).select("id", "p").rows()) == expected
    assert sorted(pl.from_arrow(dc.read_snapshot(spark, uri).toArrow()).select("id", "p").rows()) == expected
    dc.replace_where(spark.createDataFrame([(5, "c/d")], "id long, p string"), uri, "p = 'c/d'")
    assert sorted(pl.read_delta(uri).select("id", "p").rows()) == [(1, "a b"), (3, None), (4, "x=y%z"), (5, "c/d")]


def test_spark_reads_tables_written_by_the_polars_lakehouse(spark, tmp_path: Path) -> None:
    lh = Lakehouse(str(tmp_path / "lake"))
    df = pl.DataFrame({"event_date": [D1, D1, D2], "hour": pl.Series([1, 2, 3], dtype=pl.Int8), "v": ["x", "y", "z"]})
    lh.replace_where("gold/t", df, "true", partition_by=["event_date"])
    lh.replace_where("gold/t", df.filter(pl.col("event_date") == D2).with_columns(pl.lit("w").alias("v")), "event_date = '2024-03-02'")
    slh = dc.SparkLakehouse(lh, spark)
    got = pl.from_arrow(slh.scan("gold/t").toArrow())
    assert got.schema == df.schema
    assert sorted(got.rows()) == sorted(lh.read("gold/t").rows())
    assert sorted(pl.from_arrow(slh.scan("gold/t", version=0).toArrow()).rows()) == sorted(df.rows())
    assert slh.scan("gold/t", predicate="event_date = '2024-03-01'").count() == 2


def test_tables_with_features_this_path_cannot_honour_are_refused(spark, tmp_path: Path) -> None:
    uri = str(tmp_path / "cdf")
    write_deltalake(uri, pl.DataFrame({"id": [1]}).to_arrow(), configuration={"delta.enableChangeDataFeed": "true"})
    with pytest.raises(dc.UnsupportedTableFeature):
        dc.append(spark.createDataFrame([(2,)], "id long"), uri)
    assert DeltaTable(uri).version() == 0
