"""A small CNN for grayscale images from the image manifest (the scikit-learn digits by default).

Reads the raw bronze files through :class:`~hybrid_pipeline.media.dataset.ImageManifestDataset`
(sha256-verified) with the manifest's hash-based train/validation/test splits,
early-stops on the validation loss and reports test accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from hybrid_pipeline.media.dataset import ImageManifestDataset, make_loader
from hybrid_pipeline.ml.device import DeviceSettings, pick_device
from hybrid_pipeline.ml.metrics import expected_calibration_error
from hybrid_pipeline.ml.training import (
    EarlyStopping,
    EpochLoss,
    TrainResult,
    count_parameters,
    deterministic_mode,
    seed_everything,
    torch_threads,
)

ARCHITECTURE = "digit_cnn"


class DigitCNN(nn.Module):
    """``[Conv3x3 -> BatchNorm -> ReLU -> MaxPool2] x len(channels) -> AdaptiveAvgPool(4x4) -> MLP``.

    Input ``N x 1 x H x W`` (any H, W >= 2**len(channels)); output class logits.
    """

    def __init__(
        self,
        num_classes: int = 10,
        channels: Sequence[int] = (16, 32),
        hidden: int = 64,
        dropout: float = 0.25,
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


@dataclass(frozen=True)
class DigitTrainConfig:
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

    def to_params(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size) if self.image_size else None
        d["channels"] = list(self.channels)
        return d


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
        scaler = torch.amp.GradScaler("cuda") if settings.needs_grad_scaler else None
        train_loader = loader(train_ds, shuffle=True)
        valid_loader = loader(valid_ds, shuffle=False)
        stopper = EarlyStopping(config.patience, config.min_delta)
        curve: list[EpochLoss] = []
        stopped_early = False
        for epoch in range(1, config.max_epochs + 1):
            t_epoch = time.perf_counter()
            model.train()
            loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
            seen = 0
            for xb, yb in train_loader:
                xb = xb.to(dev, non_blocking=settings.pin_memory)
                yb = yb.to(dev, non_blocking=settings.pin_memory)
                optimizer.zero_grad(set_to_none=True)
                with settings.autocast():
                    logits = model(xb)
                loss = nn.functional.cross_entropy(logits.float(), yb)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                loss_sum += loss.detach().double() * yb.shape[0]
                seen += int(yb.shape[0])
            valid_loss, _, _ = _evaluate(model, valid_loader, settings)
            curve.append(EpochLoss(epoch, float(loss_sum.item()) / seen, valid_loss,
                                   time.perf_counter() - t_epoch))
            if stopper.step(epoch, valid_loss, model):
                stopped_early = epoch < config.max_epochs
                break
        stopper.restore(model)
        model.eval()
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
    n_params = count_parameters(model)
    metrics.update({
        "train_rows": float(len(train_ds)),
        "valid_rows": float(len(valid_ds)),
        "test_rows": float(len(test_ds)),
        "n_params": float(n_params),
        "epochs_run": float(len(curve)),
        "best_epoch": float(stopper.best_epoch),
        "best_valid_loss": stopper.best_loss,
        "train_seconds": train_seconds,
        "seconds_per_epoch": float(np.mean([e.seconds for e in curve])),
    })
    return TrainResult(
        model=model,
        model_spec=model.spec(),
        params=config.to_params(),
        metrics=metrics,
        loss_curve=curve,
        best_epoch=stopper.best_epoch,
        epochs_run=len(curve),
        stopped_early=stopped_early,
        rows=len(train_ds),
        n_params=n_params,
        train_seconds=train_seconds,
        device=settings.description(),
        deterministic=det,
        predictions=predictions,
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
