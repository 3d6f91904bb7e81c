"""Purchase propensity: an MLP over tabular features, trained from streamed Delta batches.

The model carries its standardisation statistics as buffers, so its
``state_dict`` + :meth:`PurchaseMLP.spec` are all that serving needs: raw
feature values in, logits out. Training is seeded and deterministic (same
seed, same data order -> same weights and metrics), stops early on the
validation loss and returns the best epoch's weights.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from hybrid_pipeline.ml.device import DeviceSettings, pick_device
from hybrid_pipeline.ml.metrics import binary_metrics
from hybrid_pipeline.ml.purchase_config import PurchaseTrainConfig
from hybrid_pipeline.ml.tabular import RunningMoments, Standardizer, TensorBatch
from hybrid_pipeline.ml.training import TrainResult, deterministic_mode, fit, seed_everything, torch_threads

ARCHITECTURE = "purchase_mlp"
_DEFAULTS = PurchaseTrainConfig()


class PurchaseMLP(nn.Module):
    """``standardise -> [Linear -> ReLU -> Dropout] x len(hidden_sizes) -> Linear(1)``; returns logits."""

    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(
        self,
        input_dim: int,
        hidden_sizes: Sequence[int] = _DEFAULTS.hidden_sizes,
        dropout: float = _DEFAULTS.dropout,
        feature_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if input_dim < 1:
            raise ValueError("input_dim must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if feature_names is not None and len(feature_names) != input_dim:
            raise ValueError(f"{len(feature_names)} feature names for input_dim={input_dim}")
        self.input_dim = int(input_dim)
        self.hidden_sizes = [int(h) for h in hidden_sizes]
        self.dropout = float(dropout)
        self.feature_names = list(feature_names) if feature_names is not None else None
        self.register_buffer("feature_mean", torch.zeros(input_dim))
        self.register_buffer("feature_std", torch.ones(input_dim))
        layers: list[nn.Module] = []
        width = input_dim
        for h in self.hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def set_standardization(self, standardizer: Standardizer | None) -> None:
        if standardizer is None:
            self.feature_mean.zero_()
            self.feature_std.fill_(1.0)
            return
        if len(standardizer.mean) != self.input_dim:
            raise ValueError("standardisation statistics do not match input_dim")
        self.feature_mean.copy_(torch.as_tensor(standardizer.mean, dtype=torch.float32))
        self.feature_std.copy_(torch.as_tensor(standardizer.std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.feature_mean) / self.feature_std
        return self.net(x).squeeze(-1)

    def spec(self) -> dict[str, Any]:
        return {
            "architecture": ARCHITECTURE,
            "kwargs": {"input_dim": self.input_dim, "hidden_sizes": list(self.hidden_sizes),
                       "dropout": self.dropout, "feature_names": self.feature_names},
        }


ValidData = TensorBatch | tuple[torch.Tensor, torch.Tensor]


def _xy(data: ValidData, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = data[0], data[1]
    if y is None:
        raise ValueError(f"{name} data needs labels")
    X = torch.as_tensor(X, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.float32).reshape(-1)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: X must be rows x features and match y ({tuple(X.shape)} vs {tuple(y.shape)})")
    return X, y


@torch.inference_mode()
def _logits(model: nn.Module, X: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    model.eval()
    out = [model(X[i:i + batch_size].to(device)).float().cpu() for i in range(0, X.shape[0], batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def predict_proba(
    model: nn.Module,
    X: torch.Tensor | np.ndarray,
    batch_size: int = 65_536,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """P(purchase) per row as a float64 numpy array; the model is put in eval mode."""
    X_t = torch.as_tensor(X, dtype=torch.float32)
    if device is None:
        device = next(model.parameters()).device
    dev = torch.device(device)
    return torch.sigmoid(_logits(model, X_t, dev, batch_size)).double().numpy()


def train_purchase_model(
    train_batches_fn: Callable[[], Iterable[TensorBatch]],
    valid: ValidData,
    config: PurchaseTrainConfig = PurchaseTrainConfig(),
    *,
    test: ValidData | None = None,
    standardizer: Standardizer | None = None,
    device: DeviceSettings | None = None,
) -> TrainResult:
    """Train the MLP; ``train_batches_fn()`` yields one epoch of ``TensorBatch`` chunks.

    Each chunk (e.g. 65,536 rows from :class:`~hybrid_pipeline.ml.tabular.DeltaTensorSource`)
    is moved to the device once, shuffled with a seeded generator and cut into
    ``batch_size`` minibatches. With ``standardize`` and no ``standardizer``,
    statistics come from one extra streaming pass over the training data.
    Early stopping watches the validation loss; the best epoch's weights are
    kept. Metrics: ``valid_*`` (and ``test_*`` with ``test``) AUC, log loss,
    ECE (10 bins), accuracy, plus rows, parameter count and timings.
    """
    if config.batch_size < 1 or config.max_epochs < 1:
        raise ValueError("batch_size and max_epochs must be >= 1")
    settings = device or pick_device(config.device)
    dev = settings.torch_device
    Xv, yv = _xy(valid, "validation")
    test_xy = _xy(test, "test") if test is not None else None

    with deterministic_mode(config.deterministic) as det, torch_threads(config.num_threads):
        seed_everything(config.seed)
        started = time.perf_counter()
        if config.standardize and standardizer is None:
            moments = RunningMoments()
            for chunk in train_batches_fn():
                moments.update(chunk.X)
            standardizer = moments.result()
        stats_seconds = time.perf_counter() - started

        model = PurchaseMLP(Xv.shape[1], config.hidden_sizes, config.dropout, config.feature_names)
        model.set_standardization(standardizer if config.standardize else None)
        model.to(dev)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                      weight_decay=config.weight_decay)
        pos_weight = (torch.tensor(config.pos_weight, device=dev) if config.pos_weight is not None else None)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        shuffle_gen = torch.Generator().manual_seed(config.seed)

        def minibatches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            """Each chunk moved to the device once, shuffled with the seeded generator, cut into minibatches."""
            for chunk in train_batches_fn():
                X, y = chunk.X, chunk.y
                if y is None:
                    raise ValueError("training batches need labels")
                n = int(X.shape[0])
                if n == 0:
                    continue
                if settings.pin_memory:
                    X, y = X.pin_memory(), y.pin_memory()
                X = X.to(dev, non_blocking=settings.pin_memory)
                y = y.to(dev, non_blocking=settings.pin_memory)
                order = (torch.randperm(n, generator=shuffle_gen) if config.shuffle else torch.arange(n)).to(dev)
                for start in range(0, n, config.batch_size):
                    idx = order[start:start + config.batch_size]
                    yield X[idx], y[idx]

        @torch.no_grad()
        def valid_loss(m: nn.Module) -> float:
            return float(loss_fn(_logits(m, Xv, dev, config.eval_batch_size).to(dev), yv.to(dev)).item())

        fitted = fit(model, optimizer, loss_fn, minibatches, valid_loss, settings,
                     max_epochs=config.max_epochs, patience=config.patience, min_delta=config.min_delta)
        train_seconds = time.perf_counter() - started

    metrics: dict[str, float] = {}
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, (Xs, ys) in [("valid", (Xv, yv))] + ([("test", test_xy)] if test_xy is not None else []):
        prob = predict_proba(model, Xs, config.eval_batch_size, dev)
        y_np = ys.double().numpy()
        predictions[split] = (y_np, prob)
        for k, v in binary_metrics(y_np, prob).items():
            metrics[f"{split}_{k}"] = v
    metrics.update({
        "train_rows": float(fitted.rows),
        "standardize_seconds": stats_seconds,
        "train_rows_per_second": fitted.rows / float(np.mean([e.seconds for e in fitted.loss_curve])),
    })
    return fitted.result(
        model, params=config.to_params(), metrics=metrics, train_seconds=train_seconds, settings=settings,
        deterministic=det, predictions=predictions,
        extra={"standardizer": standardizer.to_dict() if standardizer is not None else None,
               "device_settings": asdict(settings)},
    )


__all__ = ["ARCHITECTURE", "PurchaseMLP", "PurchaseTrainConfig", "predict_proba", "train_purchase_model"]
