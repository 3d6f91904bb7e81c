"""The engine operations the assets call give the same tables on polars and on Spark.

Both engines start from the same silver table (copied, so each writes its own gold); results are
compared after the documented normalisation (sorted on keys), exactly: nothing is summed in
floating point.
"""

from __future__ import annotations

import shutil
from datetime import timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from hybrid_pipeline.engines.compute import PolarsEngine, SparkEngine, Written, make_engine
from hybrid_pipeline.engines.shared import DIM_USER_SCHEMA, FACT_EVENTS_SCHEMA
from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.transforms.features import FEATURES_SCHEMA
from hybrid_pipeline.transforms.gold import DAILY_METRICS_SCHEMA

from .conftest import SALT, SILVER_PARTITIONS, SILVER_TABLES, START, PolarsRun
from . import oracles
from .oracles import dim_user

DAYS = ["2024-03-01", "2024-03-02", "2024-03-03"]


@pytest.fixture(scope="module")
def lakes(polars_run: PolarsRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[Lakehouse, Lakehouse]:
    """Two lakehouses holding the same silver tables (written as the silver asset writes them)."""
    root = tmp_path_factory.mktemp("compute")
    a = Lakehouse(str(root / "polars"))
    for day, batch in polars_run.batches.items():
        for name, table in SILVER_TABLES.items():
            a.replace_where(table, getattr(batch, name), f"landing_date = '{day}'", partition_by=SILVER_PARTITIONS[name])
    shutil.copytree(root / "polars", root / "spark")
    return a, Lakehouse(str(root / "spark"))


def sort(df: pl.DataFrame, *keys: str) -> pl.DataFrame:
    return df.sort(list(keys))


def test_make_engine_dispatches_by_name(spark) -> None:
    assert isinstance(make_engine("polars"), PolarsEngine)
    engine = make_engine("spark", lambda: spark)
    assert isinstance(engine, SparkEngine) and engine.spark is spark


def test_clean_events_on_spark_equals_polars_through_the_engine_interface(spark, polars_run: PolarsRun) -> None:
    day = DAYS[1]  # earlier silver exists: cross-day duplicates point at it
    existing = polars_run.existing_before(day).lazy()
    reference = PolarsEngine().clean_events(polars_run.bronze[day], existing, SALT)
    got = SparkEngine(spark).clean_events(polars_run.bronze[day], existing, SALT)
    for name in ("events", "quarantine", "duplicates"):
        assert_frame_equal(getattr(reference, name), getattr(got, name))
    assert got.drift == reference.drift and got.reasons() == reference.reasons()
    assert reference.duplicates["kept_landing_date"].is_in([DAYS[0]]).any()


def test_silver_written_by_each_engine_from_the_bronze_table_is_identical(spark, polars_run: PolarsRun, tmp_path) -> None:
    """What the silver asset calls: each engine reads the day's bronze and earlier silver from the
    lakehouse itself and replaces the day's rows of the three tables."""
    lakes = {name: Lakehouse(str(tmp_path / name)) for name in ("polars", "spark")}
    for lh in lakes.values():
        for day in DAYS:
            lh.append("bronze/events", polars_run.bronze[day], partition_by=["landing_date"])
    engines = {"polars": PolarsEngine(), "spark": SparkEngine(spark)}
    for day in DAYS:
        written = {name: engines[name].write_silver(lakes[name], day, SALT) for name in engines}
        w_a, w_b = written["polars"], written["spark"]
        batch = polars_run.batches[day]
        assert w_a.bronze_rows == w_b.bronze_rows == polars_run.bronze[day].height
        assert w_a.rows == w_b.rows == {n: getattr(batch, n).height for n in ("events", "quarantine", "duplicates")}
        assert w_a.bronze_rows == sum(w_a.rows.values())  # conserved
        assert (w_a.reasons, w_a.drift, w_a.event_dates) == (w_b.reasons, w_b.drift, w_b.event_dates)
        assert w_a.reasons == batch.reasons() and w_a.drift == batch.drift
    assert w_a.rows["duplicates"] > 0 and w_a.reasons  # the data is dirty enough to mean something
    rerun = engines["spark"].write_silver(lakes["spark"], DAYS[1], SALT)  # replaces the day's rows only
    assert rerun.rows == {n: getattr(polars_run.batches[DAYS[1]], n).height for n in ("events", "quarantine", "duplicates")}
    for name, table in SILVER_TABLES.items():
        key = ["event_id"] if name == "events" else ["source_file", "line_number"]
        a, b = lakes["polars"].read(table), lakes["spark"].read(table)
        assert_frame_equal(a.sort(key), b.select(a.columns).sort(key))
        reference = pl.concat([getattr(polars_run.batches[d], name) for d in DAYS])
        assert_frame_equal(a.sort(key), reference.select(a.columns).sort(key))


def test_daily_metrics_and_dim_user_are_identical(spark, lakes) -> None:
    a, b = lakes
    polars, sparkly = PolarsEngine(), SparkEngine(spark)
    dates = [START, START + timedelta(days=1)]
    m_a, m_b = polars.daily_metrics(a, dates), sparkly.daily_metrics(b, dates)
    assert m_a.height > 0 and m_b.schema == pl.Schema(DAILY_METRICS_SCHEMA)
    assert_frame_equal(m_a, m_b, check_exact=True)
    assert polars.daily_metrics(a, []).height == sparkly.daily_metrics(b, []).height == 0
    for day in DAYS:  # each landing day's summary, as the daily runs write them
        s_a, s_b = polars.write_user_landing_summary(a, day), sparkly.write_user_landing_summary(b, day)
        assert s_a.rows == s_b.rows > 0
    summary = a.read("gold/user_landing_summary")
    assert_frame_equal(summary.sort("landing_date", "user_id"), b.read("gold/user_landing_summary").sort("landing_date", "user_id"))
    u_a, u_b = polars.dim_user(a, DAYS[2]), sparkly.dim_user(b, DAYS[2])
    assert u_a.height > 0 and u_b.schema == pl.Schema(DIM_USER_SCHEMA)
    assert_frame_equal(sort(u_a, "user_id"), sort(u_b, "user_id"))
    # the touched users' whole history, though only their summaries were read
    everything = dim_user(a.read("silver/events"))
    assert_frame_equal(sort(u_a, "user_id"), everything.join(u_a.select("user_id"), on="user_id", how="semi"))
    assert (u_a["lifetime_events"] > summary.filter(pl.col("landing_date") == DAYS[2]).sort("user_id")["events"]).any()


def test_a_rerun_landing_day_replaces_its_summary_rows(lakes) -> None:
    a, _ = lakes
    engine = PolarsEngine()
    for day in DAYS:
        engine.write_user_landing_summary(a, day)
    before = a.read("gold/user_landing_summary").sort("landing_date", "user_id")
    engine.write_user_landing_summary(a, DAYS[1])
    assert_frame_equal(a.read("gold/user_landing_summary").sort("landing_date", "user_id"), before)


def test_fact_events_and_user_features_written_by_each_engine_are_identical(spark, lakes) -> None:
    a, b = lakes
    polars, sparkly = PolarsEngine(), SparkEngine(spark)
    rows = {}
    for day in DAYS:
        w_a, w_b = polars.write_fact_events(a, day), sparkly.write_fact_events(b, day)
        assert isinstance(w_b, Written) and w_a.rows == w_b.rows > 0
        rows[day] = w_b.rows
    rerun = sparkly.write_fact_events(b, DAYS[0])  # a rerun replaces the day's rows, nothing else
    assert rerun.rows == rows[DAYS[0]] and b.read("gold/fact_events").height == sum(rows.values())
    facts_a, facts_b = a.read("gold/fact_events"), b.read("gold/fact_events")
    assert facts_b.schema == pl.Schema(FACT_EVENTS_SCHEMA) == facts_a.schema
    keys = ("event_date", "timestamp", "event_id")
    assert_frame_equal(sort(facts_a, *keys), sort(facts_b, *keys))

    start, end = START + timedelta(days=1), START + timedelta(days=12)
    polars.write_user_features(a, START, end), sparkly.write_user_features(b, START, end)
    f_a, f_b = polars.write_user_features(a, start, end), sparkly.write_user_features(b, start, end)  # from `start` on
    assert (f_a.rows, f_a.figures) == (f_b.rows, f_b.figures)
    feats_a, feats_b = a.read("gold/user_features"), b.read("gold/user_features")
    assert feats_b.schema == pl.Schema(FEATURES_SCHEMA) == feats_a.schema
    assert feats_a["event_date"].min() == START  # rows before `start` were kept, not replaced
    assert_frame_equal(sort(feats_a, "user_id", "event_date"), sort(feats_b, "user_id", "event_date"), check_exact=True)


def test_polars_engine_gold_equals_the_plain_polars_references(lakes) -> None:
    """The polars engine runs the shared definitions; they give what the native-idiom references give."""
    a, _ = lakes
    silver = a.read("silver/events")
    day = silver.filter(pl.col("event_date") == START)
    assert_frame_equal(PolarsEngine().daily_metrics(a, [START]), oracles.daily_metrics(day.lazy()))
    end = START + timedelta(days=4)
    PolarsEngine().write_user_features(a, START, end)
    assert_frame_equal(
        a.read("gold/user_features").sort("user_id", "event_date"),
        oracles.user_features(silver.lazy(), START, end),
        check_exact=False,
        rel_tol=1e-12,
    )
