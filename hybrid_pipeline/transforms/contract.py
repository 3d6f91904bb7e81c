"""The event contract (DESIGN.md) declared once, as a pandera schema.

Silver rows are exactly the records that pass this schema; every failure pandera reports
becomes a quarantine reason, so the contract and the quarantine can never disagree.
"""

from __future__ import annotations

import polars as pl
import pandera.polars as pa

from hybrid_pipeline.lakehouse import catalog

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")
STRING_FIELDS = ("event_id", "user_id", "session_id", "event_type", "product_id", "user_segment", "email")
NUMERIC_FIELDS = ("session_duration", "revenue")
CONTRACT_FIELDS = (
    "event_id",
    "user_id",
    "session_id",
    "event_type",
    "timestamp",
    "product_id",
    "session_duration",
    "revenue",
    "user_segment",
    "email",
)
REQUIRED_KEYS = ("event_id", "user_id", "session_id", "event_type", "timestamp")


class TypedEvent(pa.DataFrameModel):
    """An event after typing: what silver accepts."""

    event_id: str = pa.Field(nullable=False, str_length={"min_value": 1})
    user_id: str = pa.Field(nullable=False, str_length={"min_value": 1})
    session_id: str = pa.Field(nullable=False)
    event_type: str = pa.Field(nullable=False, isin=list(EVENT_TYPES))
    timestamp: pl.Datetime(time_unit="us", time_zone="UTC") = pa.Field(nullable=False)  # type: ignore[valid-type]
    product_id: str = pa.Field(nullable=False)
    session_duration: float = pa.Field(nullable=False, ge=0, le=7 * 86_400)
    revenue: float = pa.Field(nullable=True, ge=0)
    user_segment: str = pa.Field(nullable=False)
    email: str = pa.Field(nullable=True)

    @pa.dataframe_check(name="revenue_only_on_purchase")
    def revenue_only_on_purchase(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(
            (pl.col("event_type") == "purchase") | pl.col("revenue").is_null()
        )

    @pa.dataframe_check(name="purchase_has_revenue")
    def purchase_has_revenue(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(
            (pl.col("event_type") != "purchase") | pl.col("revenue").is_not_null()
        )

    class Config:
        strict = False  # lineage columns travel alongside the contract columns


_CHECK_REASONS = {
    "not_nullable": "missing_value",
    "isin": "invalid_value",
    "greater_than_or_equal_to": "out_of_range",
    "less_than_or_equal_to": "out_of_range",
    "str_length": "empty_value",
}


def reason_for(check: str, column: str | None) -> str:
    """A short, stable quarantine reason for a pandera failure (e.g. ``invalid_value:event_type``)."""
    base = check.split("(", 1)[0]
    if column == "revenue" and base == "greater_than_or_equal_to":
        return "negative_value:revenue"
    code = _CHECK_REASONS.get(base, base)
    if column and column != TypedEvent.__name__:
        return f"{code}:{column}"
    return code


def silver_schema() -> dict[str, pl.DataType]:
    """Column order and types of ``silver/events``, as the catalog declares them (a fresh copy)."""
    return dict(catalog.SILVER_EVENTS.schema)
