"""A model trained with request-time features, served through ``POST /predict`` with request fields.

The model is built here through the project's own training path (the purchase recipe's encoding,
its hash split and ``train_purchase_model``), on a training frame that Feast's
``get_historical_features`` returned with the on-demand view's features (request columns in the
entity frame). The production purchase model keeps its feature list: its labels carry no request
fields (see README, Feature store).
"""

from __future__ import annotations

import warnings
from datetime import timedelta

import numpy as np
import pandas as pd
import polars as pl
import pytest
import torch
from prometheus_client import values

from hybrid_pipeline.features import catalog, on_demand
from hybrid_pipeline.ml import reproduce as recipe
from hybrid_pipeline.ml.device import pick_device
from hybrid_pipeline.ml.predictor import score
from hybrid_pipeline.ml.purchase_config import PurchaseTrainConfig
from hybrid_pipeline.ml.purchase_model import train_purchase_model
from hybrid_pipeline.ml.tabular import tensor_batches
from hybrid_pipeline.ml.training_set import LABEL, LABELS_TABLE
from hybrid_pipeline.online import OnlineReader
from hybrid_pipeline.serving import create_app
from hybrid_pipeline_tests.features.on_demand_data import build_world

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SPEC = on_demand.USER_REQUEST_FEATURES
REQUEST_INPUTS = ["seconds_since_last_event", "request_hour", "amount_vs_avg_order"]


@pytest.fixture(autouse=True)
def in_memory_metric_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(values, "ValueClass", values.MutexValue)


def encoding() -> dict:
    """The purchase recipe's encoding with the on-demand features as numeric inputs."""
    spec = recipe.encoding_spec()
    return {**spec, "numeric": [*spec["numeric"], *REQUEST_INPUTS]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    world = build_world(tmp_path_factory.mktemp("odfv_model"), events_per_day=400)
    labels = world.lakehouse.read(LABELS_TABLE).select("user_id", "event_timestamp", LABEL)
    rng = np.random.default_rng(0)
    # a request amount per labelled row: the request field the model learns from
    entity = labels.with_columns(pl.col("event_timestamp").alias("request_time"),
                                 pl.Series("amount", rng.uniform(1, 200, labels.height)))
    store = world.store()
    rows = pl.from_pandas(store.get_historical_features(
        entity_df=entity.to_pandas(), features=[*catalog.feature_refs(), *SPEC.feature_refs()]).to_df())
    spec = encoding()
    X = recipe.encode_features(rows, spec)
    y = rows[LABEL].cast(pl.Float32).to_numpy()
    split = np.array([recipe.split_of(u, "odfv", 0.2, 0.2) for u in rows["user_id"]])
    t = {s: (torch.from_numpy(X[split == s]), torch.from_numpy(y[split == s])) for s in ("train", "valid", "test")}
    config = PurchaseTrainConfig(hidden_sizes=(8,), max_epochs=8, seed=1, device="cpu",
                                 feature_names=tuple(recipe.encoded_columns(spec)))
    result = train_purchase_model(tensor_batches(*t["train"], len(t["train"][0])), t["valid"], config,
                                  test=t["test"], device=pick_device("cpu"))
    return world, store, result.cpu_model().eval(), spec, rows


def test_the_model_input_includes_the_on_demand_features(trained):
    _, _, model, spec, rows = trained
    columns = recipe.encoded_columns(spec)
    assert set(REQUEST_INPUTS) <= set(columns)
    assert rows["amount_vs_avg_order"].drop_nulls().len() > 0 and rows["seconds_since_last_event"].null_count() == 0


def test_predict_with_request_fields_scores_what_training_would_for_the_same_request(trained):
    world, store, model, spec, _ = trained
    reader = OnlineReader.from_url(world.online_url, catalog.PROJECT)

    def predictor(feature_dicts: list[dict]) -> list[float]:
        return score(model, spec, pl.DataFrame(feature_dicts, infer_schema_length=None), device="cpu").tolist()

    request_time = world.data_end + timedelta(hours=3, microseconds=17)
    buyers = world.lakehouse.read("gold/user_features").filter(pl.col("purchases_30d") > 0)["user_id"].unique().sort()
    users = [*buyers.head(5).to_list(), *world.users[:5], "nobody"]
    with TestClient(create_app(reader, catalog.USER_FEATURES_VIEW, predictor=predictor)) as client:
        answers = {amount: client.post("/predict", json={"user_ids": users, "request": {
            "amount": amount, "request_time": request_time.isoformat()}}).json() for amount in (5.0, 500.0)}
        missing = client.post("/predict", json={"user_ids": users, "request": {"request_time": request_time.isoformat()}})
    reader.close()
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "request", "amount"]

    for amount, answer in answers.items():
        results = answer["results"]
        assert results[-1] == {"user_id": "nobody", "found": False, "score": None,
                               "on_demand": {"seconds_since_last_event": None, "request_hour": request_time.hour,
                                             "amount_vs_avg_order": None}}
        entity = pd.DataFrame({"user_id": users[:-1], "event_timestamp": [request_time] * (len(users) - 1),
                               "request_time": [request_time] * (len(users) - 1), "amount": amount})
        offline = pl.from_pandas(store.get_historical_features(
            entity_df=entity, features=[*catalog.feature_refs(), *SPEC.feature_refs()]).to_df())
        expected = score(model, spec, offline, device="cpu")
        served = np.array([r["score"] for r in results[:-1]])
        assert np.abs(served - expected).max() < 1e-6
        for r, o in zip(results, offline.iter_rows(named=True)):
            assert r["on_demand"]["amount_vs_avg_order"] == o["amount_vs_avg_order"]
    # the model uses the request's amount: buyers' scores move with it
    low = np.array([r["score"] for r in answers[5.0]["results"][:5]])
    high = np.array([r["score"] for r in answers[500.0]["results"][:5]])
    assert np.abs(low - high).max() > 1e-6
