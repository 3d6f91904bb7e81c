"""MLflow's and Feast's UIs, started by `hybrid-pipeline ui ...` over the stores a real run wrote:
read back through the endpoints the UIs themselves use, and rendered in Chromium."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import requests

from hybrid_pipeline.features.catalog import PROJECT as FEAST_PROJECT
from hybrid_pipeline.features.catalog import PURCHASE_SERVICE, USER_FEATURES_VIEW
from hybrid_pipeline.ml.registry import PRODUCTION_ALIAS, get_production, get_run

from .conftest import VIEWPORT, DemoRun, Server, cli, free_port, save_screenshot, start_server

pytestmark = [pytest.mark.integration, pytest.mark.browser]
MODEL = "purchase_model"


def _start_ui(which: str, demo_run: DemoRun, health: str) -> Iterator[Server]:
    port = free_port()
    server = start_server([sys.executable, "-m", "hybrid_pipeline.cli", "ui", which, "--port", str(port)],
                          demo_run.env, demo_run.root / f"ui_{which}.log", f"http://127.0.0.1:{port}")
    try:
        server.wait_until(lambda: requests.get(server.base + health, timeout=5).ok, 240, f"hybrid-pipeline ui {which}")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_ui(demo_run: DemoRun) -> Iterator[Server]:
    yield from _start_ui("mlflow", demo_run, "/health")


@pytest.fixture(scope="module")
def feast_ui(demo_run: DemoRun) -> Iterator[Server]:
    yield from _start_ui("feast", demo_run, "/health")


def _api(server: Server, path: str, **params: str) -> dict:
    response = requests.get(f"{server.base}{path}", params=params, timeout=30)
    assert response.ok, (path, response.status_code, response.text[:500])
    return response.json()


def test_mlflow_ui_serves_the_registered_model_its_production_alias_and_the_run_behind_it(mlflow_ui, demo_run):
    uri = demo_run.settings.model_registry_uri
    production = get_production(uri, MODEL)
    assert production is not None  # the run promoted a version

    model = _api(mlflow_ui, "/api/2.0/mlflow/registered-models/get", name=MODEL)["registered_model"]
    assert {"alias": PRODUCTION_ALIAS, "version": str(production)} in model["aliases"]
    version = _api(mlflow_ui, "/api/2.0/mlflow/registered-models/alias", name=MODEL,
                   alias=PRODUCTION_ALIAS)["model_version"]
    assert version["version"] == str(production)

    # The run of that version, as the UI shows it: parameters, metrics, input Delta versions, training-set hash.
    served = _api(mlflow_ui, "/api/2.0/mlflow/runs/get", run_id=version["run_id"])["run"]["data"]
    expected = get_run(uri, version["run_id"])
    params = {p["key"]: p["value"] for p in served["params"]}
    tags = {t["key"]: t["value"] for t in served["tags"]}
    metrics = {m["key"] for m in served["metrics"]}
    assert params == expected["params"]
    assert {k for k in params if k.startswith("input_version.")} >= {
        "input_version.features/training_set", "input_version.gold/user_features", "input_version.gold/user_labels"}
    assert len(tags["training_set.content_sha256"]) == 64
    assert tags["training_set.content_sha256"] == expected["tags"]["training_set.content_sha256"]
    assert {"test_auc", "valid_auc", "train_loss", "valid_loss"} <= metrics


def test_mlflow_ui_renders_the_model_page_with_its_alias(mlflow_ui, chromium, screenshots):
    landing = requests.get(mlflow_ui.base + "/", timeout=30)
    assert landing.ok and "<title>MLflow" in landing.text
    page = chromium.new_page(viewport=VIEWPORT)
    try:
        page.goto(f"{mlflow_ui.base}/#/models/{MODEL}")
        page.get_by_text(f"@ {PRODUCTION_ALIAS}").first.wait_for(timeout=90_000)  # the alias tag of its version
        page.get_by_role("link", name="Version 1").wait_for(timeout=30_000)
        # The picture without MLflow's assistant panel, in the classic-ML navigation.
        assistant = page.get_by_role("button", name="Close", exact=True)
        if assistant.is_visible():
            assistant.click()
        page.get_by_role("button", name="Model training", exact=True).click()
        page.get_by_text("Model registry", exact=True).wait_for(timeout=30_000)
        save_screenshot(page, screenshots, "mlflow", publish=True)
    finally:
        page.close()


def test_a_second_mlflow_ui_on_a_port_in_use_is_refused_in_one_line(mlflow_ui, demo_run):
    port = mlflow_ui.base.rsplit(":", 1)[1]
    result = cli("ui", "mlflow", "--port", port, env=demo_run.env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"hybrid-pipeline ui mlflow: port {port} on 127.0.0.1 is in use: "
                                     "stop what listens there or pick another with --port")


def test_feast_ui_serves_the_generated_repo_through_its_registry_api(feast_ui, demo_run):
    from feast import FeatureStore

    registry = FeatureStore(repo_path=str(demo_run.settings.feature_repo_dir))
    [project] = _api(feast_ui, "/projects-list.json")["projects"]  # the UI's first request
    assert project["id"] == FEAST_PROJECT
    api = project["registryPath"]

    views = _api(feast_ui, f"{api}/feature_views", project=FEAST_PROJECT)["featureViews"]
    served = {v["spec"]["name"]: [f["name"] for f in v["spec"].get("features", [])] for v in views}
    expected = {v.name: [f.name for f in v.features] for v in registry.list_all_feature_views()}
    assert USER_FEATURES_VIEW in served
    assert served == expected
    entities = {e["spec"]["name"] for e in _api(feast_ui, f"{api}/entities", project=FEAST_PROJECT)["entities"]}
    assert entities >= {"user"}
    services = _api(feast_ui, f"{api}/feature_services", project=FEAST_PROJECT)["featureServices"]
    assert PURCHASE_SERVICE in {s["spec"]["name"] for s in services}


def test_feast_ui_renders_the_user_features_view(feast_ui, chromium, screenshots):
    page = chromium.new_page(viewport=VIEWPORT)
    try:
        page.goto(f"{feast_ui.base}/p/{FEAST_PROJECT}/feature-view/{USER_FEATURES_VIEW}")
        page.get_by_text("days_since_last_purchase").first.wait_for(timeout=90_000)
        save_screenshot(page, screenshots, "feast", publish=True)
    finally:
        page.close()
