"""The purchase model as a scoring function: what ``POST /predict`` calls and what the checks score with.

No Dagster here, so ``hybrid-pipeline serve`` loads the production model without importing it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from hybrid_pipeline.ml import reproduce as recipe

PURCHASE_MODEL_NAME = recipe.MODEL_NAME


def encoding_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """The feature encoding a model was trained with (stored in its config), else the current one."""
    return dict((config.get("extra") or {}).get("encoding") or recipe.encoding_spec())


def score(model: Any, encoding: Mapping[str, Any], rows: pl.DataFrame | Sequence[Mapping[str, Any]],
          device: Any = None) -> np.ndarray:
    """Purchase probabilities of ``rows`` (raw feature columns), encoded like the training rows."""
    from hybrid_pipeline.ml.purchase_model import predict_proba

    X = recipe.encode_features(rows, encoding)
    if X.shape[0] == 0:
        return np.empty(0, dtype=np.float64)
    return predict_proba(model, X, device=device)


class PurchasePredictor:
    """``predictor(feature_dicts) -> scores``: the serving API's ``POST /predict`` callable.

    Feature dicts are what the online store returns (raw feature columns); they are encoded
    exactly like the training rows (the encoding stored with the model) and scored on CPU.
    """

    def __init__(self, model: Any, encoding: Mapping[str, Any], version: int | None = None,
                 run_id: str | None = None, name: str = PURCHASE_MODEL_NAME) -> None:
        self.model = model.eval()
        self.encoding = dict(encoding)
        self.version = version
        self.run_id = run_id
        self.name = name

    @classmethod
    def from_registry(cls, tracking_uri: str, name: str = PURCHASE_MODEL_NAME,
                      version: int | str = "production") -> PurchasePredictor:
        from hybrid_pipeline.ml.registry import load_model_version

        loaded = load_model_version(tracking_uri, name, version, map_location="cpu")
        return cls(loaded.model, encoding_of(loaded.config), loaded.version, loaded.run_id, name)

    def __call__(self, feature_dicts: Sequence[Mapping[str, Any]]) -> list[float]:
        return [float(p) for p in score(self.model, self.encoding, list(feature_dicts), device="cpu")]


def purchase_predictor(tracking_uri: str, version: int | str = "production",
                       name: str = PURCHASE_MODEL_NAME) -> PurchasePredictor:
    """The production purchase model (or ``version``) as a ``predictor`` for ``create_app(..., predictor=...)``."""
    return PurchasePredictor.from_registry(tracking_uri, name, version)
