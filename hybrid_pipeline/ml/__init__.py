"""The AI branch's library: devices, Delta -> tensors, models, training, metrics, registry, drift.

Pure code, no Dagster imports (the assets in ``defs/`` wrap it). Everything is
imported lazily (PEP 562), so ``import hybrid_pipeline.ml`` costs nothing
until a name is used: torch, mlflow and matplotlib are heavy.

Modules: ``device`` (pick_device), ``tabular`` (streaming Delta -> tensors,
standardisation), ``metrics`` (AUC, log loss, ECE in numpy), ``training``
(seeds, determinism, the shared epoch loop ``fit``, TrainResult), ``purchase_model``
(MLP; its hyperparameters in ``purchase_config``), ``digit_model`` (CNN on the image
manifest; its hyperparameters in ``digit_config``), ``architectures`` (spec -> module),
``plots`` (PNG / markdown), ``registry`` (MLflow runs + model registry), ``drift`` (PSI),
``training_set`` (the purchase training set at pinned Delta versions, through Feast),
``reproduce`` (the purchase recipe and rebuilding a registered version).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DeviceConfig": "device",
    "DeviceSettings": "device",
    "pick_device": "device",
    "DeltaTensorSource": "tabular",
    "Standardizer": "tabular",
    "TensorBatch": "tabular",
    "compute_standardization": "tabular",
    "delta_standardization": "tabular",
    "iter_delta_batches": "tabular",
    "load_tensors": "tabular",
    "tensor_batches": "tabular",
    "binary_metrics": "metrics",
    "expected_calibration_error": "metrics",
    "log_loss": "metrics",
    "roc_auc": "metrics",
    "TrainResult": "training",
    "PurchaseMLP": "purchase_model",
    "PurchaseTrainConfig": "purchase_config",
    "predict_proba": "purchase_model",
    "train_purchase_model": "purchase_model",
    "DigitCNN": "digit_model",
    "DigitTrainConfig": "digit_config",
    "train_digit_classifier": "digit_model",
    "build_model": "architectures",
    "ModelRegistry": "registry",
    "log_training_run": "registry",
    "log_train_result": "registry",
    "register_model": "registry",
    "load_model_version": "registry",
    "set_production": "registry",
    "get_production": "registry",
    "drift_report": "drift",
    "psi": "drift",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = sorted(_LAZY)
