"""What drift is measured on for the purchase model: its inputs as the model sees them.

A pure library (no Dagster): the ``feature_drift`` check frames both sides with :func:`drift_frame`
and judges the :data:`DRIFT_COLUMNS` with :func:`hybrid_pipeline.ml.drift.drift_report`.
"""

from __future__ import annotations

from typing import Final

import polars as pl

from hybrid_pipeline.ml import reproduce as recipe_mod


def drift_frame(rows: pl.DataFrame) -> pl.DataFrame:
    """The columns drift is measured on: numeric features as they are, the segment as a category,
    and the recent event types as a count per type (the way the model sees them)."""
    numeric = list(recipe_mod.NUMERIC_FEATURES)
    counts = recipe_mod.encode_frame(rows).select(f"recent_{t}" for t in recipe_mod.EVENT_TYPES)
    raw = recipe_mod.raw_feature_frame(rows)
    return pl.concat([raw.select(*numeric, "user_segment"), counts], how="horizontal")


# Aggregates over a user's whole history. Their distribution moves with the length of the history
# itself: ``total_events`` only grows, and ``avg_session_duration`` (a lifetime mean) narrows as
# events accumulate. The training snapshot always lags the newest day (labels need a complete
# 7-day horizon), so on any growing dataset these two drift every day, and a retrain cannot make
# that go away: in the verdict they would turn "retrain on drift" into "retrain on every update".
# Their PSI is measured and reported (``lifetime_psi``) but does not decide the check.
LIFETIME_FEATURES: Final = ("total_events", "avg_session_duration")
_DRIFT_CANDIDATES: Final = [*recipe_mod.NUMERIC_FEATURES, "user_segment", *[f"recent_{t}" for t in recipe_mod.EVENT_TYPES]]
DRIFT_COLUMNS: Final = [c for c in _DRIFT_CANDIDATES if c not in LIFETIME_FEATURES]
"""The model inputs whose PSI decides the drift check (every input but :data:`LIFETIME_FEATURES`)."""
