"""Stored models are a weights-only state_dict plus a JSON spec, rebuilt without pickled code."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid_pipeline.ml.architectures import build_model, register_architecture
from hybrid_pipeline.ml.digit_model import DigitCNN
from hybrid_pipeline.ml.purchase_model import PurchaseMLP, predict_proba
from hybrid_pipeline.ml.registry import feature_definition_hash, load_model_dir, save_model_dir


def test_model_files_are_a_state_dict_and_json_not_a_pickled_module(tmp_path: Path) -> None:
    model = PurchaseMLP(3, (4,), 0.0, feature_names=["x", "y", "z"])
    folder = save_model_dir(model, tmp_path / "m", extra={"note": "n"})

    config = json.loads((folder / "config.json").read_text())
    with zipfile.ZipFile(folder / "state_dict.pt") as zf:
        pickled = b"".join(zf.read(n) for n in zf.namelist() if n.endswith(".pkl"))
    assert b"PurchaseMLP" not in pickled and b"hybrid_pipeline" not in pickled
    assert config["spec"]["architecture"] == "purchase_mlp" and config["extra"] == {"note": "n"}
    clone, _ = load_model_dir(folder)
    X = torch.randn(6, 3)
    np.testing.assert_array_equal(predict_proba(clone, X), predict_proba(model, X))


def test_digit_cnn_round_trips_through_files(tmp_path: Path) -> None:
    model = DigitCNN(10, (4, 8), hidden=16, image_size=(16, 16)).eval()
    clone, config = load_model_dir(save_model_dir(model, tmp_path / "cnn"))
    x = torch.rand(2, 1, 16, 16)
    assert config["spec"]["architecture"] == "digit_cnn"
    assert torch.equal(model(x), clone(x))


def test_unknown_architectures_and_foreign_formats_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown architecture"):
        build_model({"architecture": "nope", "kwargs": {}})
    with pytest.raises(ValueError, match="already registered"):
        register_architecture("purchase_mlp", lambda **kw: torch.nn.Linear(1, 1))
    folder = save_model_dir(PurchaseMLP(2, (2,)), tmp_path / "m")
    (folder / "config.json").write_text(json.dumps({"format": "pickle"}))
    with pytest.raises(ValueError, match="unknown model format"):
        load_model_dir(folder)


def test_feature_definition_hash_ignores_key_order() -> None:
    assert feature_definition_hash({"a": 1, "b": [1, 2]}) == feature_definition_hash({"b": [1, 2], "a": 1})
    assert feature_definition_hash({"a": 1}) != feature_definition_hash({"a": 2})
