"""The digit CNN on the real scikit-learn digits, read from bronze through the image manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from hybrid_pipeline.media.dataset import ImageManifestDataset, build_image_manifest
from hybrid_pipeline.media.demo import write_demo_media
from hybrid_pipeline.media.store import ingest_landing_media, read_labels
from hybrid_pipeline.ml.digit_model import DigitCNN, DigitTrainConfig, predict_digits, train_digit_classifier
from hybrid_pipeline.ml.training import TrainResult


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, Path]:
    root = tmp_path_factory.mktemp("digits")
    landing, bronze = root / "landing" / "media", root / "lakehouse" / "bronze" / "media"
    write_demo_media(landing, n_docs=0)
    records, rejected = ingest_landing_media(landing, bronze, "2024-01-01")
    assert not rejected
    return build_image_manifest(records, read_labels(landing)), bronze


# 16x16 (downsampled from the 32x32 files) keeps the test at a few seconds on two busy CPU cores
FAST = DigitTrainConfig(image_size=(16, 16), max_epochs=6, patience=2, seed=0, num_threads=1)


@pytest.fixture(scope="module")
def trained(digits) -> TrainResult:
    manifest, bronze = digits
    return train_digit_classifier(manifest, bronze, FAST)


def test_reaches_95_percent_test_accuracy(digits, trained: TrainResult) -> None:
    manifest, _ = digits
    m = trained.metrics

    assert manifest.height == 1797
    assert m["test_accuracy"] >= 0.95, m
    assert m["test_rows"] == manifest.filter(pl.col("split") == "test").height
    assert m["train_rows"] + m["valid_rows"] + m["test_rows"] == 1797
    assert 0 <= m["test_ece"] < 0.1
    assert trained.extra["classes"] == [str(i) for i in range(10)]
    assert trained.extra["image_size"] == [16, 16]
    assert trained.device == "cpu" and trained.n_params == m["n_params"] > 0
    y, prob = trained.predictions["test"]
    assert prob.shape == (y.size, 10)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)


def test_loss_curve_and_early_stopping_bookkeeping(trained: TrainResult) -> None:
    curve = trained.loss_curve
    assert len(curve) == trained.epochs_run <= FAST.max_epochs
    assert curve[-1].train_loss < curve[0].train_loss
    assert min(e.valid_loss for e in curve) == curve[trained.best_epoch - 1].valid_loss


def test_predict_digits_matches_the_training_metrics(digits, trained: TrainResult) -> None:
    manifest, bronze = digits
    test_ds = ImageManifestDataset(manifest, bronze, split="test", image_size=(16, 16))
    images = torch.stack([test_ds[i][0] for i in range(len(test_ds))])

    prob = predict_digits(trained.model, images)

    accuracy = float(np.mean(prob.argmax(axis=1) == np.array(test_ds.labels)))
    assert accuracy == pytest.approx(trained.metrics["test_accuracy"])


def test_spec_rebuilds_the_same_module() -> None:
    model = DigitCNN(10, (4, 8), hidden=16, image_size=(16, 16), class_names=list("0123456789"))
    clone = DigitCNN(**model.spec()["kwargs"])
    clone.load_state_dict(model.state_dict())
    x = torch.rand(3, 1, 16, 16)
    model.eval()
    clone.eval()
    assert torch.equal(model(x), clone(x))


def test_a_manifest_without_a_validation_split_is_refused(digits) -> None:
    manifest, bronze = digits
    with pytest.raises(ValueError, match="no validation rows"):
        train_digit_classifier(manifest.filter(pl.col("split") != "validation"), bronze, FAST)
