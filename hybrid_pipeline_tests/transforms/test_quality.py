"""Specification of the data-quality rules (``transforms.quality``): each one passing and failing."""

from __future__ import annotations

from datetime import date, datetime, timezone

import polars as pl
import pytest

from hybrid_pipeline.transforms.contract import silver_schema
from hybrid_pipeline.engines.shared import run_on
from hybrid_pipeline.transforms.quality import (
    enums_valid,
    event_ids_unique,
    gold_reconciles,
    keys_not_null,
    quarantine_rate,
    row_conservation,
    schema_matches,
)

from .factories import silver

UTC = timezone.utc

SILVER = silver(
    [
        {"event_id": "e1", "user_id": "u1", "event_type": "view", "timestamp": datetime(2024, 1, 6, 10, tzinfo=UTC), "user_segment": "new"},
        {"event_id": "e2", "user_id": "u1", "event_type": "purchase", "timestamp": datetime(2024, 1, 6, 11, tzinfo=UTC), "revenue": 12.5, "user_segment": "new"},
        {"event_id": "e3", "user_id": "u2", "event_type": "purchase", "timestamp": datetime(2024, 1, 7, 9, tzinfo=UTC), "revenue": 3.0, "user_segment": "loyal"},
    ]
)  # fmt: skip


def daily_metrics(silver: pl.LazyFrame) -> pl.DataFrame:
    return run_on("polars", "daily_metrics", silver)


def fact_events(silver: pl.DataFrame) -> pl.DataFrame:
    return run_on("polars", "fact_events", silver)


# -- schema_matches -------------------------------------------------------------------


def test_schema_matches_passes_on_the_contract_schema_and_reports_extra_columns() -> None:
    actual = {**silver_schema(), "campaign": pl.String()}

    outcome = schema_matches(actual, silver_schema())

    assert outcome.passed
    assert outcome.metadata == {"missing_columns": [], "wrong_types": [], "extra_columns": ["campaign"]}


def test_schema_matches_fails_on_a_missing_column() -> None:
    actual = {k: v for k, v in silver_schema().items() if k != "email_hash"}

    outcome = schema_matches(actual, silver_schema())

    assert not outcome.passed
    assert outcome.severity == "ERROR"
    assert outcome.metadata["missing_columns"] == ["email_hash"]


def test_schema_matches_fails_on_a_wrong_type() -> None:
    actual = {**silver_schema(), "revenue": pl.String()}

    outcome = schema_matches(actual, silver_schema())

    assert not outcome.passed
    assert outcome.metadata["wrong_types"] == ["revenue: String != Float64"]


# -- keys_not_null / event_ids_unique / enums_valid -----------------------------------


def test_keys_not_null_passes_when_every_required_key_is_present() -> None:
    outcome = keys_not_null(SILVER.lazy())

    assert outcome.passed
    assert outcome.metadata == {"null_keys": "none"}


def test_keys_not_null_fails_and_counts_nulls_per_key() -> None:
    broken = SILVER.with_columns(
        pl.when(pl.col("event_id") != "e1").then(pl.col("user_id")).alias("user_id"),
        pl.lit(None, pl.Datetime("us", "UTC")).alias("timestamp"),
    )

    outcome = keys_not_null(broken.lazy())

    assert not outcome.passed
    assert outcome.metadata == {"null_keys": {"user_id": 1, "timestamp": 3}}


def test_event_ids_unique_passes_on_distinct_ids() -> None:
    outcome = event_ids_unique(SILVER.lazy().select("event_id"))

    assert outcome.passed
    assert outcome.metadata == {"duplicated_event_ids": 0, "sample": []}


def test_event_ids_unique_fails_and_samples_the_duplicated_ids() -> None:
    ids = pl.LazyFrame({"event_id": ["a", "b", "a", "c", "c", "c"]})

    outcome = event_ids_unique(ids)

    assert not outcome.passed
    assert outcome.metadata["duplicated_event_ids"] == 2
    assert sorted(outcome.metadata["sample"]) == ["a", "c"]


def test_event_ids_unique_passes_when_a_partition_shares_no_id_with_the_rest_of_the_table() -> None:
    outcome = event_ids_unique(pl.LazyFrame({"event_id": ["a", "b"]}), elsewhere=pl.LazyFrame({"event_id": ["c", "d"]}))

    assert outcome.passed


def test_event_ids_unique_fails_when_a_partition_repeats_an_id_stored_elsewhere() -> None:
    partition = pl.LazyFrame({"event_id": ["a", "b", "b"]})
    rest = pl.LazyFrame({"event_id": ["a", "a", "z"]})

    outcome = event_ids_unique(partition, elsewhere=rest)

    assert not outcome.passed
    assert outcome.metadata["duplicated_event_ids"] == 2
    assert sorted(outcome.metadata["sample"]) == ["a", "b"]


def test_enums_valid_passes_on_contract_event_types() -> None:
    outcome = enums_valid(SILVER.lazy())

    assert outcome.passed
    assert outcome.metadata == {"invalid_event_types": 0}


def test_enums_valid_fails_and_counts_unknown_event_types() -> None:
    outcome = enums_valid(SILVER.with_columns(pl.lit("hover").alias("event_type")).lazy())

    assert not outcome.passed
    assert outcome.metadata == {"invalid_event_types": 3}


# -- row_conservation -----------------------------------------------------------------


def test_row_conservation_passes_when_every_bronze_row_is_accounted_for() -> None:
    outcome = row_conservation(bronze=100, silver=90, quarantined=7, duplicates=3)

    assert outcome.passed
    assert outcome.metadata["unaccounted"] == 0


@pytest.mark.parametrize(("silver_rows", "unaccounted"), [(89, 1), (92, -2)])
def test_row_conservation_fails_on_lost_or_invented_rows(silver_rows: int, unaccounted: int) -> None:
    outcome = row_conservation(bronze=100, silver=silver_rows, quarantined=7, duplicates=3)

    assert not outcome.passed
    assert outcome.severity == "ERROR"
    assert outcome.metadata == {"bronze": 100, "silver": silver_rows, "quarantined": 7, "duplicates": 3, "unaccounted": unaccounted}
    assert outcome.description == f"{unaccounted} rows unaccounted for"


# -- quarantine_rate ------------------------------------------------------------------


@pytest.mark.parametrize(("quarantined", "rate"), [(0, 0.0), (2, 0.02), (5, 0.05)])
def test_quarantine_rate_passes_at_or_below_the_warning_threshold(quarantined: int, rate: float) -> None:
    outcome = quarantine_rate(100, quarantined, warn_above=0.05, error_above=0.2)

    assert outcome.passed
    assert outcome.metadata["quarantine_rate"] == rate


def test_quarantine_rate_warns_between_the_thresholds() -> None:
    outcome = quarantine_rate(100, 6, warn_above=0.05, error_above=0.2)

    assert not outcome.passed
    assert outcome.severity == "WARN"
    assert outcome.metadata["quarantine_rate"] == 0.06


def test_quarantine_rate_errors_above_the_error_threshold() -> None:
    outcome = quarantine_rate(100, 21, warn_above=0.05, error_above=0.2)

    assert not outcome.passed
    assert outcome.severity == "ERROR"
    assert outcome.metadata["quarantine_rate"] == 0.21


def test_quarantine_rate_of_an_empty_bronze_batch_passes() -> None:
    assert quarantine_rate(0, 0, warn_above=0.05, error_above=0.2).passed


# -- gold_reconciles ------------------------------------------------------------------


def test_gold_reconciles_passes_when_metrics_and_facts_agree_with_silver() -> None:
    outcome = gold_reconciles(SILVER.lazy(), daily_metrics(SILVER.lazy()).lazy(), fact_events(SILVER).lazy())

    assert outcome.passed
    assert outcome.metadata == {"dates_checked": 2, "dates_mismatched": [], "silver_events": 3, "silver_revenue": 15.5}


def test_gold_reconciles_fails_when_facts_lose_an_event() -> None:
    facts = fact_events(SILVER).filter(pl.col("event_id") != "e3")

    outcome = gold_reconciles(SILVER.lazy(), daily_metrics(SILVER.lazy()).lazy(), facts.lazy())

    assert not outcome.passed
    assert outcome.metadata["dates_mismatched"] == ["2024-01-07"]


def test_gold_reconciles_fails_when_metrics_miss_a_whole_date() -> None:
    metrics = daily_metrics(SILVER.lazy()).filter(pl.col("event_date") == date(2024, 1, 6))

    outcome = gold_reconciles(SILVER.lazy(), metrics.lazy(), fact_events(SILVER).lazy())

    assert not outcome.passed
    assert outcome.metadata["dates_mismatched"] == ["2024-01-07"]


def test_gold_reconciles_fails_when_metric_revenue_differs() -> None:
    metrics = daily_metrics(SILVER.lazy()).with_columns(
        pl.when(pl.col("event_date") == date(2024, 1, 6)).then(pl.col("total_revenue") + 0.01).otherwise(pl.col("total_revenue"))
    )

    outcome = gold_reconciles(SILVER.lazy(), metrics.lazy(), fact_events(SILVER).lazy())

    assert not outcome.passed
    assert outcome.metadata["dates_mismatched"] == ["2024-01-06"]


def test_gold_reconciles_fails_when_fact_revenue_differs() -> None:
    facts = fact_events(SILVER).with_columns(
        pl.when(pl.col("event_id") == "e3").then(pl.lit(30.0)).otherwise(pl.col("revenue")).alias("revenue")
    )

    outcome = gold_reconciles(SILVER.lazy(), daily_metrics(SILVER.lazy()).lazy(), facts.lazy())

    assert not outcome.passed
    assert outcome.metadata["dates_mismatched"] == ["2024-01-07"]


def test_gold_reconciles_tolerates_float_noise_below_the_tolerance() -> None:
    metrics = daily_metrics(SILVER.lazy()).with_columns(pl.col("total_revenue") + 1e-9)

    assert gold_reconciles(SILVER.lazy(), metrics.lazy(), fact_events(SILVER).lazy()).passed
