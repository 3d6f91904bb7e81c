"""The event_id index answers exactly what a scan of silver answers, and never answers from a
stale state: behind silver it catches up from the commit log, and anything it cannot explain
rebuilds it. On a local root and on an S3 endpoint alike."""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from hybrid_pipeline.engines.compute import PolarsEngine
from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.lakehouse.event_index import LINEAGE_SCHEMA, EventIndex
from hybrid_pipeline.sources.generator import GeneratorConfig, generate
from hybrid_pipeline.sources.landing import collect_landing
from hybrid_pipeline.transforms import quality

SILVER = "silver/events"
DAYS = ["2024-01-01", "2024-01-02", "2024-01-03"]


def _land(root: Path, lh: Lakehouse) -> None:
    landing = root / "landing"
    generate(GeneratorConfig(days=3, events_per_day=400, seed=5, dirty_rate=0.1, start_date=date(2024, 1, 1)), landing)
    for day in DAYS:
        batch = collect_landing(landing, day, {}, datetime(2024, 6, 1, tzinfo=timezone.utc))
        lh.append("bronze/events", batch.records, partition_by=["landing_date"])


def _scan_answer(lh: Lakehouse, ids: pl.Series, day: str) -> pl.DataFrame:
    return (
        lh.read(SILVER)
        .filter((pl.col("landing_date") != day) & pl.col("event_id").is_in(ids.implode()))
        .select(list(LINEAGE_SCHEMA))
        .sort("event_id", "landing_date")
    )


def _assert_index_answers_like_a_scan(lh: Lakehouse) -> None:
    index = EventIndex(lh).current()
    assert index.version == lh.version(SILVER)
    everything = lh.read(SILVER)
    assert index.rows() == everything.height
    for day in DAYS:
        # the day's own ids, every id of silver, and ids nobody stores
        ids = pl.concat([everything["event_id"], pl.Series(["never-stored-1", "never-stored-2"])])
        got = index.lookup(ids, exclude_day=day).sort("event_id", "landing_date")
        assert got.equals(_scan_answer(lh, ids, day))


@pytest.fixture
def lake(tmp_path: Path) -> Lakehouse:
    lh = Lakehouse(str(tmp_path / "lake"))
    _land(tmp_path, lh)
    return lh


def test_the_silver_step_keeps_the_index_at_silvers_version(lake: Lakehouse) -> None:
    engine = PolarsEngine()
    for day in DAYS:
        engine.write_silver(lake, day, "salt")
        index = EventIndex(lake).current()
        assert index.last_refresh.action == "fresh"  # recorded by the step itself, nothing to catch up
    _assert_index_answers_like_a_scan(lake)


def test_cross_day_duplicates_are_found_through_the_index(lake: Lakehouse) -> None:
    engine = PolarsEngine()
    written = [engine.write_silver(lake, day, "salt") for day in DAYS]
    # the generator repeats earlier days' ids on later days: those are duplicates of the earlier record
    dups = lake.read("silver/events_duplicates").filter(pl.col("kept_landing_date") != pl.col("landing_date"))
    assert dups.height > 0
    assert sum(w.rows["duplicates"] for w in written) == lake.read("silver/events_duplicates").height
    assert lake.read(SILVER)["event_id"].is_unique().all()


def test_a_crash_between_the_silver_commit_and_the_index_update_is_caught_up(
    lake: Lakehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = PolarsEngine()
    engine.write_silver(lake, DAYS[0], "salt")
    with monkeypatch.context() as m:
        m.setattr(EventIndex, "record", lambda self, *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
        with pytest.raises(RuntimeError, match="killed"):
            engine.write_silver(lake, DAYS[1], "salt")
    index = EventIndex(lake).current()
    assert index.last_refresh.action == "caught_up" and index.last_refresh.days == (DAYS[1],)
    _assert_index_answers_like_a_scan(lake)
    engine.write_silver(lake, DAYS[2], "salt")  # and the next day dedups against the caught-up index
    _assert_index_answers_like_a_scan(lake)
    assert lake.read(SILVER)["event_id"].is_unique().all()


def test_a_write_that_does_not_name_its_days_is_caught_up_from_its_files_and_the_check_sees_it(lake: Lakehouse) -> None:
    engine = PolarsEngine()
    for day in DAYS[:2]:
        engine.write_silver(lake, day, "salt")
    EventIndex(lake).current()
    # another writer copies a day-1 event into day 2 without saying which days it changed
    stolen = lake.read(SILVER).filter(pl.col("landing_date") == DAYS[0]).head(1).with_columns(
        pl.lit(DAYS[1]).alias("landing_date"), pl.lit("other.jsonl").alias("source_file")
    )
    lake.append(SILVER, stolen)
    index = EventIndex(lake).current()
    # explained by the file it added: day 2 is re-read, day 1 is not
    assert index.last_refresh.action == "caught_up" and index.last_refresh.days == (DAYS[1],)
    day_ids = lake.read(SILVER).filter(pl.col("landing_date") == DAYS[1])["event_id"]
    outcome = quality.event_ids_unique(day_ids.to_frame().lazy(), index.lookup(day_ids, exclude_day=DAYS[1]).lazy())
    assert not outcome.passed and outcome.metadata["sample"] == stolen["event_id"].to_list()
    _assert_index_answers_like_a_scan(lake)


def test_a_missing_or_unreadable_manifest_rebuilds_the_index(lake: Lakehouse, tmp_path: Path) -> None:
    engine = PolarsEngine()
    for day in DAYS:
        engine.write_silver(lake, day, "salt")
    manifest = tmp_path / "lake" / "_index" / "silver" / "events" / "manifest.parquet"
    manifest.write_text("not parquet")
    assert EventIndex(lake).current().last_refresh.action == "rebuilt"
    manifest.unlink()
    assert EventIndex(lake).current().last_refresh.action == "rebuilt"
    _assert_index_answers_like_a_scan(lake)


def test_maintenance_commits_leave_the_index_valid(lake: Lakehouse) -> None:
    engine = PolarsEngine()
    for day in DAYS:
        engine.write_silver(lake, day, "salt")
    lake.optimize(SILVER)
    index = EventIndex(lake).current()
    assert index.last_refresh.action in {"fresh", "caught_up"}
    _assert_index_answers_like_a_scan(lake)


def test_a_hash_collision_is_only_a_candidate(lake: Lakehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    from hybrid_pipeline.lakehouse import event_index

    engine = PolarsEngine()
    for day in DAYS[:2]:
        engine.write_silver(lake, day, "salt")
    # every id hashes to one value: each lookup meets every stored id as a candidate
    monkeypatch.setattr(event_index, "id_hashes", lambda ids: pl.Series("h", [7] * len(ids), pl.UInt64))
    monkeypatch.setattr(event_index, "HASHER", "constant-for-the-test")
    index = EventIndex(lake).current()
    assert index.last_refresh.action == "rebuilt"  # another hash: not trusted
    assert index.lookup(pl.Series(["never-stored"]), exclude_day=DAYS[1]).is_empty()
    _assert_index_answers_like_a_scan(lake)


@pytest.mark.integration
def test_the_index_lives_beside_silver_on_object_storage(tmp_path: Path) -> None:
    from hybrid_pipeline_tests.lakehouse.s3_emulator import s3_emulator

    with s3_emulator() as s3:
        bucket = s3.new_bucket()
        lh = Lakehouse(f"s3://{bucket}/lake", storage_options=s3.env())
        _land(tmp_path, lh)
        engine = PolarsEngine()
        for day in DAYS:
            engine.write_silver(lh, day, "salt")
        assert any(k.startswith("lake/_index/silver/events/days/") for k in s3.keys(bucket))
        assert "lake/_index/silver/events/manifest.parquet" in s3.keys(bucket)
        assert not (tmp_path / "lake").exists()
        _assert_index_answers_like_a_scan(lh)


def test_lookups_read_only_the_row_groups_holding_a_hit_and_miss_nothing(
    lake: Lakehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hybrid_pipeline.lakehouse import event_index

    monkeypatch.setattr(event_index, "ROW_GROUP_ROWS", 50)  # many row groups per day file
    engine = PolarsEngine()
    for day in DAYS:
        engine.write_silver(lake, day, "salt")
    index = EventIndex(lake).current()
    files = [index._path("days", name) for name in index.manifest.days.values()]
    assert all(pq.ParquetFile(f, filesystem=index.fs).num_row_groups > 5 for f in files)
    _assert_index_answers_like_a_scan(lake)
    stored = lake.read(SILVER)
    for day in DAYS:
        some = stored.filter(pl.col("landing_date") != day).sample(3, seed=1)["event_id"]
        assert sorted(index.lookup(some, exclude_day=day)["event_id"].to_list()) == sorted(some.to_list())


def test_changed_files_without_landing_day_statistics_rebuild_the_index(lake: Lakehouse) -> None:
    from deltalake import write_deltalake

    engine = PolarsEngine()
    for day in DAYS[:2]:
        engine.write_silver(lake, day, "salt")
    EventIndex(lake).current()
    extra = lake.read(SILVER).head(0)  # an empty commit of a file without statistics for any column
    write_deltalake(lake.uri(SILVER), extra.to_arrow(), mode="append",
                    configuration=None, writer_properties=None)
    index = EventIndex(lake).current()
    assert index.last_refresh.action in {"fresh", "caught_up", "rebuilt"}
    _assert_index_answers_like_a_scan(lake)
