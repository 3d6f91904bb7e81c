"""The Spark silver step gives the polars silver step's rows, reasons and pointers, exactly."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from hybrid_pipeline.sources.generator import EventGenerator, GeneratorConfig, write_day
from hybrid_pipeline.sources.landing import collect_landing
from hybrid_pipeline.transforms.contract import silver_schema
from hybrid_pipeline.transforms.silver import (
    DUPLICATES_SCHEMA,
    QUARANTINE_SCHEMA,
    clean_events,
    hash_emails,
    parse_timestamps,
)
from hybrid_pipeline_tests.transforms.factories import DROP, bronze, line, no_existing

from .conftest import NOW, SALT, SILVER_TABLES, PolarsRun, SparkRun, spark_clean_day, write_silver

pyspark = pytest.importorskip("pyspark")


def spark_frame(spark, df: pl.DataFrame):
    return spark.createDataFrame(df.to_arrow(compat_level=pl.CompatLevel.oldest()))


def empty_existing(spark):
    return spark.createDataFrame([], "event_id string, landing_date string, source_file string, line_number long")


def assert_same_batch(reference, got) -> None:
    assert_frame_equal(reference.events, got.events)
    assert_frame_equal(reference.quarantine, got.quarantine)
    assert_frame_equal(reference.duplicates, got.duplicates)
    assert_frame_equal(reference.displaced, got.displaced)
    assert got.drift == reference.drift


# -- generated landings with dirt --------------------------------------------------------------


def test_every_landing_day_gives_identical_silver_quarantine_and_duplicates(polars_run: PolarsRun, spark_run: SparkRun) -> None:
    assert list(spark_run.batches) == list(polars_run.batches)
    for day, reference in polars_run.batches.items():
        got = spark_run.batches[day]
        assert_same_batch(reference, got)
        # the dirt really is there, so the comparison covers every path
        assert got.duplicates.height > 0 and got.drift
        assert set(got.reasons()) >= {"malformed_json", "invalid_timestamp", "invalid_type:session_duration",
                                      "invalid_value:event_type", "missing_value:timestamp", "negative_value:revenue"}
        assert got.reasons() == reference.reasons()


def test_schemas_are_the_contract_after_normalisation(spark_run: SparkRun) -> None:
    for batch in spark_run.batches.values():
        assert batch.events.schema == pl.Schema(silver_schema())
        assert batch.quarantine.schema == pl.Schema(QUARANTINE_SCHEMA)
        assert batch.duplicates.schema == pl.Schema(DUPLICATES_SCHEMA)


def test_silver_tables_written_by_spark_read_back_with_polars_as_the_polars_silver(
    polars_run: PolarsRun, spark_run: SparkRun
) -> None:
    lh = spark_run.lakehouse
    events = lh.read(SILVER_TABLES["events"])
    # Delta gives the table's own types back: no normalisation needed (hour stays Int8, timestamps us/UTC)
    assert events.schema == pl.Schema(silver_schema())
    assert_frame_equal(events.sort("event_id"), polars_run.silver.sort("event_id"))
    quarantine = lh.read(SILVER_TABLES["quarantine"]).select(list(QUARANTINE_SCHEMA))
    expected = pl.concat([b.quarantine for b in polars_run.batches.values()])
    assert_frame_equal(quarantine.sort("source_file", "line_number"), expected.sort("source_file", "line_number"))


def test_rows_are_conserved_per_landing_day(polars_run: PolarsRun, spark_run: SparkRun) -> None:
    lh = spark_run.lakehouse
    for day, records in polars_run.bronze.items():
        counts = {
            name: lh.scan(table).filter(pl.col("landing_date") == day).select(pl.len()).collect().item()
            for name, table in SILVER_TABLES.items()
        }
        assert records.height == counts["events"] + counts["quarantine"] + counts["duplicates"]


def test_rerunning_a_day_on_spark_replaces_its_rows_and_nothing_else(polars_run: PolarsRun, spark_run: SparkRun) -> None:
    lh, slh = spark_run.lakehouse, spark_run.spark_lakehouse
    day = list(polars_run.batches)[1]
    before = {name: lh.read(t) for name, t in SILVER_TABLES.items()}
    versions = {name: lh.version(t) for name, t in SILVER_TABLES.items()}
    batch = spark_clean_day(slh, day)
    try:
        written = write_silver(slh, day, batch)
    finally:
        batch.unpersist()
    for name, table in SILVER_TABLES.items():
        assert written[name] == versions[name] + 1
        after = lh.read(table)
        key = ["source_file", "line_number"]
        assert_frame_equal(after.sort(key), before[name].select(after.columns).sort(key))
        assert lh.history(table, 1)[0]["operationParameters"]["predicate"] == f"landing_date = '{day}'"


# -- tabular landings and in-batch duplicates ---------------------------------------------------


def test_csv_and_parquet_landings_of_the_same_day_give_identical_results(spark, tmp_path: Path) -> None:
    cfg = GeneratorConfig(days=1, events_per_day=300, dirty_rate=0.1, seed=5, start_date=date(2024, 5, 1))
    batch = next(EventGenerator(cfg).days())
    write_day(batch, tmp_path, "csv")
    write_day(batch, tmp_path, "parquet")  # same records again: every valid one is a duplicate
    records = collect_landing(tmp_path, "2024-05-01", {}, NOW).records
    assert set(records["source_format"]) == {"csv", "parquet"}

    from hybrid_pipeline.engines.spark_silver import clean_events as spark_clean_events

    reference = clean_events(records, no_existing(), SALT)
    got_batch = spark_clean_events(spark_frame(spark, records), empty_existing(spark), SALT)
    try:
        got = got_batch.to_polars()
    finally:
        got_batch.unpersist()
    assert_same_batch(reference, got)
    assert reference.duplicates.height >= 250


# -- edge records, parsing and hashing ------------------------------------------------------------

EDGE_PAYLOADS = [
    line(),
    line(event_type="hover", revenue=5.0),  # two reasons, column check first
    line(user_id=DROP, event_type="hover"),
    line(event_id="", user_id="", session_duration=-1.0, event_type="purchase"),
    line(session_duration=999999999.0, revenue=-1.0),
    line(user_id=DROP, session_id=DROP, timestamp=DROP),
    line(session_duration="x", timestamp="bad", user_id={"a": 1}),
    line(event_type=DROP, revenue=5.0),  # a null frame-check result passes
    line(event_type="purchase", revenue=None),
    line(session_duration=" 12.5 "),
    line(session_duration="1.5d"),  # Java would parse it, polars does not
    line(session_duration="1e400"),
    line(session_duration="NaN"),
    line(revenue="inf", event_type="purchase"),
    line(timestamp="2024-03-01 10:00:00"),
    line(timestamp="2024-03-01T10:00:00.123456789+02:00"),
    line(timestamp="2024-03-01t10:00:00z"),
    line(timestamp="2024-03-01"),
    line(user_id=["u1"]),
    line(email="  MiXeD@Example.COM\t"),
    line(email="Ünïcødé@exämple.com"),
    line(email=None),
    line(campaign="autumn", extra=None),  # drift counts only non-null unknown fields
    '{"event_id": "q1", \'user_id\': "u1"}',  # single quotes: not JSON
    '{"event_id": "n1", "session_duration": NaN}',  # NaN literal: not JSON
    "{}",
    "[1, 2]",
    "not json",
    '  {"event_id": "w1", "user_id": "u1", "session_id": "s", "event_type": "view", "timestamp": "2024-03-01T10:00:00Z", '
    '"product_id": "p", "session_duration": 1, "user_segment": "new", "email": null}  ',
    line(event_id="e1"),  # in-batch duplicate of the first record
]


def test_edge_records_get_the_same_fate_on_both_engines(spark) -> None:
    from hybrid_pipeline.engines.spark_silver import clean_events as spark_clean_events

    records = bronze(EDGE_PAYLOADS)
    existing = pl.DataFrame(
        {
            "event_id": ["e-old", "e-new"],
            "landing_date": ["2024-02-28", "2024-03-09"],  # before and after this batch's day
            "source_file": ["events/old.jsonl", "events/new.jsonl"],
            "line_number": [7, 3],
            "event_date": [date(2024, 2, 28), date(2024, 3, 9)],
        }
    )
    records = pl.concat([records, bronze([line(event_id="e-old"), line(event_id="e-new")], first_line=100)])
    reference = clean_events(records, existing.lazy(), SALT)
    batch = spark_clean_events(spark_frame(spark, records), spark_frame(spark, existing), SALT)
    try:
        got = batch.to_polars()
    finally:
        batch.unpersist()
    assert_same_batch(reference, got)
    assert got.drift == {"campaign": 1}
    assert "2024-02-28" in got.duplicates["kept_landing_date"].to_list()
    assert got.displaced.select("event_id", "landing_date", "kept_line_number").rows() == [("e-new", "2024-03-09", 101)]


TIMESTAMPS = [
    "2024-03-01T10:00:00Z", "2024-03-01T10:00:00.123Z", "2024-03-01T10:00:00.123456789Z", "2024-03-01T10:00:00.1+02:00",
    "2024-03-01T10:00:00+0200", "2024-03-01T10:00:00+02", "2024-03-01 10:00:00", "2024-03-01T10:00", "2024-03-01",
    "  2024-03-01T10:00:00Z ", "2024-03-01T10:00+01:00", "31/02/2024 25:61", "2024-3-1T10:00:00Z", "2024-03-01T10:00:00",
    "2024-03-01T10:00:00.5", "2024-03-01T10:00Z", "2024-03-01T10:00:00 +02:00", "2024-03-01T1:2:3Z", "2024-03-01T10:00:00.Z",
    "20240301T100000Z", "2024-03-01T24:00:00Z", "2024-02-30T10:00:00Z", "2024-03-01t10:00:00z", "+2024-03-01T10:00:00Z",
    "2024-03-01T10:00:00-00:30", "12024-03-01T10:00:00Z", "2024-03-01T10:00:00UTC", "2024-03-01T10:00:00.123+0530", "",
]


def test_timestamp_spellings_parse_alike(spark) -> None:
    from pyspark.sql import functions as F

    from hybrid_pipeline.engines.spark_silver import parse_timestamps as spark_parse

    frame = pl.DataFrame({"t": TIMESTAMPS})
    expected = frame.select(parse_timestamps(pl.col("t")).alias("ts"))["ts"]
    got = pl.from_arrow(spark_frame(spark, frame).select(spark_parse(F.col("t")).alias("ts")).toArrow())["ts"]
    assert got.cast(pl.Datetime("us", "UTC")).to_list() == expected.to_list()


def test_emails_hash_as_polars_does_including_unusual_addresses(spark) -> None:
    from pyspark.sql import functions as F

    from hybrid_pipeline.engines.spark_silver import hash_ascii_emails

    emails = pl.Series("email", ["a@b.com", " A@B.COM\n", "x+tag@ex.org", None, "\x1fodd@x.com", "é@x.com", ""], dtype=pl.String)
    expected = hash_emails(emails, SALT).to_list()
    got = spark_frame(spark, emails.to_frame()).select(hash_ascii_emails(F.col("email"), SALT).alias("h")).toArrow()
    hashed = pl.from_arrow(got)["h"].to_list()
    ascii_rows = [0, 1, 2, 6]
    assert [hashed[i] for i in ascii_rows] == [expected[i] for i in ascii_rows]
    # null, and what str.strip()/lower() and Spark's trim()/lower() may treat differently, are left
    # to the driver-side fallback (``clean_events`` fills them from ``hash_emails``)
    assert hashed[3] is None and hashed[4] is None and hashed[5] is None


def test_every_contract_check_has_a_spark_translation(spark) -> None:
    from hybrid_pipeline.engines.spark_silver import contract_failures
    from hybrid_pipeline.transforms.contract import TypedEvent

    schema = TypedEvent.to_schema()
    expected = sum((0 if c.nullable else 1) + len(c.checks) for c in schema.columns.values()) + len(schema.checks)
    reasons = [r for r, _ in contract_failures()]
    assert len(reasons) == expected
    assert reasons[:2] == ["missing_value:event_id", "empty_value:event_id"]
    assert reasons[-2:] == ["revenue_only_on_purchase", "purchase_has_revenue"]


def test_a_session_in_another_time_zone_is_refused(spark) -> None:
    from hybrid_pipeline.engines.spark_silver import clean_events as spark_clean_events

    spark.conf.set("spark.sql.session.timeZone", "Europe/Paris")
    try:
        with pytest.raises(RuntimeError, match="UTC"):
            spark_clean_events(spark_frame(spark, bronze([line()])), empty_existing(spark), SALT)
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")


def test_quarantine_keeps_the_raw_payload(spark_run: SparkRun) -> None:
    for batch in spark_run.batches.values():
        malformed = batch.quarantine.filter(pl.col("reason") == "malformed_json")
        assert malformed.height > 0
        for payload in malformed["payload"].to_list():
            with pytest.raises(json.JSONDecodeError):
                json.loads(payload)
