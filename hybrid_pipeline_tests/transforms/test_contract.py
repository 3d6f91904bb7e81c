"""Specification of the event contract (``transforms.contract``)."""

from __future__ import annotations

from datetime import datetime, timezone

import pandera.errors
import polars as pl
import pytest

from hybrid_pipeline.transforms.contract import (
    CONTRACT_FIELDS,
    EVENT_TYPES,
    NUMERIC_FIELDS,
    REQUIRED_KEYS,
    STRING_FIELDS,
    TypedEvent,
    reason_for,
    silver_schema,
)


def test_the_contract_fields_are_those_of_the_design() -> None:
    assert CONTRACT_FIELDS == (
        "event_id", "user_id", "session_id", "event_type", "timestamp",
        "product_id", "session_duration", "revenue", "user_segment", "email",
    )  # fmt: skip
    assert set(STRING_FIELDS) | set(NUMERIC_FIELDS) | {"timestamp"} == set(CONTRACT_FIELDS)
    assert EVENT_TYPES == ("view", "click", "add_to_cart", "purchase")
    assert set(REQUIRED_KEYS) <= set(CONTRACT_FIELDS)


@pytest.mark.parametrize(
    ("check", "column", "reason"),
    [
        ("not_nullable", "user_id", "missing_value:user_id"),
        ("isin(['view', 'click'])", "event_type", "invalid_value:event_type"),
        ("greater_than_or_equal_to(0)", "revenue", "negative_value:revenue"),
        ("greater_than_or_equal_to(0)", "session_duration", "out_of_range:session_duration"),
        ("less_than_or_equal_to(604800)", "session_duration", "out_of_range:session_duration"),
        ("str_length(1, None)", "event_id", "empty_value:event_id"),
        ("revenue_only_on_purchase", "TypedEvent", "revenue_only_on_purchase"),
        ("purchase_has_revenue", None, "purchase_has_revenue"),
        ("some_new_check", "email", "some_new_check:email"),
    ],
)
def test_a_pandera_failure_maps_to_a_short_stable_reason(check: str, column: str | None, reason: str) -> None:
    assert reason_for(check, column) == reason


def test_the_silver_schema_is_the_contract_plus_derived_and_lineage_columns() -> None:
    schema = silver_schema()

    assert list(schema) == [
        "event_id", "user_id", "session_id", "event_type", "timestamp", "event_date", "hour",
        "product_id", "session_duration", "revenue", "user_segment", "email_hash",
        "landing_date", "source_file", "line_number",
    ]  # fmt: skip
    assert schema["timestamp"] == pl.Datetime("us", "UTC")
    assert schema["event_date"] == pl.Date()
    assert schema["hour"] == pl.Int8()
    assert "email" not in schema  # PII never reaches silver in clear


def _typed(**overrides: object) -> pl.DataFrame:
    row = {
        "event_id": "e1", "user_id": "u1", "session_id": "s1", "event_type": "purchase",
        "timestamp": datetime(2024, 1, 1, tzinfo=timezone.utc), "product_id": "p1",
        "session_duration": 3.0, "revenue": 9.5, "user_segment": "new", "email": None,
    }  # fmt: skip
    row.update(overrides)
    return pl.DataFrame([row], schema_overrides={"timestamp": pl.Datetime("us", "UTC"), "email": pl.String})


def test_a_typed_event_that_honours_the_contract_validates() -> None:
    frame = _typed()

    assert TypedEvent.validate(frame).equals(frame)


@pytest.mark.parametrize(
    "overrides",
    [
        {"event_type": "hover"},
        {"revenue": -1.0},
        {"session_duration": 8 * 86_400.0},
        {"event_type": "view"},  # revenue on a non-purchase
        {"revenue": None},  # a purchase without revenue
        {"user_id": ""},
    ],
)
def test_a_typed_event_that_breaks_the_contract_fails_validation(overrides: dict) -> None:
    with pytest.raises(pandera.errors.SchemaError):
        TypedEvent.validate(_typed(**overrides))
