"""The purchase MLP: learns a real signal, is reproducible for a seed, stops early."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.ml.purchase_model import (
    PurchaseMLP,
    PurchaseTrainConfig,
    predict_proba,
    train_purchase_model,
)
from hybrid_pipeline.ml.tabular import DeltaTensorSource, tensor_batches

N_FEATURES = 8


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features on raw scales (so standardisation matters); a non-linear, noisy purchase signal."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, N_FEATURES, generator=g)
    logit = 1.5 * Z[:, 0] - 1.0 * Z[:, 1] + 0.8 * (Z[:, 2] ** 2 - 1) - 0.5
    y = (torch.rand(n, generator=g) < torch.sigmoid(logit)).float()
    scale = torch.tensor([1.0, 30.0, 0.01, 5.0, 100.0, 1.0, 2.0, 0.5])
    return Z * scale + 10.0, y


FAST = PurchaseTrainConfig(hidden_sizes=(32, 16), batch_size=256, max_epochs=12, patience=3,
                           learning_rate=3e-3, seed=7, num_threads=1)


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {"train": synthetic(4000, 1), "valid": synthetic(1000, 2), "test": synthetic(1000, 3)}


def stable(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if "second" not in k}


def test_learns_the_signal_and_reports_everything(data) -> None:
    result = train_purchase_model(tensor_batches(*data["train"], 1024), data["valid"], FAST, test=data["test"])
    m = result.metrics

    assert m["test_auc"] >= 0.75 and m["valid_auc"] >= 0.75
    assert 0 < m["test_log_loss"] < np.log(2)  # better than a coin
    assert 0 <= m["test_ece"] < 0.1
    assert result.rows == 4000 and m["train_rows"] == 4000 and m["valid_rows"] == 1000
    assert result.n_params == sum(p.numel() for p in result.model.parameters()) == m["n_params"]
    assert result.device == "cpu" and result.deterministic
    assert result.train_seconds > 0 and len(result.loss_curve) == result.epochs_run
    assert result.loss_curve[-1].train_loss < result.loss_curve[0].train_loss
    assert result.params["seed"] == 7 and result.params["hidden_sizes"] == [32, 16]
    y, p = result.predictions["test"]
    assert y.shape == p.shape == (1000,)


def test_same_seed_same_metrics_and_weights(data) -> None:
    runs = [train_purchase_model(tensor_batches(*data["train"], 1024), data["valid"], FAST) for _ in range(2)]

    assert stable(runs[0].metrics) == stable(runs[1].metrics)
    assert [e.valid_loss for e in runs[0].loss_curve] == [e.valid_loss for e in runs[1].loss_curve]
    for (k, a), (_, b) in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    other = train_purchase_model(tensor_batches(*data["train"], 1024), data["valid"],
                                 replace(FAST, seed=8))
    assert stable(other.metrics) != stable(runs[0].metrics)


def test_global_determinism_flag_is_restored(data) -> None:
    before = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    train_purchase_model(tensor_batches(*data["train"], 4000), data["valid"],
                         PurchaseTrainConfig(max_epochs=1, num_threads=1))
    assert torch.are_deterministic_algorithms_enabled() == before
    assert torch.get_num_threads() == threads


def test_early_stopping_stops_and_keeps_the_best_epoch() -> None:
    # labels are coin flips: nothing to learn, so a wide net only overfits and validation loss climbs
    X, _ = synthetic(600, 4)
    y = (torch.rand(600, generator=torch.Generator().manual_seed(5)) < 0.5).float()
    Xv, _ = synthetic(600, 6)
    yv = (torch.rand(600, generator=torch.Generator().manual_seed(7)) < 0.5).float()
    cfg = PurchaseTrainConfig(hidden_sizes=(256, 256), dropout=0.0, learning_rate=1e-2, batch_size=32,
                              max_epochs=40, patience=2, seed=0, num_threads=1)

    result = train_purchase_model(tensor_batches(X, y), (Xv, yv), cfg)

    assert result.stopped_early and result.epochs_run < 40
    assert result.epochs_run == result.best_epoch + 2
    best = min(e.valid_loss for e in result.loss_curve)
    assert result.loss_curve[result.best_epoch - 1].valid_loss == best
    assert result.metrics["valid_log_loss"] == pytest.approx(best, rel=1e-4)  # best weights restored


def test_trains_from_a_pinned_delta_table(tmp_path: Path, data) -> None:
    X, y = data["train"]
    cols = [f"x{i}" for i in range(N_FEATURES)]
    df = pl.DataFrame(X.numpy(), schema=cols).with_columns(purchased=pl.Series(y.numpy()).cast(pl.Boolean))
    lh = Lakehouse(str(tmp_path))
    lh.append("gold/purchase_training", df)
    source = DeltaTensorSource(lh.uri("gold/purchase_training"), cols, "purchased", batch_rows=1500)

    result = train_purchase_model(source, data["valid"],
                                  replace(FAST, feature_names=tuple(cols)))

    assert result.rows == 4000 and result.metrics["valid_auc"] >= 0.75
    assert result.model_spec["kwargs"]["feature_names"] == cols


def test_predict_proba_accepts_numpy_and_tensors() -> None:
    model = PurchaseMLP(3, (4,), 0.0)
    X = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    p = predict_proba(model, X)
    assert p.shape == (5,) and np.all((p > 0) & (p < 1))
    np.testing.assert_array_equal(p, predict_proba(model, torch.from_numpy(X)))


def test_bad_inputs_fail_fast(data) -> None:
    with pytest.raises(ValueError):
        PurchaseMLP(3, feature_names=["a"])
    with pytest.raises(ValueError, match="no rows"):
        train_purchase_model(lambda: iter(()), data["valid"], PurchaseTrainConfig(standardize=False))
