"""Whether a model has enough rows to learn from: the one rule every path that trains applies.

A model trained on a handful of rows registers a version that the gate may promote and the
batch scores then use, so too few rows means no training at all. The rule is applied by the
model assets themselves, so a manual materialization, the automation sensor and
``hybrid-pipeline materialize`` all decide the same way.
"""

from __future__ import annotations

from typing import Final

MIN_TRAINING_ROWS: Final = 100
"""Default minimum of training rows (labelled users, manifest images) for both models."""


def too_few_rows(rows: int, minimum: int, unit: str) -> str | None:
    """Why ``rows`` ``unit`` are not enough to train on (``"42 labelled rows < 100"``), or None when they are."""
    return None if rows >= minimum else f"{rows} {unit} < {minimum}"


__all__ = ["MIN_TRAINING_ROWS", "too_few_rows"]
