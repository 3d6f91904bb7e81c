"""What every training loop here shares: seeding, determinism, the epoch loop with early
stopping (:func:`fit`), and the result (:class:`TrainResult`).

Why a context manager for determinism: ``torch.use_deterministic_algorithms``
and the cuDNN flags are process-global; a training call switches them on for
its own duration and puts back what it found, so it never changes the
behaviour of other code in the same process (a Dagster run worker, a test).
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from hybrid_pipeline.ml.device import DeviceSettings


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


@contextlib.contextmanager
def deterministic_mode(enabled: bool = True) -> Iterator[bool]:
    """Deterministic kernels for the block; restores the previous global settings after.

    ``warn_only=True``: ops with no deterministic implementation (some CUDA
    backward kernels such as max-pool) warn instead of failing the run. On
    CUDA, cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` before its first handle;
    it is set (if unset) here, which only takes effect when cuBLAS is not yet
    initialised in this process. Yields whether determinism is on.
    """
    if not enabled:
        yield False
        return
    prev = (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield True
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.deterministic = prev[2]
        torch.backends.cudnn.benchmark = prev[3]


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` intra-op CPU threads for the block (``None``: leave as is); restores after.

    Why: on a busy machine with few cores, OpenMP threads that spin-wait on each
    other can make a small model 5-10x slower than with one thread.
    """
    if n is None:
        yield
        return
    if n < 1:
        raise ValueError("num_threads must be >= 1")
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


class EarlyStopping:
    """Stop when the monitored loss has not improved by ``min_delta`` for ``patience`` epochs.

    Keeps a CPU copy of the best weights; :meth:`restore` loads them back.
    """

    def __init__(self, patience: int = 3, min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ValueError("patience must be >= 1")
        self.patience = patience
        self.min_delta = min_delta
        self.best_loss = float("inf")
        self.best_epoch = 0
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def step(self, epoch: int, loss: float, model: nn.Module) -> bool:
        """Record ``loss`` of ``epoch`` (1-based); True when training should stop."""
        if loss < self.best_loss - self.min_delta:
            self.best_loss = loss
            self.best_epoch = epoch
            self.bad_epochs = 0
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


@dataclass
class EpochLoss:
    epoch: int
    train_loss: float
    valid_loss: float
    seconds: float

    def to_dict(self) -> dict[str, float]:
        return {"epoch": self.epoch, "train_loss": self.train_loss, "valid_loss": self.valid_loss,
                "seconds": self.seconds}


@dataclass
class TrainResult:
    """A trained model (best epoch's weights, eval mode) and what a run record needs.

    ``model_spec`` rebuilds the module (:func:`hybrid_pipeline.ml.architectures.build_model`);
    ``params`` are the hyperparameters (seed included); ``metrics`` are plain
    floats ready for MLflow/Dagster metadata; ``predictions`` maps a split name
    to ``(y_true, y_prob)`` numpy arrays for plots.
    """

    model: nn.Module
    model_spec: dict[str, Any]
    params: dict[str, Any]
    metrics: dict[str, float]
    loss_curve: list[EpochLoss]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    rows: int
    n_params: int
    train_seconds: float
    device: str
    deterministic: bool
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def loss_curve_dicts(self) -> list[dict[str, float]]:
        return [e.to_dict() for e in self.loss_curve]

    def metric_history(self) -> dict[str, list[float]]:
        """Per-epoch series (``train_loss``, ``valid_loss``) for step-wise metric logging."""
        return {"train_loss": [e.train_loss for e in self.loss_curve],
                "valid_loss": [e.valid_loss for e in self.loss_curve]}

    def cpu_model(self) -> nn.Module:
        """A CPU copy of the model (the original may live on a GPU)."""
        return copy.deepcopy(self.model).to("cpu").eval()


@dataclass
class Fit:
    """What :func:`fit` produced: the loss curve, the best epoch (its weights are in the model), how it stopped."""

    loss_curve: list[EpochLoss]
    best_epoch: int
    best_loss: float
    stopped_early: bool
    rows: int  # training rows of the last epoch

    def result(
        self,
        model: nn.Module,
        *,
        params: dict[str, Any],
        metrics: dict[str, float],
        train_seconds: float,
        settings: DeviceSettings,
        deterministic: bool,
        predictions: dict[str, tuple[np.ndarray, np.ndarray]],
        extra: dict[str, Any],
    ) -> TrainResult:
        """The :class:`TrainResult` of ``model`` (which has a ``spec()``): ``metrics`` plus what every run reports
        (parameter count, epochs, best epoch and loss, timings)."""
        n_params = count_parameters(model)
        metrics = {
            **metrics,
            "n_params": float(n_params),
            "epochs_run": float(len(self.loss_curve)),
            "best_epoch": float(self.best_epoch),
            "best_valid_loss": self.best_loss,
            "train_seconds": train_seconds,
            "seconds_per_epoch": float(np.mean([e.seconds for e in self.loss_curve])),
        }
        return TrainResult(
            model=model,
            model_spec=model.spec(),  # type: ignore[operator]
            params=params,
            metrics=metrics,
            loss_curve=self.loss_curve,
            best_epoch=self.best_epoch,
            epochs_run=len(self.loss_curve),
            stopped_early=self.stopped_early,
            rows=self.rows,
            n_params=n_params,
            train_seconds=train_seconds,
            device=settings.description(),
            deterministic=deterministic,
            predictions=predictions,
            extra=extra,
        )


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    train_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    valid_loss: Callable[[nn.Module], float],
    settings: DeviceSettings,
    *,
    max_epochs: int,
    patience: int,
    min_delta: float,
) -> Fit:
    """The epoch loop every model here trains with; returns with the best epoch's weights loaded, in eval mode.

    Each epoch: ``train_batches()`` yields ``(x, y)`` minibatches already on the device; per
    minibatch one optimizer step on ``loss_fn(logits, y)`` (the forward pass under the device's
    autocast, the loss in float32, a gradient scaler where fp16 needs one); then
    ``valid_loss(model)`` feeds :class:`EarlyStopping`. The epoch's train loss is the
    row-weighted mean of its minibatch losses.
    """
    if max_epochs < 1:
        raise ValueError("max_epochs must be >= 1")
    dev = settings.torch_device
    scaler = torch.amp.GradScaler("cuda") if settings.needs_grad_scaler else None
    stopper = EarlyStopping(patience, min_delta)
    curve: list[EpochLoss] = []
    stopped_early = False
    rows = 0
    for epoch in range(1, max_epochs + 1):
        t_epoch = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        rows = 0
        for xb, yb in train_batches():
            optimizer.zero_grad(set_to_none=True)
            with settings.autocast():
                logits = model(xb)
            loss = loss_fn(logits.float(), yb)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            loss_sum += loss.detach().double() * yb.shape[0]
            rows += int(yb.shape[0])
        if rows == 0:
            raise ValueError("the training batches yielded no rows")
        epoch_valid_loss = valid_loss(model)
        curve.append(EpochLoss(epoch, float(loss_sum.item()) / rows, epoch_valid_loss, time.perf_counter() - t_epoch))
        if stopper.step(epoch, epoch_valid_loss, model):
            stopped_early = epoch < max_epochs
            break
    stopper.restore(model)
    model.eval()
    return Fit(curve, stopper.best_epoch, stopper.best_loss, stopped_early, rows)


__all__ = [
    "EarlyStopping",
    "EpochLoss",
    "Fit",
    "TrainResult",
    "count_parameters",
    "deterministic_mode",
    "fit",
    "seed_everything",
    "torch_threads",
]
