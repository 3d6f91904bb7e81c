"""Launchpad config of the model assets; the defaults live in :mod:`hybrid_pipeline.ml`, the one place they are set."""

import dagster as dg

from hybrid_pipeline.ml.digit_config import DigitTrainConfig
from hybrid_pipeline.ml.purchase_config import PurchaseTrainConfig

_PURCHASE_DEFAULTS = PurchaseTrainConfig()
_DIGIT_DEFAULTS = DigitTrainConfig()


class PurchaseModelConfig(dg.Config):
    """Hyperparameters and holdout of ``models/purchase_model`` in the launchpad.

    Defaults come from :class:`~hybrid_pipeline.ml.purchase_config.PurchaseTrainConfig`, the one
    place they are set; where it runs (device, threads) comes from the ``torch_device`` resource.
    """

    hidden_sizes: list[int] = list(_PURCHASE_DEFAULTS.hidden_sizes)
    dropout: float = _PURCHASE_DEFAULTS.dropout
    learning_rate: float = _PURCHASE_DEFAULTS.learning_rate
    weight_decay: float = _PURCHASE_DEFAULTS.weight_decay
    batch_size: int = _PURCHASE_DEFAULTS.batch_size
    max_epochs: int = _PURCHASE_DEFAULTS.max_epochs
    patience: int = _PURCHASE_DEFAULTS.patience
    min_delta: float = _PURCHASE_DEFAULTS.min_delta
    seed: int = _PURCHASE_DEFAULTS.seed
    split_salt: str = _PURCHASE_DEFAULTS.split_salt
    valid_fraction: float = _PURCHASE_DEFAULTS.valid_fraction
    test_fraction: float = _PURCHASE_DEFAULTS.test_fraction
    min_training_rows: int = _PURCHASE_DEFAULTS.min_training_rows

    def train_config(self, device: str, num_threads: int | None) -> PurchaseTrainConfig:
        d = self.model_dump()
        d["hidden_sizes"] = tuple(d["hidden_sizes"])
        return PurchaseTrainConfig(**d, device=device, num_threads=num_threads)


class DigitModelConfig(dg.Config):
    """Hyperparameters of ``models/digit_classifier`` in the launchpad.

    Defaults come from :class:`~hybrid_pipeline.ml.digit_config.DigitTrainConfig`, the one place
    they are set; where it runs (device, threads) comes from the ``torch_device`` resource.
    """

    channels: list[int] = list(_DIGIT_DEFAULTS.channels)
    hidden: int = _DIGIT_DEFAULTS.hidden
    dropout: float = _DIGIT_DEFAULTS.dropout
    learning_rate: float = _DIGIT_DEFAULTS.learning_rate
    weight_decay: float = _DIGIT_DEFAULTS.weight_decay
    batch_size: int = _DIGIT_DEFAULTS.batch_size
    max_epochs: int = _DIGIT_DEFAULTS.max_epochs
    patience: int = _DIGIT_DEFAULTS.patience
    min_delta: float = _DIGIT_DEFAULTS.min_delta
    seed: int = _DIGIT_DEFAULTS.seed
    verify_sha256: bool = _DIGIT_DEFAULTS.verify_sha256
    min_training_rows: int = _DIGIT_DEFAULTS.min_training_rows

    def train_config(self, device: str, num_threads: int | None) -> DigitTrainConfig:
        d = self.model_dump()
        d["channels"] = tuple(d["channels"])
        return DigitTrainConfig(**d, device=device, num_threads=num_threads)
