"""Model specs -> modules: how a stored model is rebuilt without pickled code.

A spec is plain JSON, ``{"architecture": name, "kwargs": {...}}``, written by
each model's ``spec()``; weights travel separately as a ``state_dict``. Loading
needs this package's class of that name, never the training run's closure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn


def _purchase_mlp(**kwargs: Any) -> nn.Module:
    from hybrid_pipeline.ml.purchase_model import PurchaseMLP

    return PurchaseMLP(**kwargs)


def _digit_cnn(**kwargs: Any) -> nn.Module:
    from hybrid_pipeline.ml.digit_model import DigitCNN

    return DigitCNN(**kwargs)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "purchase_mlp": _purchase_mlp,
    "digit_cnn": _digit_cnn,
}


def register_architecture(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make another module class loadable from the registry (factory(**kwargs) -> module)."""
    if name in ARCHITECTURES and ARCHITECTURES[name] is not factory:
        raise ValueError(f"architecture {name!r} is already registered")
    ARCHITECTURES[name] = factory


def model_spec(model: nn.Module) -> dict[str, Any]:
    spec = getattr(model, "spec", None)
    if not callable(spec):
        raise TypeError(f"{type(model).__name__} has no spec(); cannot be stored as state_dict + config")
    return dict(spec())


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """A fresh (untrained) module from its spec."""
    name = spec.get("architecture")
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](**dict(spec.get("kwargs") or {}))


__all__ = ["ARCHITECTURES", "build_model", "model_spec", "register_architecture"]
