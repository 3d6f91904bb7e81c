"""End to end: generated days with dirt -> bronze -> silver -> gold analytics, through Dagster."""

from __future__ import annotations

import hashlib
import hmac
import shutil
from datetime import date

import polars as pl
import pytest

from hybrid_pipeline.cli import materialize
from hybrid_pipeline.sources.generator import GeneratorConfig, generate
from hybrid_pipeline.sources.landing import landed_dates
from hybrid_pipeline_tests.conftest import TEST_SALT, make_env

pytestmark = pytest.mark.integration

DAYS = 7  # days 5 and 6 land as CSV and Parquet
GOLD_TABLES = ["gold/daily_metrics", "gold/fact_events", "gold/user_landing_summary", "gold/dim_user", "gold/dim_date"]
SILVER_TABLES = ["silver/events", "silver/events_quarantine", "silver/events_duplicates"]


def _snapshot(lh, tables):
    out = {}
    for t in tables:
        df = lh.read(t)
        out[t] = df.sort(df.columns)
    return out


@pytest.fixture(scope="module")
def lakehouse_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    with pytest.MonkeyPatch.context() as mp:
        env = make_env(root, mp)
        generate(
            GeneratorConfig(days=DAYS, events_per_day=1500, seed=7, dirty_rate=0.05, start_date=date(2024, 1, 1)),
            env.landing,
        )
        events = env.landing / "events"
        # Re-drop day 1's file renamed into day 3, and land two unreadable files on day 2.
        shutil.copy(events / "2024-01-01" / "events-0000.jsonl", events / "2024-01-03" / "renamed-copy.jsonl")
        (events / "2024-01-02" / "garbage.jsonl").write_bytes(bytes(range(256)) * 8)
        (events / "2024-01-02" / "empty.csv").write_bytes(b"")
        from dagster import instance_for_test

        with instance_for_test() as instance:
            first = materialize(landed_dates(env.landing), instance=instance, daily_only=True)
            snap_first = _snapshot(env.lakehouse, SILVER_TABLES + GOLD_TABLES)
            bronze_rows_first = env.lakehouse.read("bronze/events").height
            rerun = materialize(landed_dates(env.landing), instance=instance, daily_only=True)
            yield env, first, rerun, snap_first, bronze_rows_first


def test_every_landing_day_materializes_with_all_checks_passing(lakehouse_run):
    _, first, _, _, _ = lakehouse_run
    assert [s.partition for s in first] == [f"2024-01-0{i}" for i in range(1, DAYS + 1)]
    for s in first:
        assert s.ok, (s.partition, s.failed_steps, [c for c in s.checks if not c[1]])
        assert len(s.checks) == 7


def test_rows_are_conserved_for_every_landing_day(lakehouse_run):
    env, *_ = lakehouse_run
    lh = env.lakehouse
    counts = {
        t: lh.read(t).group_by("landing_date").len().rename({"len": t})
        for t in ["bronze/events", *SILVER_TABLES]
    }
    joined = counts["bronze/events"]
    for t in SILVER_TABLES:
        joined = joined.join(counts[t], on="landing_date", how="left")
    joined = joined.fill_null(0)
    assert joined.height == DAYS
    assert (
        joined["bronze/events"]
        == joined["silver/events"] + joined["silver/events_quarantine"] + joined["silver/events_duplicates"]
    ).all()
    assert joined["silver/events_quarantine"].min() > 0 and joined["silver/events_duplicates"].min() > 0


def test_event_ids_are_unique_across_days_and_cross_day_duplicates_point_at_the_earlier_day(lakehouse_run):
    env, *_ = lakehouse_run
    silver = env.lakehouse.read("silver/events")
    assert silver["event_id"].n_unique() == silver.height
    dups = env.lakehouse.read("silver/events_duplicates")
    cross = dups.filter(pl.col("kept_landing_date") < pl.col("landing_date"))
    assert cross.height > 0
    kept = silver.join(cross.select("event_id", "kept_landing_date"), on="event_id")
    assert kept.height == cross["event_id"].n_unique()
    assert (kept["landing_date"] == kept["kept_landing_date"]).all()


def test_late_events_land_in_their_true_event_date_and_gold_counts_them_there(lakehouse_run):
    env, *_ = lakehouse_run
    lh = env.lakehouse
    silver = lh.read("silver/events")
    late = silver.filter(pl.col("event_date") < pl.col("landing_date").str.to_date())
    assert late.height > 0
    per_date = silver.group_by("event_date").agg(pl.len().alias("silver"), pl.col("revenue").sum().alias("rev"))
    metrics = lh.read("gold/daily_metrics").group_by("event_date").agg(
        pl.col("events").sum().alias("gold"), pl.col("total_revenue").sum().alias("grev")
    )
    both = per_date.join(metrics, on="event_date", how="full", coalesce=True).fill_null(0)
    assert (both["silver"] == both["gold"]).all()
    assert ((both["rev"] - both["grev"]).abs() < 1e-6).all()
    # An event date before the first landing day exists only because of late events.
    assert both["event_date"].min() < date(2024, 1, 1) or late["event_date"].min() < late["landing_date"].str.to_date().max()
    facts = lh.read("gold/fact_events")
    assert facts.height == silver.height
    assert set(lh.read("gold/dim_date")["date"].to_list()) == set(silver["event_date"].unique().to_list())


def test_pii_is_hashed_with_the_salt_and_never_stored_in_silver_or_gold(lakehouse_run):
    env, *_ = lakehouse_run
    lh = env.lakehouse
    silver = lh.read("silver/events")
    assert "email" not in silver.columns
    for t in ["silver/events", *GOLD_TABLES]:
        df = lh.read(t)
        for col, dtype in df.schema.items():
            if dtype == pl.String:
                assert not df[col].str.contains("@example.com").any(), (t, col)
    user = silver.row(0, named=True)
    number = int(user["user_id"][1:])
    expected = hmac.new(TEST_SALT.encode(), f"user{number}@example.com".encode(), hashlib.sha256).hexdigest()
    assert user["email_hash"] == expected


def test_dirty_records_are_quarantined_with_specific_reasons(lakehouse_run):
    env, *_ = lakehouse_run
    q = env.lakehouse.read("silver/events_quarantine")
    reasons = set(q["reason"].to_list())
    assert {
        "malformed_json",
        "invalid_timestamp",
        "missing_value:timestamp",
        "missing_value:user_id",
        "invalid_type:session_duration",
        "invalid_value:event_type",
        "negative_value:revenue",
    } <= reasons
    assert q["payload"].null_count() == 0 and (q["line_number"] > 0).all()
    # CSV and Parquet days carry dirt too and are quarantined the same way.
    assert set(q["landing_date"].to_list()) >= {"2024-01-06", "2024-01-07"}


def test_files_are_ingested_once_and_unreadable_files_are_recorded_not_fatal(lakehouse_run):
    env, *_ = lakehouse_run
    files = env.lakehouse.read("bronze/landed_files")
    copy = files.filter(pl.col("source_file") == "events/2024-01-03/renamed-copy.jsonl").row(0, named=True)
    assert copy["status"] == "already_ingested" and "2024-01-01" in copy["reason"]
    bronze = env.lakehouse.read("bronze/events")
    assert bronze.filter(pl.col("source_file").str.contains("renamed-copy")).height == 0
    rejected = {r["source_file"]: r["reason"] for r in files.filter(pl.col("status") == "rejected").iter_rows(named=True)}
    assert rejected["events/2024-01-02/garbage.jsonl"].startswith("binary_content")
    assert rejected["events/2024-01-02/empty.csv"].startswith("empty_file")


def test_rerunning_every_partition_changes_no_table(lakehouse_run):
    env, first, rerun, snap_first, bronze_rows_first = lakehouse_run
    assert all(s.ok for s in rerun)
    assert env.lakehouse.read("bronze/events").height == bronze_rows_first
    snap_again = _snapshot(env.lakehouse, SILVER_TABLES + GOLD_TABLES)
    for table, before in snap_first.items():
        after = snap_again[table]
        assert after.equals(before), table
    assert [s.rows.get("silver/events") for s in rerun] == [s.rows.get("silver/events") for s in first]
