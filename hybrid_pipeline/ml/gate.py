"""The evaluation gate's arithmetic: may a new purchase model version replace production?

Kept apart from the Dagster check that loads the models and records the verdict, so the rule
itself is tested with plain numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GateVerdict:
    """Whether the new version passed, and why not (empty when it passed)."""

    passed: bool
    reasons: tuple[str, ...]


def gate_verdict(new_auc: float, production_auc: float | None, production_version: int | None,
                 auc_floor: float, max_auc_regression: float) -> GateVerdict:
    """The new AUC must reach ``auc_floor`` and be no more than ``max_auc_regression`` below the
    production AUC on the same rows; a missing or undefined production AUC does not block."""
    floor_ok = math.isfinite(new_auc) and new_auc >= auc_floor
    regression_ok = (
        production_auc is None or not math.isfinite(production_auc) or new_auc >= production_auc - max_auc_regression
    )
    reasons = []
    if not floor_ok:
        reasons.append(f"AUC {new_auc:.4f} is below the floor {auc_floor}")
    if not regression_ok:
        reasons.append(f"AUC {new_auc:.4f} is more than {max_auc_regression} below production "
                       f"v{production_version} ({production_auc:.4f}) on the same rows")
    return GateVerdict(bool(floor_ok and regression_ok), tuple(reasons))
