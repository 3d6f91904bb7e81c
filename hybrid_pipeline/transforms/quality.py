"""Data-quality rules as pure functions: each returns an outcome the asset checks report.

Kept apart from Dagster so every rule is tested for pass and fail on plain frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from hybrid_pipeline.transforms.contract import EVENT_TYPES, REQUIRED_KEYS


@dataclass(frozen=True)
class Outcome:
    passed: bool
    severity: str = "ERROR"  # "ERROR" or "WARN"; meaningful when not passed
    metadata: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def schema_matches(actual: dict[str, pl.DataType], expected: dict[str, pl.DataType]) -> Outcome:
    missing = sorted(set(expected) - set(actual))
    wrong = sorted(c for c in expected if c in actual and actual[c] != expected[c])
    extra = sorted(set(actual) - set(expected))
    ok = not missing and not wrong
    return Outcome(
        ok,
        metadata={"missing_columns": missing, "wrong_types": [f"{c}: {actual[c]} != {expected[c]}" for c in wrong], "extra_columns": extra},
        description="schema matches the contract" if ok else "schema differs from the contract",
    )


def keys_not_null(events: pl.LazyFrame) -> Outcome:
    counts = events.select(pl.col(k).null_count().alias(k) for k in REQUIRED_KEYS).collect().row(0, named=True)
    bad = {k: v for k, v in counts.items() if v}
    return Outcome(not bad, metadata={"null_keys": bad or "none"})


def event_ids_unique(event_ids: pl.LazyFrame, elsewhere: pl.LazyFrame | None = None) -> Outcome:
    """No event_id twice in ``event_ids``, and none of them in ``elsewhere``.

    Checking a partition against the rest of the table (``elsewhere``) proves whole-table
    uniqueness for it at the cost of one hash probe per stored id, instead of grouping every
    id of the table again after each landing day.
    """
    ids = event_ids.select("event_id").collect()
    dupes = ids.group_by("event_id").len().filter(pl.col("len") > 1)
    clashes = (
        elsewhere.select("event_id").join(ids.lazy().unique(), on="event_id", how="semi").unique().collect()
        if elsewhere is not None
        else pl.DataFrame(schema={"event_id": pl.String})
    )
    found = pl.concat([dupes.select("event_id"), clashes]).unique(maintain_order=True)
    return Outcome(found.height == 0, metadata={"duplicated_event_ids": found.height, "sample": found.head(5)["event_id"].to_list()})


def enums_valid(events: pl.LazyFrame) -> Outcome:
    bad = events.filter(~pl.col("event_type").is_in(list(EVENT_TYPES))).select(pl.len()).collect().item()
    return Outcome(bad == 0, metadata={"invalid_event_types": bad})


def row_conservation(bronze: int, silver: int, quarantined: int, duplicates: int) -> Outcome:
    """The law of DESIGN.md: bronze == silver + quarantine + duplicates removed."""
    diff = bronze - (silver + quarantined + duplicates)
    return Outcome(
        diff == 0,
        metadata={"bronze": bronze, "silver": silver, "quarantined": quarantined, "duplicates": duplicates, "unaccounted": diff},
        description="every bronze row accounted for" if diff == 0 else f"{diff} rows unaccounted for",
    )


def quarantine_rate(bronze: int, quarantined: int, warn_above: float, error_above: float) -> Outcome:
    rate = quarantined / bronze if bronze else 0.0
    meta = {"quarantine_rate": round(rate, 6), "warn_above": warn_above, "error_above": error_above}
    if rate > error_above:
        return Outcome(False, "ERROR", meta, f"quarantine rate {rate:.2%} above {error_above:.0%}")
    if rate > warn_above:
        return Outcome(False, "WARN", meta, f"quarantine rate {rate:.2%} above {warn_above:.0%}")
    return Outcome(True, metadata=meta)


def gold_reconciles(silver: pl.LazyFrame, metrics: pl.LazyFrame, facts: pl.LazyFrame, tolerance: float = 1e-6) -> Outcome:
    """Per event date, gold counts and revenue equal silver's."""
    s = silver.group_by("event_date").agg(pl.len().alias("silver_events"), pl.col("revenue").sum().fill_null(0.0).alias("silver_revenue"))
    m = metrics.group_by("event_date").agg(pl.col("events").sum().alias("metric_events"), pl.col("total_revenue").sum().alias("metric_revenue"))
    f = facts.group_by("event_date").agg(pl.len().alias("fact_events"), pl.col("revenue").sum().alias("fact_revenue"))
    joined = s.join(m, on="event_date", how="full", coalesce=True).join(f, on="event_date", how="full", coalesce=True).fill_null(0).collect()
    bad = joined.filter(
        (pl.col("silver_events") != pl.col("metric_events"))
        | (pl.col("silver_events") != pl.col("fact_events"))
        | ((pl.col("silver_revenue") - pl.col("metric_revenue")).abs() > tolerance * (1 + pl.col("silver_revenue").abs()))
        | ((pl.col("silver_revenue") - pl.col("fact_revenue")).abs() > tolerance * (1 + pl.col("silver_revenue").abs()))
    )
    return Outcome(
        bad.height == 0,
        metadata={
            "dates_checked": joined.height,
            "dates_mismatched": [str(d) for d in bad["event_date"].to_list()],
            "silver_events": int(joined["silver_events"].sum()),
            "silver_revenue": round(float(joined["silver_revenue"].sum()), 2),
        },
    )
