"""The digit classifier's hyperparameters, without torch: the asset's run config derives its defaults from here."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hybrid_pipeline.ml.readiness import MIN_TRAINING_ROWS


@dataclass(frozen=True)
class DigitTrainConfig:
    """Hyperparameters and run settings of :func:`~hybrid_pipeline.ml.digit_model.train_digit_classifier`.

    The one place their defaults live: ``models/digit_classifier``'s run config
    (``DigitModelConfig`` in ``hybrid_pipeline.defs.models.config``) takes its defaults from here.
    """

    image_size: tuple[int, int] | None = None  # None: the files' own size (32x32 for the demo digits)
    channels: tuple[int, ...] = (16, 32)
    hidden: int = 64
    dropout: float = 0.25
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 10
    patience: int = 3
    min_delta: float = 1e-4
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    deterministic: bool = True
    num_threads: int | None = None  # CPU intra-op threads for this call (None: torch's default)
    verify_sha256: bool = True
    min_training_rows: int = MIN_TRAINING_ROWS  # fewer manifest images: no training (hybrid_pipeline.ml.readiness)

    def to_params(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size) if self.image_size else None
        d["channels"] = list(self.channels)
        return d


__all__ = ["DigitTrainConfig"]
