"""Specification of ``Lakehouse``: Delta writes, merges, time travel and maintenance."""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from hybrid_pipeline.lakehouse import Lakehouse, TableRef

T = "silver/events"


@pytest.fixture
def lh(tmp_path: Path) -> Lakehouse:
    return Lakehouse(str(tmp_path / "lakehouse"))


def day_rows(day: str, *values: int) -> pl.DataFrame:
    return pl.DataFrame({"event_date": [day] * len(values), "value": list(values)})


def rows(lh: Lakehouse, table: str = T, **kw: object) -> list[tuple]:
    return sorted(lh.read(table, **kw).select("event_date", "value").rows())


# -- addressing ---------------------------------------------------------------------


def test_a_table_reference_is_layer_slash_name() -> None:
    ref = TableRef.parse("/gold/daily_metrics/")

    assert ref == TableRef("gold", "daily_metrics")
    assert str(ref) == "gold/daily_metrics"
    assert TableRef.parse(ref) is ref


@pytest.mark.parametrize("bad", ["events", "/silver", "", "silver/"])
def test_a_table_reference_without_layer_and_name_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="layer/name"):
        TableRef.parse(bad)


def test_tables_and_other_paths_live_under_the_root(tmp_path: Path) -> None:
    lh = Lakehouse(str(tmp_path / "root") + "/")

    assert lh.uri("bronze/events") == f"{tmp_path}/root/bronze/events"
    assert lh.path("bronze", "media") == f"{tmp_path}/root/bronze/media"
    assert (tmp_path / "root").is_dir()


def test_an_object_store_root_is_not_created_locally() -> None:
    lh = Lakehouse("s3://bucket/lake", storage_options={"AWS_REGION": "eu-west-1"})

    assert lh.uri("gold/x") == "s3://bucket/lake/gold/x"
    assert lh.storage_options == {"AWS_REGION": "eu-west-1"}


# -- reads before the first write -----------------------------------------------------


def test_a_table_that_was_never_written_does_not_exist_and_has_no_version(lh: Lakehouse) -> None:
    assert lh.exists(T) is False
    assert lh.version(T) is None


def test_scan_or_empty_gives_an_empty_frame_of_the_schema_before_the_first_write(lh: Lakehouse) -> None:
    schema = {"event_date": pl.String(), "value": pl.Int64()}

    empty = lh.scan_or_empty(T, schema).collect()

    assert empty.height == 0
    assert empty.schema == pl.Schema(schema)


def test_scan_or_empty_reads_the_table_once_it_exists(lh: Lakehouse) -> None:
    lh.replace_where(T, day_rows("2024-01-01", 1, 2), "event_date = '2024-01-01'")

    got = lh.scan_or_empty(T, {"event_date": pl.String(), "value": pl.Int64()}).collect()

    assert sorted(got["value"].to_list()) == [1, 2]


# -- replace_where --------------------------------------------------------------------


def test_replace_where_creates_the_table_on_the_first_write(lh: Lakehouse) -> None:
    version = lh.replace_where(T, day_rows("2024-01-01", 1, 2), "event_date = '2024-01-01'", partition_by=["event_date"])

    assert version == 0
    assert lh.exists(T)
    assert rows(lh) == [("2024-01-01", 1), ("2024-01-01", 2)]
    assert lh.delta(T).metadata().partition_columns == ["event_date"]


def test_rerunning_replace_where_for_a_partition_is_idempotent(lh: Lakehouse) -> None:
    pred = "event_date = '2024-01-01'"
    lh.replace_where(T, day_rows("2024-01-01", 1, 2), pred, partition_by=["event_date"])
    lh.replace_where(T, day_rows("2024-01-01", 1, 2), pred)
    version = lh.replace_where(T, day_rows("2024-01-01", 1, 2), pred)

    assert version == 2  # each rerun is one commit
    assert rows(lh) == [("2024-01-01", 1), ("2024-01-01", 2)]


def test_replace_where_replaces_only_the_rows_its_predicate_names(lh: Lakehouse) -> None:
    lh.replace_where(T, day_rows("2024-01-01", 1, 2), "event_date = '2024-01-01'", partition_by=["event_date"])
    lh.replace_where(T, day_rows("2024-01-02", 3), "event_date = '2024-01-02'")

    lh.replace_where(T, day_rows("2024-01-01", 10), "event_date = '2024-01-01'")

    assert rows(lh) == [("2024-01-01", 10), ("2024-01-02", 3)]


def test_replace_where_refuses_rows_outside_its_predicate_and_leaves_the_table_unchanged(lh: Lakehouse) -> None:
    lh.replace_where(T, day_rows("2024-01-01", 1), "event_date = '2024-01-01'", partition_by=["event_date"])

    with pytest.raises(Exception, match="(?i)invalid data|validation"):
        lh.replace_where(T, day_rows("2024-01-02", 99), "event_date = '2024-01-01'")

    assert rows(lh) == [("2024-01-01", 1)]
    assert lh.version(T) == 0


def test_replace_where_records_custom_commit_metadata_in_the_history(lh: Lakehouse) -> None:
    lh.replace_where(T, day_rows("2024-01-01", 1), "true", commit_properties={"dagster_run_id": "r1"})
    lh.replace_where(T, day_rows("2024-01-01", 2), "true", commit_properties={"dagster_run_id": "r2"})

    history = lh.history(T)

    assert [h["version"] for h in history] == [1, 0]
    assert [h["dagster_run_id"] for h in history] == ["r2", "r1"]
    assert len(lh.history(T, limit=1)) == 1


# -- append / upsert ------------------------------------------------------------------


def test_append_adds_rows_and_returns_the_new_version(lh: Lakehouse) -> None:
    assert lh.append(T, day_rows("2024-01-01", 1), partition_by=["event_date"]) == 0
    assert lh.append(T, day_rows("2024-01-01", 1)) == 1

    assert rows(lh) == [("2024-01-01", 1), ("2024-01-01", 1)]
    assert lh.delta(T).metadata().partition_columns == ["event_date"]


def test_append_merges_a_new_column_into_the_schema(lh: Lakehouse) -> None:
    lh.append(T, day_rows("2024-01-01", 1))
    lh.append(T, day_rows("2024-01-02", 2).with_columns(pl.lit("x").alias("campaign")))

    got = lh.read(T).sort("value")

    assert got["campaign"].to_list() == [None, "x"]


def test_upsert_creates_the_table_when_it_does_not_exist(lh: Lakehouse) -> None:
    version = lh.upsert("gold/dim_user", pl.DataFrame({"user_id": ["a"], "segment": ["new"]}), keys=["user_id"])

    assert version == 0
    assert lh.read("gold/dim_user").rows() == [("a", "new")]


def test_upsert_updates_matching_keys_inserts_new_ones_and_keeps_the_rest(lh: Lakehouse) -> None:
    t = "gold/dim_user"
    lh.upsert(t, pl.DataFrame({"user_id": ["a", "b"], "segment": ["new", "new"]}), keys=["user_id"])

    version = lh.upsert(t, pl.DataFrame({"user_id": ["b", "c"], "segment": ["loyal", "casual"]}), keys=["user_id"])

    assert version == 1
    assert sorted(lh.read(t).rows()) == [("a", "new"), ("b", "loyal"), ("c", "casual")]


def test_upsert_matches_on_all_key_columns_together(lh: Lakehouse) -> None:
    t = "gold/features"
    first = pl.DataFrame({"user_id": ["a", "a"], "day": [1, 2], "score": [0.1, 0.2]})
    lh.upsert(t, first, keys=["user_id", "day"])

    lh.upsert(t, pl.DataFrame({"user_id": ["a"], "day": [2], "score": [0.9]}), keys=["user_id", "day"])

    assert sorted(lh.read(t).rows()) == [("a", 1, 0.1), ("a", 2, 0.9)]


# -- time travel ----------------------------------------------------------------------


def test_scan_at_a_version_reads_the_table_as_it_was(lh: Lakehouse) -> None:
    lh.replace_where(T, day_rows("2024-01-01", 1), "event_date = '2024-01-01'")
    lh.replace_where(T, day_rows("2024-01-01", 2), "event_date = '2024-01-01'")
    lh.append(T, day_rows("2024-01-02", 3))

    assert rows(lh, version=0) == [("2024-01-01", 1)]
    assert rows(lh, version=1) == [("2024-01-01", 2)]
    assert rows(lh) == [("2024-01-01", 2), ("2024-01-02", 3)]


def _two_versions_with_a_moment_between(lh: Lakehouse) -> datetime:
    lh.replace_where(T, day_rows("2024-01-01", 1), "true")
    time.sleep(0.05)
    between = datetime.now(timezone.utc)
    time.sleep(0.05)
    lh.replace_where(T, day_rows("2024-01-01", 2), "true")
    return between


def test_scan_as_of_a_timestamp_reads_the_version_current_at_that_time(lh: Lakehouse) -> None:
    between = _two_versions_with_a_moment_between(lh)

    assert rows(lh, as_of=between) == [("2024-01-01", 1)]
    assert rows(lh, as_of=datetime.now(timezone.utc) + timedelta(seconds=1)) == [("2024-01-01", 2)]


def test_scan_as_of_accepts_an_iso_string(lh: Lakehouse) -> None:
    between = _two_versions_with_a_moment_between(lh)

    assert rows(lh, as_of=between.isoformat()) == [("2024-01-01", 1)]


def test_scan_refuses_a_version_and_a_timestamp_together(lh: Lakehouse) -> None:
    lh.replace_where(T, day_rows("2024-01-01", 1), "true")

    with pytest.raises(ValueError, match="either version or as_of"):
        lh.scan(T, version=0, as_of=datetime.now(timezone.utc))


# -- maintenance ----------------------------------------------------------------------


def _many_small_files(lh: Lakehouse, table: str) -> list[str]:
    rng = random.Random(0)
    users = [f"u{n:03d}" for n in range(200)]
    rng.shuffle(users)
    for i in range(4):
        lh.append(table, pl.DataFrame({"user_id": users[i * 50 : (i + 1) * 50], "v": list(range(50))}))
    return users


def test_optimize_compacts_small_files_without_changing_the_data(lh: Lakehouse) -> None:
    t = "gold/user_features"
    users = _many_small_files(lh, t)

    metrics = lh.optimize(t)

    assert metrics["numFilesRemoved"] == 4
    assert metrics["numFilesAdded"] == 1
    assert len(lh.delta(t).file_uris()) == 1
    assert sorted(lh.read(t)["user_id"].to_list()) == sorted(users)
    assert lh.history(t, limit=1)[0]["operation"] == "OPTIMIZE"


def test_optimize_with_z_order_clusters_rows_on_the_z_order_column(lh: Lakehouse) -> None:
    t = "gold/user_features"
    users = _many_small_files(lh, t)

    metrics = lh.optimize(t, zorder_by=["user_id"])

    assert metrics["plannerStrategy"] == "zOrder"
    (only_file,) = lh.delta(t).file_uris()
    in_file = pl.read_parquet(only_file)["user_id"]
    assert in_file.is_sorted()
    assert sorted(in_file.to_list()) == sorted(users)


def test_vacuum_inside_the_retention_window_deletes_nothing(lh: Lakehouse) -> None:
    t = "gold/user_features"
    _many_small_files(lh, t)
    lh.optimize(t)

    assert lh.vacuum(t, retention=timedelta(days=7)) == []
    assert lh.read(t, version=0).height == 50


def test_vacuum_dry_run_lists_unreferenced_files_without_deleting_them(lh: Lakehouse) -> None:
    t = "gold/user_features"
    _many_small_files(lh, t)
    lh.optimize(t)

    listed = lh.vacuum(t, retention=timedelta(0), dry_run=True)

    assert len(listed) == 4
    assert lh.read(t, version=0).height == 50


def test_vacuum_past_retention_deletes_old_files_so_old_versions_cannot_be_read(lh: Lakehouse) -> None:
    t = "gold/user_features"
    _many_small_files(lh, t)
    lh.optimize(t)

    deleted = lh.vacuum(t, retention=timedelta(0))

    assert len(deleted) == 4
    assert lh.read(t).height == 200
    with pytest.raises(Exception):  # noqa: B017 - the error type is delta-rs/polars internal
        lh.read(t, version=0)


def test_vacuum_keeps_files_removed_within_a_sub_hour_retention(lh: Lakehouse) -> None:
    t = "gold/user_features"
    _many_small_files(lh, t)
    lh.optimize(t)  # removes 4 files just now

    assert lh.vacuum(t, retention=timedelta(minutes=30), dry_run=True) == []


def test_z_order_leaves_partition_columns_out_and_falls_back_to_compaction(lh: Lakehouse) -> None:
    t = "silver/events"
    for v in range(3):
        lh.append(t, day_rows("2024-01-01", v), partition_by=["event_date"])

    metrics = lh.optimize(t, zorder_by=["event_date"])

    assert metrics["plannerStrategy"] != "zOrder"
    assert metrics["numFilesRemoved"] == 3
    assert rows(lh, t) == [("2024-01-01", 0), ("2024-01-01", 1), ("2024-01-01", 2)]


def test_z_order_on_a_partitioned_table_clusters_on_the_other_columns(lh: Lakehouse) -> None:
    t = "silver/events"
    for v in (5, 1, 3):
        lh.append(t, pl.DataFrame({"event_date": ["2024-01-01"], "value": [v]}), partition_by=["event_date"])

    metrics = lh.optimize(t, zorder_by=["event_date", "value"])

    assert metrics["plannerStrategy"] == "zOrder"
    (only_file,) = lh.delta(t).file_uris()
    assert pl.read_parquet(only_file)["value"].to_list() == [1, 3, 5]
