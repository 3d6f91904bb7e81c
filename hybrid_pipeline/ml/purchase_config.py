"""The purchase model's hyperparameters, without torch: the one place their defaults live.

``models/purchase_model``'s run config (``PurchaseModelConfig`` in ``hybrid_pipeline.defs.models.config``)
takes its defaults from here, the trainer (:func:`~hybrid_pipeline.ml.purchase_model.train_purchase_model`)
runs with it, and reproduction reads it back from a run record (:meth:`PurchaseTrainConfig.from_params`).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from hybrid_pipeline.ml.readiness import MIN_TRAINING_ROWS


@dataclass(frozen=True)
class PurchaseTrainConfig:
    """Every knob of a purchase-model training run; all of it is recorded with the run.

    The hyperparameters and the holdout (``split_salt``, ``valid_fraction``, ``test_fraction``:
    which users are held out, see :func:`hybrid_pipeline.ml.reproduce.split_of`) decide the
    model; ``device`` and ``num_threads`` only decide where it runs. ``min_training_rows``
    decides whether it trains at all (see :mod:`hybrid_pipeline.ml.readiness`).
    """

    hidden_sizes: tuple[int, ...] = (32, 16)
    dropout: float = 0.1
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 60
    patience: int = 8
    min_delta: float = 1e-4
    seed: int = 0
    split_salt: str = "purchase_model/v1"
    valid_fraction: float = 0.15
    test_fraction: float = 0.2
    min_training_rows: int = MIN_TRAINING_ROWS
    device: str = "auto"
    standardize: bool = True
    shuffle: bool = True
    deterministic: bool = True
    num_threads: int | None = None  # CPU intra-op threads for this call (None: torch's default)
    pos_weight: float | None = None
    feature_names: tuple[str, ...] | None = None
    eval_batch_size: int = 65_536

    def to_params(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        d["feature_names"] = list(self.feature_names) if self.feature_names else None
        return d

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PurchaseTrainConfig:
        """From :meth:`to_params` output, or from MLflow's flattened string params; other keys are ignored."""
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _parse(params[f.name], hints[f.name]) for f in fields(cls) if f.name in params})


def _parse(value: Any, hint: Any) -> Any:
    """``value`` (as given, or as MLflow's string of it) as the field type ``hint``."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None or value == "None":
            return None
        [hint] = [a for a in args if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        items = json.loads(value) if isinstance(value, str) else value
        return tuple(typing.get_args(hint)[0](v) for v in items)
    if hint is bool:
        return value if isinstance(value, bool) else str(value).lower() == "true"
    return hint(value)


__all__ = ["PurchaseTrainConfig"]
