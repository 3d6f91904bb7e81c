"""The shared epoch loop (``fit``): what both models rely on, on a problem small enough to reason about."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hybrid_pipeline.ml.device import pick_device
from hybrid_pipeline.ml.training import fit, seed_everything

CPU = pick_device("cpu")


class _Linear(nn.Linear):
    def spec(self) -> dict:
        return {"architecture": "linear", "kwargs": {"in_features": self.in_features, "out_features": self.out_features}}


def _problem(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g)
    return X, X @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(n, 1, generator=g)


def _fit(valid_losses: list[float] | None = None, **kw):
    seed_everything(0)
    model = _Linear(3, 1)
    X, y = _problem()
    Xv, yv = _problem(64, seed=1)
    scripted = iter(valid_losses) if valid_losses is not None else None

    def valid_loss(m: nn.Module) -> float:
        real = float(nn.functional.mse_loss(m(Xv), yv).item())
        return next(scripted) if scripted is not None else real

    def batches():
        for i in range(0, X.shape[0], 48):  # 5 x 48 + 16: unequal minibatches
            yield X[i:i + 48], y[i:i + 48]

    args = {"max_epochs": 30, "patience": 3, "min_delta": 0.0, **kw}
    return model, fit(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, batches, valid_loss,
                      CPU, **args)


def test_trains_and_keeps_the_row_weighted_epoch_loss() -> None:
    model, fitted = _fit()
    assert fitted.rows == 256 and 1 <= fitted.best_epoch <= len(fitted.loss_curve) <= 30
    # the epoch's train loss is the row-weighted mean of its minibatch losses (recomputed for epoch 1)
    seed_everything(0)
    again = _Linear(3, 1)
    opt = torch.optim.SGD(again.parameters(), lr=0.1)
    X, y = _problem()
    total = 0.0
    for i in range(0, 256, 48):
        opt.zero_grad()
        loss = nn.functional.mse_loss(again(X[i:i + 48]), y[i:i + 48])
        loss.backward()
        opt.step()
        total += loss.item() * X[i:i + 48].shape[0]
    assert fitted.loss_curve[0].train_loss == pytest.approx(total / 256, rel=1e-6)
    assert fitted.loss_curve[-1].train_loss < fitted.loss_curve[0].train_loss / 10
    assert torch.allclose(model.weight, torch.tensor([[1.0, -2.0, 0.5]]), atol=0.05)
    assert not model.training  # returned in eval mode


def test_stops_after_patience_and_restores_the_best_epoch() -> None:
    # validation improves for three epochs, then gets worse: stop at 3 + patience, weights of epoch 3
    losses = [0.9, 0.5, 0.2, 0.3, 0.4, 0.5, 0.6]
    model, fitted = _fit(valid_losses=losses, patience=2)
    assert (fitted.best_epoch, len(fitted.loss_curve), fitted.stopped_early, fitted.best_loss) == (3, 5, True, 0.2)
    # patience runs out on the last allowed epoch: that is not an early stop
    _, last = _fit(valid_losses=[0.5, 0.6, 0.7], patience=2, max_epochs=3)
    assert (last.best_epoch, len(last.loss_curve), last.stopped_early) == (1, 3, False)
    # the weights after epoch 3 of an identical run are the ones restored
    replay, _ = _fit(max_epochs=3)
    assert torch.equal(model.weight, replay.weight) and torch.equal(model.bias, replay.bias)


def test_result_reports_what_every_run_reports() -> None:
    model, fitted = _fit(max_epochs=4)
    result = fitted.result(model, params={"lr": 0.1}, metrics={"valid_mse": 0.01}, train_seconds=1.5, settings=CPU,
                           deterministic=False, predictions={}, extra={})
    m = result.metrics
    assert m["valid_mse"] == 0.01 and m["n_params"] == result.n_params == 4
    assert m["epochs_run"] == result.epochs_run == len(result.loss_curve) == 4
    assert m["best_epoch"] == result.best_epoch and m["best_valid_loss"] == fitted.best_loss
    assert m["train_seconds"] == result.train_seconds == 1.5 and m["seconds_per_epoch"] > 0
    assert result.model_spec["architecture"] == "linear" and result.device == "cpu" and result.rows == 256


def test_refuses_an_epoch_without_rows_and_zero_epochs() -> None:
    model = _Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="no rows"):
        fit(model, opt, nn.functional.mse_loss, lambda: iter(()), lambda m: 0.0, CPU, max_epochs=2, patience=1, min_delta=0.0)
    with pytest.raises(ValueError, match="max_epochs"):
        fit(model, opt, nn.functional.mse_loss, lambda: iter(()), lambda m: 0.0, CPU, max_epochs=0, patience=1, min_delta=0.0)
