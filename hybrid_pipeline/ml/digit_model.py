"""A small CNN for grayscale images from the image manifest (the scikit-learn digits by default).

Reads the raw bronze files through :class:`~hybrid_pipeline.media.dataset.ImageManifestDataset`
(sha256-verified) with the manifest's hash-based train/validation/test splits,
early-stops on the validation loss and reports test accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from hybrid_pipeline.media.dataset import ImageManifestDataset, make_loader
from hybrid_pipeline.ml.digit_config import DigitTrainConfig
from hybrid_pipeline.ml.device import DeviceSettings, pick_device
from hybrid_pipeline.ml.metrics import expected_calibration_error
from hybrid_pipeline.ml.training import TrainResult, deterministic_mode, fit, seed_everything, torch_threads

ARCHITECTURE = "digit_cnn"
_DEFAULTS = DigitTrainConfig()


class DigitCNN(nn.Module):
    """``[Conv3x3 -> BatchNorm -> ReLU -> MaxPool2] x len(channels) -> AdaptiveAvgPool(4x4) -> MLP``.

    Input ``N x 1 x H x W`` (any H, W >= 2**len(channels)); output class logits.
    """

    def __init__(
        self,
        num_classes: int = 10,
        channels: Sequence[int] = _DEFAULTS.channels,
        hidden: int = _DEFAULTS.hidden,
        dropout: float = _DEFAULTS.dropout,
        in_channels: int = 1,
        image_size: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError("num_classes must be >= 2")
        self.num_classes = int(num_classes)
        self.channels = [int(c) for c in channels]
        self.hidden = int(hidden)
        self.dropout = float(dropout)
        self.in_channels = int(in_channels)
        self.image_size = [int(s) for s in image_size] if image_size is not None else None
        self.class_names = list(class_names) if class_names is not None else None
        blocks: list[nn.Module] = []
        width = in_channels
        for c in self.channels:
            blocks += [nn.Conv2d(width, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.MaxPool2d(2)]
            width = c
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d((4, 4)))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(width * 16, self.hidden), nn.ReLU(), nn.Dropout(self.dropout),
            nn.Linear(self.hidden, self.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def spec(self) -> dict[str, Any]:
        return {
            "architecture": ARCHITECTURE,
            "kwargs": {"num_classes": self.num_classes, "channels": list(self.channels),
                       "hidden": self.hidden, "dropout": self.dropout, "in_channels": self.in_channels,
                       "image_size": self.image_size, "class_names": self.class_names},
        }


def _classes(manifest: pl.DataFrame) -> list[str]:
    if "label_name" in manifest.columns:
        pairs = manifest.select("label", "label_name").unique().sort("label")
        if pairs["label"].n_unique() != pairs.height:
            raise ValueError("manifest maps one label index to several label names")
        names = dict(zip(pairs["label"].to_list(), pairs["label_name"].to_list(), strict=True))
    else:
        names = {int(i): str(i) for i in manifest["label"].unique().to_list()}
    n = max(names) + 1
    return [str(names.get(i, i)) for i in range(n)]


@torch.inference_mode()
def _evaluate(model: nn.Module, loader: DataLoader[Any], settings: DeviceSettings) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy, softmax probabilities and labels over a loader."""
    model.eval()
    dev = settings.torch_device
    losses, probs, labels = [], [], []
    for xb, yb in loader:
        xb = xb.to(dev, non_blocking=settings.pin_memory)
        yb = yb.to(dev, non_blocking=settings.pin_memory)
        with settings.autocast():
            logits = model(xb)
        logits = logits.float()
        losses.append(nn.functional.cross_entropy(logits, yb, reduction="sum").item())
        probs.append(torch.softmax(logits, dim=1).cpu().numpy())
        labels.append(yb.cpu().numpy())
    if not labels:
        return float("nan"), np.empty((0, 0)), np.empty(0, dtype=np.int64)
    y = np.concatenate(labels)
    return float(sum(losses) / y.size), np.concatenate(probs), y


def train_digit_classifier(
    manifest: pl.DataFrame,
    bronze_media_root: str | Path,
    config: DigitTrainConfig = DigitTrainConfig(),
    *,
    device: DeviceSettings | None = None,
) -> TrainResult:
    """Train :class:`DigitCNN` on the manifest's ``train`` split; early-stop on ``validation``; score ``test``.

    Metrics: ``test_accuracy``, ``test_loss``, ``test_ece`` (top-label, 10 bins),
    ``valid_accuracy``, ``valid_loss``, row counts per split, ``n_params``,
    timings. ``predictions`` holds ``(labels, class probabilities)`` per split.
    """
    missing = {"sha256", "bronze_path", "label"} - set(manifest.columns)
    if missing:
        raise ValueError(f"manifest lacks columns {sorted(missing)}")
    classes = _classes(manifest)
    settings = device or pick_device(config.device)
    dev = settings.torch_device

    def dataset(split: str) -> ImageManifestDataset:
        return ImageManifestDataset(manifest, bronze_media_root, split=split,  # type: ignore[arg-type]
                                    image_size=config.image_size, verify_sha256=config.verify_sha256)

    train_ds, valid_ds, test_ds = dataset("train"), dataset("validation"), dataset("test")
    for name, ds in (("train", train_ds), ("validation", valid_ds)):
        if len(ds) == 0:
            raise ValueError(f"the manifest has no {name} rows")

    def loader(ds: ImageManifestDataset, shuffle: bool) -> DataLoader[Any]:
        return make_loader(ds, batch_size=config.batch_size, workers=config.workers,
                           pin_memory=settings.pin_memory, shuffle=shuffle, seed=config.seed)

    with deterministic_mode(config.deterministic) as det, torch_threads(config.num_threads):
        seed_everything(config.seed)
        started = time.perf_counter()
        first_x, _ = train_ds[0]
        image_size = list(first_x.shape[-2:])
        model = DigitCNN(len(classes), config.channels, config.hidden, config.dropout, in_channels=1,
                         image_size=image_size, class_names=classes).to(dev)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                      weight_decay=config.weight_decay)
        train_loader = loader(train_ds, shuffle=True)
        valid_loader = loader(valid_ds, shuffle=False)

        def minibatches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for xb, yb in train_loader:
                yield xb.to(dev, non_blocking=settings.pin_memory), yb.to(dev, non_blocking=settings.pin_memory)

        fitted = fit(model, optimizer, nn.functional.cross_entropy, minibatches,
                     lambda m: _evaluate(m, valid_loader, settings)[0], settings,
                     max_epochs=config.max_epochs, patience=config.patience, min_delta=config.min_delta)
        train_seconds = time.perf_counter() - started

    metrics: dict[str, float] = {}
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, ds in (("valid", valid_ds), ("test", test_ds)):
        if len(ds) == 0:
            continue
        loss_value, prob, y = _evaluate(model, loader(ds, shuffle=False), settings)
        predictions[split] = (y, prob)
        metrics[f"{split}_loss"] = loss_value
        metrics[f"{split}_accuracy"] = float(np.mean(prob.argmax(axis=1) == y))
        metrics[f"{split}_ece"] = expected_calibration_error(y, prob)
    metrics.update({"train_rows": float(len(train_ds)), "valid_rows": float(len(valid_ds)),
                    "test_rows": float(len(test_ds))})
    return fitted.result(
        model, params=config.to_params(), metrics=metrics, train_seconds=train_seconds, settings=settings,
        deterministic=det, predictions=predictions,
        extra={"classes": classes, "image_size": image_size, "device_settings": asdict(settings),
               "split_rows": {"train": len(train_ds), "validation": len(valid_ds), "test": len(test_ds)}},
    )


@torch.inference_mode()
def predict_digits(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (rows x classes) for a batch of ``N x 1 x H x W`` images."""
    model.eval()
    dev = next(model.parameters()).device
    out = [torch.softmax(model(images[i:i + batch_size].to(dev)).float(), dim=1).cpu()
           for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out).numpy() if out else np.empty((0, 0))


__all__ = ["ARCHITECTURE", "DigitCNN", "DigitTrainConfig", "predict_digits", "train_digit_classifier"]
