"""One definition of daily_metrics, user_features, fact_events and dim_user, identical results on
polars and on Spark.

Normalisation (documented in ``engines.shared``): outputs are cast to the polars originals'
schema and sorted on their keys. Nothing is summed in floating point (money in integer cents,
session durations in integer microseconds), so the shared definitions give the same bits on both
engines, run after run and whatever the order of the input rows; the plain-polars references
sum floats, so they are compared to 1e-12 relative.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from hybrid_pipeline.engines.shared import DIM_USER_SCHEMA, FACT_EVENTS_SCHEMA, Engine, calendar, run_on
from hybrid_pipeline.transforms.contract import silver_schema
from hybrid_pipeline.transforms.features import FEATURES_SCHEMA
from hybrid_pipeline.transforms.gold import DAILY_METRICS_SCHEMA

from .conftest import START, PolarsRun, SparkRun
from .oracles import daily_metrics, dim_user, fact_events, user_features

END = START + timedelta(days=35)  # past the last event: rows decay on quiet days


def assert_same(reference: pl.DataFrame, got: pl.DataFrame) -> None:
    assert got.schema == reference.schema
    assert_frame_equal(reference, got, check_exact=False, rel_tol=1e-12, abs_tol=0.0)


def test_shared_daily_metrics_on_polars_equals_the_reference(polars_run: PolarsRun) -> None:
    reference = daily_metrics(polars_run.silver.lazy())
    got = run_on("polars", "daily_metrics", polars_run.silver)
    assert_frame_equal(reference, got, check_exact=True)
    assert got.schema == pl.Schema(DAILY_METRICS_SCHEMA)


@pytest.mark.parametrize("start", [START, START + timedelta(days=2)])
def test_shared_user_features_on_polars_equals_the_reference(polars_run: PolarsRun, start: date) -> None:
    reference = user_features(polars_run.silver.lazy(), start, END)
    got = run_on("polars", "user_features", polars_run.silver, start=start, end=END)
    assert reference.height > 0
    assert_same(reference, got)


def float_bits(df: pl.DataFrame) -> pl.DataFrame:
    """Float columns as their IEEE-754 bit patterns: equality of these is bit-identity."""
    return df.with_columns(
        pl.Series(c, df[c].to_numpy().view(np.uint64)) for c, t in df.schema.items() if t == pl.Float64
    )


def busy_users(events_per_day: int = 400, seed: int = 5) -> pl.DataFrame:
    """Silver rows of three users with hundreds of events a day, durations at full precision:
    a float sum of these depends on the order it is taken in."""
    rng = np.random.default_rng(seed)
    n = 3 * 3 * events_per_day
    day = rng.integers(0, 3, n)
    ts = [datetime(2024, 3, 1, tzinfo=timezone.utc) + timedelta(days=int(d), seconds=int(s)) for d, s in zip(day, rng.integers(0, 86_400, n))]
    return pl.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "user_id": [f"u{u}" for u in rng.integers(0, 3, n)],
            "session_id": "s",
            "event_type": "view",
            "timestamp": ts,
            "event_date": [t.date() for t in ts],
            "hour": [t.hour for t in ts],
            "product_id": "p",
            "session_duration": rng.uniform(0, 3600, n),
            "revenue": None,
            "user_segment": "new",
            "email_hash": None,
            "landing_date": "2024-03-01",
            "source_file": "f",
            "line_number": np.arange(n),
        },
    ).cast(silver_schema()).select(list(silver_schema()))


def test_user_features_are_bit_identical_run_after_run_and_whatever_the_row_order(polars_run: PolarsRun) -> None:
    for silver in (busy_users(), polars_run.silver):
        end = silver["event_date"].max() + timedelta(days=3)
        first = run_on("polars", "user_features", silver, start=START, end=end)
        again = run_on("polars", "user_features", silver, start=START, end=end)
        shuffled = run_on("polars", "user_features", silver.sample(fraction=1.0, shuffle=True, seed=3), start=START, end=end)
        assert first.height > 0
        assert_frame_equal(float_bits(first), float_bits(again), check_exact=True)
        assert_frame_equal(float_bits(first), float_bits(shuffled), check_exact=True)


def test_average_session_duration_is_the_mean_of_whole_microseconds_rounded_once() -> None:
    silver = busy_users(events_per_day=50)
    got = run_on("polars", "user_features", silver, start=START, end=START + timedelta(days=2))
    last = got.filter(pl.col("event_date") == START + timedelta(days=2)).sort("user_id")
    totals = (
        silver.group_by("user_id")
        .agg(((pl.col("session_duration") * 1_000_000 + 0.5).floor().cast(pl.Int64).sum()).alias("us"), pl.len().alias("n"))
        .sort("user_id")
    )
    expected = [us / (n * 1_000_000) for us, n in totals.select("us", "n").rows()]  # one IEEE division
    assert last["avg_session_duration"].to_list() == expected


def test_daily_metrics_on_spark_equals_polars(spark, polars_run: PolarsRun) -> None:
    reference = daily_metrics(polars_run.silver.lazy())
    got = run_on("spark", "daily_metrics", polars_run.silver, spark=spark)
    assert_frame_equal(reference, got, check_exact=True)  # revenue included, to the bit


def test_user_features_on_spark_equals_polars(spark, polars_run: PolarsRun) -> None:
    reference = user_features(polars_run.silver.lazy(), START + timedelta(days=1), END)
    got = run_on("spark", "user_features", polars_run.silver, spark=spark, start=START + timedelta(days=1), end=END)
    assert_same(reference, got)
    on_polars = run_on("polars", "user_features", polars_run.silver, start=START + timedelta(days=1), end=END)
    assert_frame_equal(float_bits(on_polars), float_bits(got), check_exact=True)  # the same bits on both engines
    assert got["days_since_last_purchase"].null_count() < got.height  # purchases exist and are tracked
    assert got["recent_event_types"].str.count_matches(",").max() == 4  # five event types at most


def test_gold_written_by_spark_from_the_spark_silver_table_equals_polars_gold(spark, polars_run: PolarsRun, spark_run: SparkRun) -> None:
    """The whole scale-out path: Spark silver table -> shared transform on Spark -> Delta via delta_commit."""
    slh, lh = spark_run.spark_lakehouse, spark_run.lakehouse
    silver = slh.scan("silver/events")
    metrics = run_on(Engine("spark", spark), "daily_metrics", silver, collect=False)
    slh.replace_where("gold/daily_metrics", metrics, "true", partition_by=["event_date"])
    got = lh.read("gold/daily_metrics").sort("event_date", "user_segment")
    assert got.schema == pl.Schema(DAILY_METRICS_SCHEMA)  # Delta keeps the shared schema's types
    assert_frame_equal(daily_metrics(polars_run.silver.lazy()), got)


def test_empty_silver_gives_empty_features_on_both_engines(spark) -> None:
    empty = pl.DataFrame(schema={"event_date": pl.Date, "user_id": pl.String})
    for engine in ("polars", "spark"):
        got = run_on(engine, "user_features", empty, spark=spark, start=START, end=END)
        assert got.height == 0 and got.schema == pl.Schema(FEATURES_SCHEMA)


def test_calendar_numbers_days_and_ends_them_at_the_last_microsecond() -> None:
    cal = calendar(date(2024, 2, 28), date(2024, 3, 1))
    assert cal["day_n"] == [0, 1, 2]
    assert cal["event_date"][1] == date(2024, 2, 29)
    assert cal["event_timestamp"][2].isoformat() == "2024-03-01T23:59:59.999999+00:00"
    assert calendar(date(2024, 3, 2), date(2024, 3, 1))["day_n"] == []


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="polars' or 'spark"):
        Engine("duckdb")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="SparkSession"):
        Engine("spark")


# -- star schema: fact_events and dim_user ----------------------------------------------------


def silver_with_gaps(silver: pl.DataFrame) -> pl.DataFrame:
    """Silver with what the generated data lacks: users whose newest event has no e-mail (the
    newest *non-null* hash must win), users without any e-mail, and a segment change."""
    users = silver["user_id"].unique().sort()
    no_email = set(users[:5].to_list())
    newest = (
        silver.sort("timestamp", "event_id").group_by("user_id").agg(pl.col("event_id").last()).sort("user_id")["event_id"]
    )
    return silver.with_columns(
        pl.when(pl.col("user_id").is_in(list(no_email)) | pl.col("event_id").is_in(newest.head(40).to_list()))
        .then(None)
        .otherwise(pl.col("email_hash"))
        .alias("email_hash"),
        pl.when(pl.col("event_id").is_in(newest.head(20).to_list()))
        .then(pl.lit("changed"))
        .otherwise(pl.col("user_segment"))
        .alias("user_segment"),
    )


def test_shared_fact_events_on_polars_equals_the_oracle(polars_run: PolarsRun) -> None:
    silver = polars_run.silver
    got = run_on("polars", "fact_events", silver)
    assert_frame_equal(fact_events(silver), got)  # exact, schema included
    assert got.schema == pl.Schema(FACT_EVENTS_SCHEMA)


def test_shared_dim_user_on_polars_equals_the_oracle(polars_run: PolarsRun) -> None:
    silver = silver_with_gaps(polars_run.silver)
    assert silver["landing_date"].n_unique() > 1  # users' summaries of several landing days are composed
    reference = dim_user(silver)
    # users without an e-mail at all (5 chosen, plus one-event users whose event lost it), and 20 new segments
    assert reference["email_hash"].null_count() >= 5 and (reference["user_segment"] == "changed").sum() == 20
    got = run_on("polars", "dim_user_from_events", silver)
    assert_frame_equal(reference, got)
    assert got.schema == pl.Schema(DIM_USER_SCHEMA)


def test_fact_events_on_spark_equals_polars(spark, polars_run: PolarsRun) -> None:
    silver = polars_run.silver
    got = run_on("spark", "fact_events", silver, spark=spark)
    assert_frame_equal(fact_events(silver), got)  # exact: keys, revenue, timestamps
    assert got["user_key"].null_count() == 0


def test_dim_user_on_spark_equals_polars(spark, polars_run: PolarsRun) -> None:
    silver = silver_with_gaps(polars_run.silver)
    assert_frame_equal(dim_user(silver), run_on("spark", "dim_user_from_events", silver, spark=spark))
