"""MLflow round trip in tmp_path: log, register, alias production, load back, same predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

# mlflow-skinny and matplotlib are this module's optional heavy dependencies (pyproject must list them)
pytest.importorskip("mlflow", reason="mlflow-skinny is not installed")
pytest.importorskip("matplotlib", reason="matplotlib is not installed")

from hybrid_pipeline.ml.purchase_model import PurchaseTrainConfig, predict_proba, train_purchase_model
from hybrid_pipeline.ml.registry import (
    ModelRegistry,
    default_tracking_uri,
    feature_definition_hash,
    get_production,
    get_run,
    load_model_version,
    log_train_result,
    log_training_run,
    mlflow_client,
    register_model,
    set_production,
)
from hybrid_pipeline.ml.tabular import tensor_batches
from hybrid_pipeline.ml.training import TrainResult

FEATURES = ("a", "b", "c", "d")


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, len(FEATURES), generator=g) * 4 + 2
    y = (torch.rand(n, generator=g) < torch.sigmoid(X[:, 0] - X[:, 1])).float()
    return X, y


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    # one SQLite db for the module: creating it runs MLflow's schema migrations (seconds)
    return default_tracking_uri(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(scope="module")
def result() -> TrainResult:
    cfg = PurchaseTrainConfig(hidden_sizes=(8,), max_epochs=3, seed=3, feature_names=FEATURES, num_threads=1)
    return train_purchase_model(tensor_batches(*data(800, 0)), data(200, 1), cfg)


def test_round_trip_log_register_promote_load(tracking_uri: str, result: TrainResult) -> None:
    feature_def = {"table": "gold/purchase_training", "columns": list(FEATURES), "label": "purchased"}
    run_id = log_train_result(tracking_uri, "purchase", result,
                              input_versions={"gold/purchase_training": 4, "gold/user_features": 9},
                              feature_definition=feature_def, tags={"owner": "ml"})
    assert get_production(tracking_uri, "purchase_model") is None

    version = register_model(tracking_uri, "purchase_model", run_id)
    set_production(tracking_uri, "purchase_model", version)

    assert get_production(tracking_uri, "purchase_model") == version
    X = data(50, 2)[0]
    for ref in (version, "production"):
        loaded = load_model_version(tracking_uri, "purchase_model", ref)
        assert loaded.run_id == run_id and loaded.version == version
        np.testing.assert_array_equal(predict_proba(loaded.model, X), predict_proba(result.model, X))
    assert loaded.config["spec"]["kwargs"]["feature_names"] == list(FEATURES)
    assert loaded.config["extra"]["input_versions"] == {"gold/purchase_training": 4, "gold/user_features": 9}
    assert "standardizer" in loaded.config["extra"]

    run = get_run(tracking_uri, run_id)
    assert run["status"] == "FINISHED"
    assert run["params"]["input_version.gold/purchase_training"] == "4"
    assert run["params"]["feature_definition_hash"] == feature_definition_hash(feature_def)
    assert run["params"]["seed"] == "3" and run["params"]["hidden_sizes"] == "[8]"
    assert run["params"]["code_version"] == run["tags"]["code_version"]
    assert run["params"]["code_version"].startswith(("git:", "hybrid_pipeline=="))
    assert json.loads(run["tags"]["input_versions"])["gold/user_features"] == 9
    assert run["tags"]["owner"] == "ml" and run["tags"]["device"] == "cpu"
    assert run["metrics"]["valid_auc"] == pytest.approx(result.metrics["valid_auc"])


def test_production_alias_moves_to_a_new_version(tracking_uri: str, result: TrainResult) -> None:
    reg = ModelRegistry(tracking_uri)
    run_id = reg.log_training_run("purchase", result.params, result.metrics, model=result.model,
                                  artifacts={"notes/readme.txt": "hello", "raw.bin": b"\x00\x01"})
    v1 = reg.register_model("moving_model", run_id)
    v2 = reg.register_model("moving_model", run_id)
    reg.set_production("moving_model", v1)
    reg.set_production("moving_model", v2)

    assert (v1, v2) == (1, 2)
    assert reg.get_production("moving_model") == 2
    loaded = reg.load_production("moving_model")
    assert loaded is not None and loaded.version == 2
    assert reg.get_production("no_such_model") is None


def test_failed_logging_marks_the_run_failed(tracking_uri: str) -> None:
    with pytest.raises(ValueError, match="escapes"):
        log_training_run(tracking_uri, "purchase", {"lr": 1}, {"auc": 0.5}, artifacts={"../x": b"no"},
                         run_name="bad-artifact")
    client = mlflow_client(tracking_uri)
    exp = client.get_experiment_by_name("purchase")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], "attributes.run_name = 'bad-artifact'")
    assert [r.info.status for r in runs] == ["FAILED"]
