"""Model assets end to end: 14 landed days -> training set -> purchase model (gated, promoted) -> predictions;
digit CNN on the media manifest; feature drift check; reproduction after the sources moved on.

The definitions are the project's own ``build_definitions`` (models and GPU policy included). The
automation conditions (drift check after each features update, retraining, promotion) are tested in
``test_automation.py``.
"""


import dataclasses
import warnings
from datetime import date, timedelta
from types import SimpleNamespace

import dagster as dg
import polars as pl
import pytest

pytest.importorskip("mlflow", reason="mlflow-skinny is not installed")

from hybrid_pipeline.cli import materialize
from hybrid_pipeline.dagster_support.compute import GPU_POOL
from hybrid_pipeline.dagster_support.keys import PREDICTIONS, TRAINING_SET
from hybrid_pipeline.dagster_support.resources import ModelPolicyResource, ModelRegistryResource, TorchDeviceResource
from hybrid_pipeline.definitions import FEATURES_JOB, MEDIA_JOB, build_definitions
from hybrid_pipeline.defs.embeddings.assets import EMBEDDINGS_JOB
from hybrid_pipeline.defs.models.config import DigitModelConfig, PurchaseModelConfig
from hybrid_pipeline.defs.models.names import (
    DIGIT_CLASSIFIER,
    DIGIT_TRAINING_JOB,
    DRIFT_CHECK,
    DRIFT_CHECK_KEY,
    GATE_CHECK,
    PREDICTIONS_JOB,
    PRODUCTION_PURCHASE_MODEL,
    PURCHASE_MODEL,
    PURCHASE_TRAINING_JOB,
    SKIPPED,
)
from hybrid_pipeline.defs.resources import model_resources
from hybrid_pipeline.ml.digit_config import DigitTrainConfig
from hybrid_pipeline.ml.predictor import purchase_predictor
from hybrid_pipeline.ml.purchase_config import PurchaseTrainConfig
from hybrid_pipeline.ml.purchase_drift import DRIFT_COLUMNS, LIFETIME_FEATURES
from hybrid_pipeline.ml.registry import default_tracking_uri, get_production, get_run
from hybrid_pipeline.ml.reproduce import MODEL_NAME, config_from_run_params, encoded_columns, reproduce
from hybrid_pipeline.sources.generator import GeneratorConfig, generate
from hybrid_pipeline.transforms.features import FEATURE_COLUMNS
from hybrid_pipeline_tests.conftest import make_env

pytestmark = pytest.mark.integration
DAYS = 14
DIGIT_EPOCHS = 5  # the digit run's one override of its defaults, for time
LAST_DAY = f"2024-01-{DAYS:02d}"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def model_definitions(settings, tracking_uri: str, **policy) -> dg.Definitions:
    """The project's definitions (models and GPU policy included), CPU with one thread."""
    resources = model_resources(settings, tracking_uri)
    resources["torch_device"] = TorchDeviceResource(device="cpu", num_threads=1)
    resources["model_policy"] = ModelPolicyResource(**policy)
    return build_definitions(settings, resource_overrides=resources)


def run_job(defs: dg.Definitions, name: str, instance, partition_key: str | None = None, config: dict | None = None):
    job = defs.resolve_job_def(name)
    return job.execute_in_process(instance=instance, partition_key=partition_key, raise_on_error=False,
                                  run_config={**QUIET, **(config or {})})


def run_drift_check(defs: dg.Definitions, instance, partition_key: str):
    """Only the drift check of one partition, as the automation sensor runs it (not part of the daily job)."""
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_check_selection={DRIFT_CHECK_KEY}, asset_selection=set())
    return job.execute_in_process(instance=instance, tags={"dagster/partition": partition_key}, raise_on_error=False,
                                  run_config=QUIET)


def purchase_config(**fields) -> dict:
    return {"ops": {"models__purchase_model": {"config": fields}}}


def materialized_keys(result) -> set[dg.AssetKey]:
    return {e.event_specific_data.materialization.asset_key for e in result.all_events if e.is_step_materialization}


def skip_reasons(result) -> dict[dg.AssetKey, str]:
    """What each asset that decided not to materialize recorded as its reason."""
    return {o.asset_key: o.metadata[SKIPPED].value for o in
            (e.event_specific_data.asset_observation for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION")
            if SKIPPED in o.metadata}


def materialization(result, key: dg.AssetKey) -> dict:
    [mat] = [e.event_specific_data.materialization for e in result.all_events
             if e.is_step_materialization and e.event_specific_data.materialization.asset_key == key]
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def check_evaluation(result, name: str):
    [ev] = [e.event_specific_data for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.event_specific_data.check_name == name]
    return ev


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from hybrid_pipeline.media.demo import write_demo_media

    root = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as mp:
        env = make_env(root, mp)
        generate(GeneratorConfig(days=DAYS, events_per_day=1500, seed=5, start_date=date(2024, 1, 1)), env.landing)
        write_demo_media(env.landing / "media", seed=5, n_docs=2)
        uri = default_tracking_uri(root / "mlflow")
        with dg.instance_for_test() as instance:
            daily = materialize([f"2024-01-{d:02d}" for d in range(1, DAYS + 1)], instance=instance, daily_only=True)
            defs = model_definitions(env.settings, uri)
            runs = {
                "features": run_job(defs, FEATURES_JOB, instance),
                "media": run_job(defs, MEDIA_JOB, instance),
                "embeddings": run_job(defs, EMBEDDINGS_JOB, instance),
                # Before any training: a minimum above the labelled rows leaves nothing to promote or score with.
                "too_few": run_job(defs, PURCHASE_TRAINING_JOB, instance, config=purchase_config(min_training_rows=10_000)),
                "too_few_predict": run_job(defs, PREDICTIONS_JOB, instance, partition_key=LAST_DAY),
                "train": run_job(defs, PURCHASE_TRAINING_JOB, instance),
                "digits": run_job(defs, DIGIT_TRAINING_JOB, instance,
                                  config={"ops": {"models__digit_classifier": {"config": {"max_epochs": DIGIT_EPOCHS}}}}),
                "predict": run_job(defs, PREDICTIONS_JOB, instance, partition_key=LAST_DAY),
                "drift": run_drift_check(defs, instance, LAST_DAY),
            }
            yield SimpleNamespace(env=env, uri=uri, instance=instance, defs=defs, daily=daily, runs=runs,
                                  model=materialization(runs["train"], PURCHASE_MODEL),
                                  training_set=materialization(runs["features"], TRAINING_SET))


def test_every_run_succeeds(built):
    assert all(s.ok for s in built.daily), [(s.partition, s.failed_steps) for s in built.daily if not s.ok]
    failed = {name: [e.step_key for e in r.all_events if e.is_step_failure] for name, r in built.runs.items() if not r.success}
    assert not failed


def test_a_run_of_the_whole_graph_writes_exactly_the_catalog_tables(built):
    from hybrid_pipeline.lakehouse import catalog
    from hybrid_pipeline_tests.defs.test_maintenance_and_metadata import stored_tables

    assert stored_tables(built.env) == {table.name for table in catalog.TABLES}


def test_purchase_model_learns_the_generated_propensity_and_reports_it(built):
    m = built.model
    assert m["test_auc"] >= 0.75 and m["valid_auc"] >= 0.7  # the data gives ~0.8-0.87 over seeds/salts
    assert 0 < m["test_log_loss"] < 0.69 and 0 <= m["test_calibration_error"] < 0.25
    assert m["dagster/row_count"] == built.training_set["dagster/row_count"] > 200
    assert set(m["rows"]) == {"train", "valid", "test"} and m["rows"]["test"] >= 30
    assert m["n_params"] > 0 and m["train_seconds"] > 0 and m["epochs_run"] >= 2
    assert m["device"] == "cpu" and m["deterministic"] is True
    assert m["model_name"] == MODEL_NAME and m["model_version"] == 1 and len(m["mlflow_run_id"]) == 32
    assert m["loss_curve_plot"].startswith("![") and "data:image/png;base64," in m["roc_curve_plot"]
    assert m["training_set_sha256"] == built.training_set["content_sha256"]
    assert m["input_versions"] == {"features/training_set": built.training_set["delta_version"],
                                   **built.training_set["source_versions"]}


def test_with_fewer_rows_than_the_minimum_nothing_is_trained_promoted_or_scored(built):
    labelled = built.training_set["dagster/row_count"]
    untrained, unscored = built.runs["too_few"], built.runs["too_few_predict"]
    # The runs succeed: too few rows is a decision of the graph, not an error.
    assert untrained.success and unscored.success
    assert skip_reasons(untrained) == {PURCHASE_MODEL: f"{labelled} labelled rows < 10000"}
    assert materialized_keys(untrained) == set() and not untrained.get_asset_check_evaluations()  # no gate, no promotion
    assert skip_reasons(unscored) == {PREDICTIONS: "no production purchase model yet"}
    assert materialized_keys(unscored) == set()
    # and no version was registered by them: the first training registered version 1
    assert built.model["model_version"] == 1


def test_too_few_labelled_rows_by_default_train_nothing(pipeline_env, tmp_path):
    """The default minimum (100) is applied by the asset itself, however it is launched."""
    from hybrid_pipeline.ml.readiness import MIN_TRAINING_ROWS

    pipeline_env.lakehouse.append("features/training_set", pl.DataFrame({"user_id": [f"u{i}" for i in range(42)]}))
    uri = default_tracking_uri(tmp_path / "mlflow")
    defs = model_definitions(pipeline_env.settings, uri)
    with dg.instance_for_test() as instance:
        result = run_job(defs, PURCHASE_TRAINING_JOB, instance)
        assert result.success and materialized_keys(result) == set()
        assert skip_reasons(result) == {PURCHASE_MODEL: f"42 labelled rows < {MIN_TRAINING_ROWS}"}
        assert instance.get_latest_materialization_event(PURCHASE_MODEL) is None
    assert MIN_TRAINING_ROWS == 100 and PurchaseModelConfig().min_training_rows == MIN_TRAINING_ROWS
    assert not ModelRegistryResource(tracking_uri=uri).store_exists()  # nothing registered: the registry was not even created


def test_torch_device_resource_on_cpu(built):
    import torch

    cpu = TorchDeviceResource(device="cpu").settings()
    assert cpu.device == "cpu" and not cpu.amp and not cpu.pin_memory
    assert TorchDeviceResource().settings().device == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            TorchDeviceResource(device="cuda").settings()
    with pytest.raises(ValueError):
        TorchDeviceResource(device="tpu").settings()


def test_the_registry_records_inputs_code_seed_and_hyperparameters(built):
    run = get_run(built.uri, built.model["mlflow_run_id"])
    params, tags = run["params"], run["tags"]
    versions = built.training_set["source_versions"]
    assert params["input_version.features/training_set"] == str(built.training_set["delta_version"])
    assert params["input_version.gold/user_features"] == str(versions["gold/user_features"])
    assert params["input_version.gold/user_labels"] == str(versions["gold/user_labels"])
    assert params["seed"] == "0" and params["learning_rate"] == "0.003" and params["num_threads"] == "1"
    assert len(params["feature_definition_hash"]) == 64 and params["code_version"]
    assert tags["training_set.content_sha256"] == built.training_set["content_sha256"]
    assert tags["training_set.definitions_hash"] == built.training_set["definitions_hash"]
    # how the training set was retrieved (as known at each label by default), to rebuild it alike
    assert tags["training_set.retrieval"] == built.training_set["retrieval"] == "as_known_at"
    assert tags["device"] == "cpu" and tags["dagster.asset"] == "models/purchase_model"
    assert run["metrics"]["test_auc"] == pytest.approx(built.model["test_auc"])


@pytest.mark.parametrize("launchpad, library", [(PurchaseModelConfig, PurchaseTrainConfig),
                                                (DigitModelConfig, DigitTrainConfig)])
def test_the_run_config_takes_every_default_from_the_library_config(launchpad, library):
    defaults = library()
    launchpad_defaults = launchpad().model_dump()
    assert launchpad_defaults  # the launchpad shows the model's hyperparameters
    for name, value in launchpad_defaults.items():
        expected = getattr(defaults, name)
        assert value == (list(expected) if isinstance(expected, tuple) else expected), name
    # what the launchpad does not show (where it runs) keeps the library's defaults as well
    assert launchpad().train_config(device=defaults.device, num_threads=defaults.num_threads) == defaults


def test_a_run_with_the_default_config_records_exactly_the_default_hyperparameters(built):
    ran_with = {"device": "cpu", "num_threads": 1}  # from the torch_device resource of these tests
    purchase = dataclasses.replace(PurchaseTrainConfig(), **ran_with, feature_names=tuple(encoded_columns()))
    run = get_run(built.uri, built.model["mlflow_run_id"])
    assert config_from_run_params(run["params"]) == purchase
    assert built.model["hyperparameters"] == purchase.to_params()
    digits = dataclasses.replace(DigitTrainConfig(), **ran_with, max_epochs=DIGIT_EPOCHS)
    assert materialization(built.runs["digits"], DIGIT_CLASSIFIER)["hyperparameters"] == digits.to_params()


def test_checks_pass_and_the_version_is_promoted(built):
    result = built.runs["train"]
    assert check_evaluation(result, "training_converged").passed
    gate = check_evaluation(result, GATE_CHECK)
    assert gate.passed and gate.metadata["auc"].value == pytest.approx(built.model["test_auc"])
    assert gate.metadata["production_version"].value == -1  # nothing in production before
    assert materialization(result, PRODUCTION_PURCHASE_MODEL)["model_version"] == 1
    assert get_production(built.uri, MODEL_NAME) == 1


def test_digit_classifier_reaches_the_expected_accuracy(built):
    m = materialization(built.runs["digits"], DIGIT_CLASSIFIER)
    assert m["test_accuracy"] >= 0.95 and m["model_version"] == 1 and m["device"] == "cpu"
    assert m["rows"]["test"] > 100
    assert check_evaluation(built.runs["digits"], "test_accuracy_floor").passed
    run = get_run(built.uri, m["mlflow_run_id"])
    assert run["params"]["input_version.gold/image_training_manifest"] == str(m["manifest_version"])


def test_predictions_score_every_user_with_features_that_day(built):
    lh = built.env.lakehouse
    preds = lh.read("gold/predictions").filter(pl.col("prediction_date") == date.fromisoformat(LAST_DAY))
    users = lh.read("gold/user_features").filter(pl.col("event_date") == date.fromisoformat(LAST_DAY))
    assert preds.height == users.height > 0
    assert sorted(preds["user_id"].to_list()) == sorted(users["user_id"].to_list())
    assert preds["score"].is_between(0.0, 1.0).all() and (preds["model_version"] == 1).all()
    meta = materialization(built.runs["predict"], PREDICTIONS)
    assert meta["dagster/row_count"] == preds.height and meta["model_version"] == 1
    # a rerun replaces the day's rows instead of appending
    assert run_job(built.defs, PREDICTIONS_JOB, built.instance, partition_key=LAST_DAY).success
    assert lh.read("gold/predictions").height == preds.height


def test_the_predictor_serves_post_predict_with_the_batch_scores(built, tmp_path):
    from hybrid_pipeline.online import OnlineReader, OnlineWriter
    from hybrid_pipeline.serving import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    lh = built.env.lakehouse
    rows = lh.read("gold/user_features").filter(pl.col("event_date") == date.fromisoformat(LAST_DAY)).sort("user_id").head(5)
    batch = dict(lh.read("gold/predictions").select("user_id", "score").iter_rows())
    predictor = purchase_predictor(built.uri)
    assert predictor.version == 1
    dicts = rows.select(FEATURE_COLUMNS).to_dicts()
    assert predictor(dicts) == pytest.approx([batch[u] for u in rows["user_id"]], abs=1e-6)

    url = f"sqlite://{tmp_path / 'online.db'}"
    with OnlineWriter.from_url(url, "proj") as writer:
        writer.write_records("user_features", [(r["user_id"], {c: r[c] for c in FEATURE_COLUMNS}, r["event_timestamp"], None)
                                               for r in rows.to_dicts()])
    reader = OnlineReader.from_url(url, "proj")
    try:
        with TestClient(create_app(reader, "user_features", predictor=predictor)) as client:
            response = client.post("/predict", json={"user_ids": [*rows["user_id"], "nobody"]})
    finally:
        reader.close()
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["score"] for r in results[:5]] == pytest.approx([batch[u] for u in rows["user_id"]], abs=1e-6)
    assert results[-1] == {"user_id": "nobody", "found": False, "score": None}


def test_drift_check_compares_the_partition_with_the_production_training_snapshot(built):
    ev = check_evaluation(built.runs["drift"], DRIFT_CHECK)
    meta = {k: getattr(v, "value", v) for k, v in ev.metadata.items()}
    assert meta["partition"] == LAST_DAY and meta["production_version"] == 1
    assert meta["reference"] == f"features/training_set@v{built.training_set['delta_version']}"
    # lifetime aggregates are measured and reported, and only the other inputs decide the verdict
    assert set(meta["psi"]) == set(DRIFT_COLUMNS) and not set(DRIFT_COLUMNS) & set(LIFETIME_FEATURES)
    assert set(meta["lifetime_psi"]) == set(LIFETIME_FEATURES) and all(v is not None for v in meta["lifetime_psi"].values())
    worst = meta["max_psi"]
    assert worst == pytest.approx(max(v for v in meta["psi"].values() if v is not None), abs=1e-5)
    assert ev.passed == (worst < 0.1)
    if not ev.passed:
        assert ev.severity == (dg.AssetCheckSeverity.ERROR if worst >= 0.25 else dg.AssetCheckSeverity.WARN)


def test_a_failing_gate_blocks_the_promotion(built):
    from mlflow.tracking import MlflowClient

    strict = model_definitions(built.env.settings, built.uri, auc_floor=0.999)
    result = run_job(strict, PURCHASE_TRAINING_JOB, built.instance)
    gate = check_evaluation(result, GATE_CHECK)
    assert not gate.passed and gate.severity == dg.AssetCheckSeverity.ERROR and "floor" in gate.description
    # the same data and seed give the same model: both versions score the same holdout alike
    assert gate.metadata["production_version"].value == 1
    assert gate.metadata["production_auc"].value == pytest.approx(gate.metadata["auc"].value)
    assert not result.success  # a failed blocking ERROR check fails the run
    assert not [e for e in result.all_events if e.is_step_materialization
                and e.event_specific_data.materialization.asset_key == PRODUCTION_PURCHASE_MODEL]
    assert get_production(built.uri, MODEL_NAME) == 1
    assert MlflowClient(built.uri, built.uri).get_model_version(MODEL_NAME, "2").tags["evaluation_gate"] == "failed"
    # promoting on its own cannot skip the gate either
    alone = strict.resolve_job_def(PURCHASE_TRAINING_JOB).get_subset(asset_selection={PRODUCTION_PURCHASE_MODEL})
    assert not alone.execute_in_process(instance=built.instance, raise_on_error=False, run_config=QUIET).success
    assert get_production(built.uri, MODEL_NAME) == 1


def test_model_assets_get_the_gpu_policy_from_their_kind(built):
    graph = built.defs.resolve_asset_graph()
    for key in (PURCHASE_MODEL, DIGIT_CLASSIFIER, PREDICTIONS):
        node = graph.get(key)
        assert "pytorch" in node.kinds and node.tags.get("compute") == "gpu"
        assert built.defs.resolve_assets_def(key).node_def.pool == GPU_POOL
    assert graph.get(PRODUCTION_PURCHASE_MODEL).tags.get("compute") is None
    assert graph.get(PREDICTIONS).partitions_def is not None and graph.get(PURCHASE_MODEL).partitions_def is None


def test_reproduce_after_the_sources_moved_on(built):
    """Last: lands a 15th day, compacts and vacuums (inside the retention), then rebuilds version 1."""
    env = built.env
    lh = env.lakehouse
    generate(GeneratorConfig(days=1, events_per_day=1500, seed=6, start_date=date(2024, 1, 15)), env.landing)
    [day15] = materialize(["2024-01-15"], instance=built.instance, daily_only=True)
    assert day15.ok
    versions = built.training_set["source_versions"]
    assert lh.version("gold/user_labels") > versions["gold/user_labels"]
    for table in ("gold/user_features", "gold/user_labels"):
        lh.optimize(table, ["user_id", "event_date"])
        lh.vacuum(table, timedelta(hours=168))

    report = reproduce(MODEL_NAME, 1, lh, built.uri)

    assert report.input_versions == built.model["input_versions"]
    assert report.hash_matches and report.rebuilt_sha256 == built.training_set["content_sha256"], report.summary()
    assert report.matches_stored_snapshot is True
    assert report.metrics_match and max(report.metric_deltas.values()) <= 1e-6, report.summary()
