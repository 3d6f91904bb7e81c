"""Models: the purchase MLP and the digit CNN trained from the lakehouse, gated, promoted, served.

```
features/training_set ─┐                                       ┌─> models/production_purchase_model ─> gold/predictions (daily)
gold/user_features ────┴─> models/purchase_model ─[gate]───────┘        (MLflow alias `production`)
  └─ check feature_drift (PSI vs the production model's training snapshot)
gold/image_training_manifest ─> models/digit_classifier
```

* ``models/purchase_model`` trains on ``features/training_set`` at the Delta version its latest
  materialization recorded (the recipe in :mod:`hybrid_pipeline.ml.reproduce`: encoded features,
  hash split by user, seeded, early stopping) and logs the run to MLflow with the training set's
  version, the source versions it was built from, its content hash, the feature definitions hash,
  the code version, seed and hyperparameters; then registers a new model version.
* Checks: ``training_converged`` (inline) and ``evaluation_gate`` (blocking): AUC on the new
  model's test users >= a floor, and not worse than the production model's AUC on the same
  rows by more than ``max_auc_regression``. A failing gate stops the promotion in the same run;
  ``models/production_purchase_model`` also refuses a version the gate did not pass (a tag the
  gate writes on the model version), so promoting it alone cannot skip the gate.
* ``gold/predictions``: per day, the production model's score for every user with a feature
  row as of that day (the latest row inside the 30-day TTL), replacing that day's rows.
* ``gold/user_features`` check ``feature_drift``: PSI per model input between the partition's
  rows and the production model's training snapshot (the training set at the version its run
  recorded): WARN at 0.1, ERROR at 0.25, never blocking. Lifetime aggregates
  (:data:`LIFETIME_FEATURES`) drift on any growing dataset by construction: their PSI is
  reported, not judged.
* Unattended chain (one RUNNING automation sensor, ``models_automation_sensor``): the daily run
  updates a partition of ``gold/user_features`` -> the drift check runs on it by itself
  (:func:`drift_check_condition`; it is not part of the daily load job, so drift never fails a
  load) -> a failing verdict retrains ``models/purchase_model`` (:func:`purchase_retrain_condition`:
  features updated and drift detected, or weekly on Monday 04:00 UTC; never while an upstream
  asset is being materialized) -> its blocking gate runs in the same run -> the promotion
  follows once the gate passed (:func:`promotion_condition`).

The torch assets are declared with :func:`~hybrid_pipeline.defs.compute.torch_asset`, which
gives them the ``pytorch`` kind, the ``gpu`` pool, the GPU tags and the k8s GPU request.
"""

import json
import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final

import dagster as dg
import numpy as np
import polars as pl

from hybrid_pipeline.defs.compute import torch_asset
from hybrid_pipeline.defs.keys import IMAGE_TRAINING_MANIFEST, PREDICTIONS, TRAINING_SET, USER_FEATURES, table_of
from hybrid_pipeline.defs.metadata import measured, table_metadata
from hybrid_pipeline.defs.resources import LakehouseResource
from hybrid_pipeline.lakehouse.catalog import GOLD_PREDICTIONS
from hybrid_pipeline.ml import reproduce as recipe_mod
from hybrid_pipeline.ml.digit_config import DigitTrainConfig
from hybrid_pipeline.ml.purchase_config import PurchaseTrainConfig
from hybrid_pipeline.transforms.features import FEATURES_SCHEMA

PURCHASE_MODEL = dg.AssetKey(["models", "purchase_model"])
DIGIT_CLASSIFIER = dg.AssetKey(["models", "digit_classifier"])
PRODUCTION_PURCHASE_MODEL = dg.AssetKey(["models", "production_purchase_model"])

PURCHASE_MODEL_NAME: Final = recipe_mod.MODEL_NAME
DIGIT_MODEL_NAME: Final = "digit_classifier"
CONVERGENCE_CHECK: Final = "training_converged"
GATE_CHECK: Final = "evaluation_gate"
DIGIT_ACCURACY_CHECK: Final = "test_accuracy_floor"
DRIFT_CHECK: Final = "feature_drift"
DRIFT_CHECK_KEY = dg.AssetCheckKey(USER_FEATURES, DRIFT_CHECK)
GATE_CHECK_KEY = dg.AssetCheckKey(PURCHASE_MODEL, GATE_CHECK)
RETRAIN_CRON: Final = "0 4 * * 1"  # Monday 04:00 UTC, after the Sunday maintenance and the 02:00 daily run
DRIFT_LOOKBACK = timedelta(days=2)  # drift found on one of the newest two days' partitions counts
GATE_TAG: Final = "evaluation_gate"
AUTOMATION_SENSOR: Final = "models_automation_sensor"
PURCHASE_TRAINING_JOB: Final = "purchase_model_training"
DIGIT_TRAINING_JOB: Final = "digit_classifier_training"
PREDICTIONS_JOB: Final = "batch_predictions"
_PURCHASE_DEFAULTS = PurchaseTrainConfig()
_DIGIT_DEFAULTS = DigitTrainConfig()
_OWNERS = ["team:ml-platform"]
_GROUP = "models"
PREDICTIONS_SCHEMA = GOLD_PREDICTIONS.schema


# --------------------------------------------------------------------------- resources


class TorchDeviceResource(dg.ConfigurableResource):
    """Which torch device training and scoring use: ``auto`` (cuda when present), ``cpu``, ``cuda`` or ``cuda:N``.

    ``cuda`` without a GPU fails the step (no silent CPU fallback). ``amp``/``pin_memory`` may only
    switch those CUDA features off; ``num_threads`` caps CPU intra-op threads (None: torch's default).
    """

    device: str = "auto"
    amp: bool = True
    pin_memory: bool = True
    num_threads: int | None = None

    def settings(self):  # noqa: ANN201 - hybrid_pipeline.ml.device.DeviceSettings (torch imported lazily)
        from hybrid_pipeline.ml.device import pick_device

        return pick_device(self.device, allow_amp=self.amp, allow_pin_memory=self.pin_memory)


class ModelRegistryResource(dg.ConfigurableResource):
    """MLflow tracking + model registry (SQLite by default, see :func:`default_registry_uri`)."""

    tracking_uri: str

    def registry(self):  # noqa: ANN201 - hybrid_pipeline.ml.registry.ModelRegistry
        from hybrid_pipeline.ml.registry import ModelRegistry

        return ModelRegistry(self.tracking_uri)

    def client(self):  # noqa: ANN201 - mlflow.tracking.MlflowClient
        from hybrid_pipeline.ml.registry import mlflow_client

        return mlflow_client(self.tracking_uri)

    def store_exists(self) -> bool:
        """False for a SQLite store whose file does not exist yet (nothing registered; mlflow not even imported)."""
        if self.tracking_uri.startswith("sqlite:///"):
            return Path(self.tracking_uri[len("sqlite:///"):]).exists()
        return True


class ModelPolicyResource(dg.ConfigurableResource):
    """Thresholds of the model checks (override the resource to tighten or relax them)."""

    auc_floor: float = 0.70
    max_auc_regression: float = 0.01
    psi_warn: float = 0.1
    psi_error: float = 0.25
    digit_accuracy_floor: float = 0.95


def default_registry_uri(settings: Any) -> str:
    """``sqlite:///<lakehouse root's parent>/mlflow/mlflow.db`` (``./data/mlflow``) for a local lakehouse,
    ``$DAGSTER_HOME/mlflow/mlflow.db`` for an object-store one. Builds the string only: the folder is
    created on first use, not when definitions load."""
    root = str(settings.lakehouse_root)
    base = Path(settings.dagster_home) if "://" in root else Path(root).resolve().parent
    return f"sqlite:///{(base / 'mlflow' / 'mlflow.db').resolve()}"


def model_resources(settings: Any, tracking_uri: str | None = None, device: str = "auto") -> dict[str, dg.ConfigurableResource]:
    """The resources these assets need besides ``lakehouse``: ``torch_device``, ``model_registry``, ``model_policy``."""
    return {
        "torch_device": TorchDeviceResource(device=device),
        "model_registry": ModelRegistryResource(tracking_uri=tracking_uri or default_registry_uri(settings)),
        "model_policy": ModelPolicyResource(),
    }


# --------------------------------------------------------------------------- config


class PurchaseModelConfig(dg.Config):
    """Hyperparameters and holdout of ``models/purchase_model`` in the launchpad.

    Defaults come from :class:`~hybrid_pipeline.ml.purchase_config.PurchaseTrainConfig`, the one
    place they are set; where it runs (device, threads) comes from the ``torch_device`` resource.
    """

    hidden_sizes: list[int] = list(_PURCHASE_DEFAULTS.hidden_sizes)
    dropout: float = _PURCHASE_DEFAULTS.dropout
    learning_rate: float = _PURCHASE_DEFAULTS.learning_rate
    weight_decay: float = _PURCHASE_DEFAULTS.weight_decay
    batch_size: int = _PURCHASE_DEFAULTS.batch_size
    max_epochs: int = _PURCHASE_DEFAULTS.max_epochs
    patience: int = _PURCHASE_DEFAULTS.patience
    min_delta: float = _PURCHASE_DEFAULTS.min_delta
    seed: int = _PURCHASE_DEFAULTS.seed
    split_salt: str = _PURCHASE_DEFAULTS.split_salt
    valid_fraction: float = _PURCHASE_DEFAULTS.valid_fraction
    test_fraction: float = _PURCHASE_DEFAULTS.test_fraction

    def train_config(self, device: str, num_threads: int | None) -> PurchaseTrainConfig:
        d = self.model_dump()
        d["hidden_sizes"] = tuple(d["hidden_sizes"])
        return PurchaseTrainConfig(**d, device=device, num_threads=num_threads)


class DigitModelConfig(dg.Config):
    """Hyperparameters of ``models/digit_classifier`` in the launchpad.

    Defaults come from :class:`~hybrid_pipeline.ml.digit_config.DigitTrainConfig`, the one place
    they are set; where it runs (device, threads) comes from the ``torch_device`` resource.
    """

    channels: list[int] = list(_DIGIT_DEFAULTS.channels)
    hidden: int = _DIGIT_DEFAULTS.hidden
    dropout: float = _DIGIT_DEFAULTS.dropout
    learning_rate: float = _DIGIT_DEFAULTS.learning_rate
    weight_decay: float = _DIGIT_DEFAULTS.weight_decay
    batch_size: int = _DIGIT_DEFAULTS.batch_size
    max_epochs: int = _DIGIT_DEFAULTS.max_epochs
    patience: int = _DIGIT_DEFAULTS.patience
    min_delta: float = _DIGIT_DEFAULTS.min_delta
    seed: int = _DIGIT_DEFAULTS.seed
    verify_sha256: bool = _DIGIT_DEFAULTS.verify_sha256

    def train_config(self, device: str, num_threads: int | None) -> DigitTrainConfig:
        d = self.model_dump()
        d["channels"] = tuple(d["channels"])
        return DigitTrainConfig(**d, device=device, num_threads=num_threads)


# --------------------------------------------------------------------------- helpers


def _latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, Any]:
    """Plain values of the asset's latest materialization metadata ({} when never materialized)."""
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return {}
    return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _float_meta(value: float | None) -> float:
    return float(value) if value is not None and math.isfinite(value) else float("nan")


def _training_snapshot(lh: Any, instance: dg.DagsterInstance) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The training set at the version its latest materialization recorded, and that record."""
    table = table_of(TRAINING_SET)
    meta = _latest_metadata(instance, TRAINING_SET)
    version = meta.get("delta_version")
    if version is None or int(version) < 0:
        version = lh.version(table)
        if version is None:
            raise dg.Failure(f"{table} does not exist yet: materialize features/training_set first")
    version = int(version)
    rows = lh.read(table, version=version)
    record = {
        "version": version,
        "source_versions": {str(k): int(v) for k, v in (meta.get("source_versions") or {}).items()},
        "content_sha256": meta.get("content_sha256"),
        "definitions_hash": meta.get("definitions_hash"),
    }
    return rows, record


def _run_inputs(registry: Any, run_id: str) -> dict[str, int]:
    tags = registry.get_run(run_id)["tags"]
    return {str(k): int(v) for k, v in json.loads(tags.get("input_versions") or "{}").items()}


def _model_config(registry: Any, run_id: str) -> PurchaseTrainConfig:
    params = registry.get_run(run_id)["params"]
    return recipe_mod.config_from_run_params(params)


def _encoding_of(config: Mapping[str, Any]) -> dict[str, Any]:
    return dict((config.get("extra") or {}).get("encoding") or recipe_mod.encoding_spec())


def _score(model: Any, encoding: Mapping[str, Any], rows: pl.DataFrame | Sequence[Mapping[str, Any]],
           device: Any = None) -> np.ndarray:
    from hybrid_pipeline.ml.purchase_model import predict_proba

    X = recipe_mod.encode_features(rows, encoding)
    if X.shape[0] == 0:
        return np.empty(0, dtype=np.float64)
    return predict_proba(model, X, device=device)


# --------------------------------------------------------------------------- automation


def drift_check_condition() -> dg.AutomationCondition:
    """Run the drift check on a partition of ``gold/user_features`` once it was (re)materialized.

    Only partitions of the last :data:`DRIFT_LOOKBACK` (the daily run's day, and today's), once per
    materialization (``since_last_handled``: a request or an evaluation of the check handles it),
    never while the partition or the check itself is being run. This is how the daily run's
    ``02:00 -> bronze -> silver -> gold/user_features`` leads to a drift verdict without a click:
    the automation sensor requests the check after the daily run, apart from it, so a drifting
    day never fails the daily load.
    """
    AC = dg.AutomationCondition
    return (
        AC.in_latest_time_window(DRIFT_LOOKBACK)
        & AC.any_deps_updated().since_last_handled().with_label("features partition updated since the last check")
        & ~AC.any_deps_in_progress().with_label("features partition in progress")
        & ~AC.in_progress()
    ).with_label("check drift after each features update")


def purchase_retrain_condition() -> dg.AutomationCondition:
    """Retrain when (features updated AND drift detected, both since the last retrain) OR weekly; never while upstream runs.

    * features updated: a partition of ``gold/user_features`` or ``features/training_set`` was
      materialized since ``models/purchase_model`` was last requested/updated;
    * drift detected: since the last retrain, the ``feature_drift`` check of a partition of the
      last :data:`DRIFT_LOOKBACK` turned failed (WARN or ERROR; ``check_failed().newly_true()``,
      per partition). Dagster clears a partition's check status when the partition is
      rematerialized, so a failing verdict is always about the partition's newest rows; a
      failure the previous retrain already answered, or yesterday's failure while today's verdict
      is pending or passed, does not count again. The check runs by itself after each features
      update (:func:`drift_check_condition`). A verdict that arrives while ``gold/user_features``
      is being rewritten is ignored: the rerun of the check on the new rows decides;
    * weekly: ``on_cron("0 4 * * 1")`` (after its deps updated since the tick);
    * never while ``purchase_model`` itself or any dep is in progress (a condition that held
      meanwhile fires once the upstream run is over).
    """
    AC = dg.AutomationCondition
    features_updated = (
        AC.any_deps_updated()
        .allow(dg.AssetSelection.assets(USER_FEATURES, TRAINING_SET))
        .since_last_handled()
        .with_label("features updated since last retrain")
    )
    # A verdict on a partition being rewritten right now is stale: its rerun decides. This term also
    # keeps the two since_last_handled legs apart: Dagster keys a SINCE node's cursor by the class
    # names of its two children only, so two "any deps ... since last handled" legs on one asset
    # would share (and overwrite) one cursor.
    fresh_drift_verdict = (
        AC.any_deps_match(
            AC.in_latest_time_window(DRIFT_LOOKBACK)
            & AC.any_checks_match(AC.check_failed().newly_true()).allow(dg.AssetSelection.checks(DRIFT_CHECK_KEY))
        ).allow(dg.AssetSelection.assets(USER_FEATURES))
        & ~AC.any_deps_match(AC.in_progress()).allow(dg.AssetSelection.assets(USER_FEATURES))
    )
    drift_detected = fresh_drift_verdict.since_last_handled().with_label(
        "feature drift detected since last retrain (PSI check failed)")
    on_drift = (features_updated & drift_detected).with_label("features updated with drift")
    weekly = AC.on_cron(RETRAIN_CRON).with_label(f"weekly retrain ({RETRAIN_CRON} UTC)")
    return (
        (on_drift | weekly)
        & ~AC.any_deps_in_progress().with_label("upstream in progress")
        & ~AC.in_progress()
    ).with_label("retrain purchase model: drift or weekly, not while upstream runs")


def promotion_condition() -> dg.AutomationCondition:
    """Promote a newly trained version once its blocking gate passed (same run or later)."""
    AC = dg.AutomationCondition
    return (AC.eager() & AC.all_deps_blocking_checks_passed()).with_label("promote when the evaluation gate passed")


# --------------------------------------------------------------------------- predictor (serving)


class PurchasePredictor:
    """``predictor(feature_dicts) -> scores``: the serving API's ``POST /predict`` callable.

    Feature dicts are what the online store returns (raw feature columns); they are encoded
    exactly like the training rows (the encoding stored with the model) and scored on CPU.
    """

    def __init__(self, model: Any, encoding: Mapping[str, Any], version: int | None = None,
                 run_id: str | None = None, name: str = PURCHASE_MODEL_NAME) -> None:
        self.model = model.eval()
        self.encoding = dict(encoding)
        self.version = version
        self.run_id = run_id
        self.name = name

    @classmethod
    def from_registry(cls, tracking_uri: str, name: str = PURCHASE_MODEL_NAME,
                      version: int | str = "production") -> "PurchasePredictor":
        from hybrid_pipeline.ml.registry import load_model_version

        loaded = load_model_version(tracking_uri, name, version, map_location="cpu")
        return cls(loaded.model, _encoding_of(loaded.config), loaded.version, loaded.run_id, name)

    def __call__(self, feature_dicts: Sequence[Mapping[str, Any]]) -> list[float]:
        return [float(p) for p in _score(self.model, self.encoding, list(feature_dicts), device="cpu")]


def purchase_predictor(tracking_uri: str, version: int | str = "production",
                       name: str = PURCHASE_MODEL_NAME) -> PurchasePredictor:
    """The production purchase model (or ``version``) as a ``predictor`` for ``create_app(..., predictor=...)``."""
    return PurchasePredictor.from_registry(tracking_uri, name, version)


# --------------------------------------------------------------------------- drift


def drift_frame(rows: pl.DataFrame) -> pl.DataFrame:
    """The columns drift is measured on: numeric features as they are, the segment as a category,
    and the recent event types as a count per type (the way the model sees them)."""
    numeric = list(recipe_mod.NUMERIC_FEATURES)
    counts = recipe_mod.encode_frame(rows).select(f"recent_{t}" for t in recipe_mod.EVENT_TYPES)
    raw = recipe_mod.raw_feature_frame(rows)
    return pl.concat([raw.select(*numeric, "user_segment"), counts], how="horizontal")


# Aggregates over a user's whole history. Their distribution moves with the length of the history
# itself: ``total_events`` only grows, and ``avg_session_duration`` (a lifetime mean) narrows as
# events accumulate. The training snapshot always lags the newest day (labels need a complete
# 7-day horizon), so on any growing dataset these two drift every day, and a retrain cannot make
# that go away: in the verdict they would turn "retrain on drift" into "retrain on every update".
# Their PSI is measured and reported (``lifetime_psi``) but does not decide the check.
LIFETIME_FEATURES: Final = ("total_events", "avg_session_duration")
_DRIFT_CANDIDATES: Final = [*recipe_mod.NUMERIC_FEATURES, "user_segment", *[f"recent_{t}" for t in recipe_mod.EVENT_TYPES]]
DRIFT_COLUMNS: Final = [c for c in _DRIFT_CANDIDATES if c not in LIFETIME_FEATURES]
"""The model inputs whose PSI decides the drift check (every input but :data:`LIFETIME_FEATURES`)."""


# --------------------------------------------------------------------------- definitions


def build_models(partitions: dg.PartitionsDefinition) -> dg.Definitions:
    """Model assets and checks; resources from :func:`model_resources` (plus ``lakehouse``)."""

    @torch_asset(
        key=PURCHASE_MODEL,
        deps=[TRAINING_SET, USER_FEATURES],
        group_name=_GROUP,
        kinds={"mlflow"},
        owners=_OWNERS,
        automation_condition=purchase_retrain_condition(),
        check_specs=[dg.AssetCheckSpec(CONVERGENCE_CHECK, asset=PURCHASE_MODEL,
                                       description="Training converged: the train loss fell and the best validation "
                                       "loss is below the first epoch's.")],
        description="Purchase-in-7-days MLP trained on features/training_set (encoded features, users split by hash, "
        "seeded, early stopping); logged to MLflow with the training set's Delta version, its source versions and "
        "content hash, feature definitions hash, code version, seed and hyperparameters; registered as a new version "
        "of `purchase_model`.",
    )
    @measured
    def purchase_model(
        context: dg.AssetExecutionContext,
        config: PurchaseModelConfig,
        lakehouse: LakehouseResource,
        torch_device: TorchDeviceResource,
        model_registry: ModelRegistryResource,
    ) -> dg.MaterializeResult:
        from hybrid_pipeline.features import catalog
        from hybrid_pipeline.ml.plots import loss_curve_markdown, metrics_markdown, roc_curve_markdown
        from hybrid_pipeline.ml.registry import detect_code_version

        lh = lakehouse.lakehouse()
        rows, snapshot = _training_snapshot(lh, context.instance)
        if rows.height == 0:
            raise dg.Failure("features/training_set is empty (no label has a complete 7-day horizon yet)")
        settings = torch_device.settings()
        train_config = config.train_config(settings.device, torch_device.num_threads)
        result, data = recipe_mod.train_recipe(rows, train_config, device=settings)
        m = result.metrics
        definitions_hash = snapshot["definitions_hash"] or catalog.definitions_hash(
            catalog.feature_tables(lh.uri(table_of(USER_FEATURES))))
        input_versions = {table_of(TRAINING_SET): snapshot["version"], **snapshot["source_versions"]}
        if not snapshot["source_versions"]:
            context.log.warning("features/training_set recorded no source versions: this run cannot be reproduced")
        code_version = detect_code_version()
        run_id, version = recipe_mod.record_training_run(
            model_registry.tracking_uri, result,
            training_set_version=snapshot["version"], source_versions=snapshot["source_versions"],
            content_sha256=snapshot["content_sha256"], definitions_hash=definitions_hash,
            tags={"dagster.run_id": context.run.run_id, "dagster.asset": PURCHASE_MODEL.to_user_string()},
            run_name=f"purchase_model-{context.run.run_id[:8]}",
        )
        context.log.info(f"purchase_model v{version}: test AUC {m['test_auc']:.4f} on {int(m['test_rows'])} rows "
                         f"({result.epochs_run} epochs, {result.train_seconds:.2f}s on {result.device})")

        first, last = result.loss_curve[0], result.loss_curve[-1]
        converged = last.train_loss < first.train_loss and result.metrics["best_valid_loss"] < first.valid_loss
        y_test, p_test = result.predictions["test"]
        roc = roc_curve_markdown(y_test, p_test, title=f"ROC (test users, v{version})") if 0 < y_test.sum() < y_test.size else "one class only"
        metadata = {
            "test_auc": _float_meta(m["test_auc"]),
            "valid_auc": _float_meta(m["valid_auc"]),
            "test_log_loss": m["test_log_loss"],
            "test_calibration_error": m["test_ece"],
            "test_accuracy": m["test_accuracy"],
            "dagster/row_count": rows.height,
            "rows": dg.MetadataValue.json(data.counts()),
            "n_params": result.n_params,
            "train_seconds": round(result.train_seconds, 3),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "device": result.device,
            "deterministic": result.deterministic,
            "seed": train_config.seed,
            "hyperparameters": dg.MetadataValue.json(_json_safe(result.params)),
            "mlflow_run_id": run_id,
            "model_name": PURCHASE_MODEL_NAME,
            "model_version": version,
            "tracking_uri": model_registry.tracking_uri,
            "training_set_version": snapshot["version"],
            "input_versions": dg.MetadataValue.json(input_versions),
            "training_set_sha256": snapshot["content_sha256"] or "",
            "feature_definitions_hash": definitions_hash,
            "code_version": code_version,
            "loss_curve": dg.MetadataValue.json(_json_safe(result.loss_curve_dicts())),
            "loss_curve_plot": dg.MetadataValue.md(loss_curve_markdown(result.loss_curve, best_epoch=result.best_epoch)),
            "roc_curve_plot": dg.MetadataValue.md(roc),
            "metrics": dg.MetadataValue.md(metrics_markdown({k: v for k, v in m.items() if math.isfinite(v)})),
        }
        check = dg.AssetCheckResult(
            check_name=CONVERGENCE_CHECK,
            passed=bool(converged),
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"first_train_loss": first.train_loss, "last_train_loss": last.train_loss,
                      "first_valid_loss": first.valid_loss, "best_valid_loss": result.metrics["best_valid_loss"],
                      "best_epoch": result.best_epoch, "epochs_run": result.epochs_run},
            description=None if converged else "the loss did not decrease: the model did not learn",
        )
        return dg.MaterializeResult(metadata=metadata, check_results=[check])

    @dg.asset_check(
        asset=PURCHASE_MODEL,
        name=GATE_CHECK,
        blocking=True,
        description="Evaluation gate (blocking): the new version's AUC on its test users >= the floor, and not worse "
        "than the production version's AUC on the same rows by more than the allowed regression.",
    )
    def evaluation_gate(
        context: dg.AssetCheckExecutionContext,
        lakehouse: LakehouseResource,
        model_registry: ModelRegistryResource,
        model_policy: ModelPolicyResource,
    ) -> dg.AssetCheckResult:
        from hybrid_pipeline.ml.metrics import roc_auc

        meta = _latest_metadata(context.instance, PURCHASE_MODEL)
        if "model_version" not in meta:
            return dg.AssetCheckResult(passed=False, description="models/purchase_model has no registered version yet")
        new_version = int(meta["model_version"])
        registry = model_registry.registry()
        new = registry.load_model_version(PURCHASE_MODEL_NAME, new_version)
        run_id = str(new.run_id)
        inputs = _run_inputs(registry, run_id)
        train_config = _model_config(registry, run_id)
        lh = lakehouse.lakehouse()
        rows = lh.read(table_of(TRAINING_SET), version=inputs[table_of(TRAINING_SET)])
        data = recipe_mod.prepare(rows, train_config)
        test_rows = data.rows.filter(pl.col("split") == "test")
        y = test_rows[recipe_mod.LABEL].cast(pl.Float64).to_numpy()

        def auc_of(model: Any, config: Mapping[str, Any]) -> float:
            try:
                return roc_auc(y, _score(model, _encoding_of(config), test_rows, device="cpu"))
            except ValueError:  # one class only / no rows
                return float("nan")

        new_auc = auc_of(new.model, new.config)
        prod_version = registry.get_production(PURCHASE_MODEL_NAME)
        prod_auc: float | None = None
        if prod_version is not None and prod_version != new_version:
            prod = registry.load_model_version(PURCHASE_MODEL_NAME, prod_version)
            prod_auc = auc_of(prod.model, prod.config)
        floor_ok = math.isfinite(new_auc) and new_auc >= model_policy.auc_floor
        regression_ok = prod_auc is None or not math.isfinite(prod_auc) or new_auc >= prod_auc - model_policy.max_auc_regression
        passed = bool(floor_ok and regression_ok)
        reasons = []
        if not floor_ok:
            reasons.append(f"AUC {new_auc:.4f} is below the floor {model_policy.auc_floor}")
        if not regression_ok:
            reasons.append(f"AUC {new_auc:.4f} is more than {model_policy.max_auc_regression} below production "
                           f"v{prod_version} ({prod_auc:.4f}) on the same rows")
        client = model_registry.client()
        for key, value in {GATE_TAG: "passed" if passed else "failed", f"{GATE_TAG}.auc": f"{new_auc:.6f}",
                           f"{GATE_TAG}.production_auc": "" if prod_auc is None else f"{prod_auc:.6f}",
                           f"{GATE_TAG}.production_version": "" if prod_version is None else str(prod_version)}.items():
            client.set_model_version_tag(PURCHASE_MODEL_NAME, str(new_version), key, value)
        return dg.AssetCheckResult(
            passed=passed,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "model_version": new_version,
                "auc": _float_meta(new_auc),
                "auc_floor": model_policy.auc_floor,
                "production_version": -1 if prod_version is None else int(prod_version),
                "production_auc": _float_meta(prod_auc),
                "max_auc_regression": model_policy.max_auc_regression,
                "auc_delta_vs_production": _float_meta(None if prod_auc is None else new_auc - prod_auc),
                "test_rows": test_rows.height,
                "training_set_version": inputs[table_of(TRAINING_SET)],
            },
            description="; ".join(reasons) or None,
        )

    @dg.asset(
        key=PRODUCTION_PURCHASE_MODEL,
        deps=[PURCHASE_MODEL],
        group_name=_GROUP,
        kinds={"mlflow"},
        owners=_OWNERS,
        automation_condition=promotion_condition(),
        description="The purchase model version serving uses: MLflow alias `production` moved to the newest version "
        "that passed the evaluation gate (blocking, so a failing gate means no promotion).",
    )
    @measured
    def production_purchase_model(
        context: dg.AssetExecutionContext, model_registry: ModelRegistryResource
    ) -> dg.MaterializeResult:
        meta = _latest_metadata(context.instance, PURCHASE_MODEL)
        if "model_version" not in meta:
            raise dg.Failure("models/purchase_model has no registered version to promote")
        version = int(meta["model_version"])
        client = model_registry.client()
        mv = client.get_model_version(PURCHASE_MODEL_NAME, str(version))
        gate = mv.tags.get(GATE_TAG)
        if gate != "passed":
            raise dg.Failure(f"purchase_model v{version} did not pass the evaluation gate (gate: {gate or 'not run'}); "
                             "not promoting", metadata={"model_version": version})
        registry = model_registry.registry()
        previous = registry.get_production(PURCHASE_MODEL_NAME)
        registry.set_production(PURCHASE_MODEL_NAME, version)
        context.log.info(f"purchase_model: production v{previous} -> v{version}")
        return dg.MaterializeResult(metadata={
            "model_name": PURCHASE_MODEL_NAME,
            "model_version": version,
            "previous_version": -1 if previous is None else int(previous),
            "mlflow_run_id": str(mv.run_id),
            "gate_auc": float(mv.tags.get(f"{GATE_TAG}.auc") or "nan"),
            "alias": "production",
        })

    @torch_asset(
        key=PREDICTIONS,
        deps=[PRODUCTION_PURCHASE_MODEL, USER_FEATURES],
        partitions_def=partitions,
        group_name=_GROUP,
        kinds={"delta"},
        owners=_OWNERS,
        tags={"layer": "gold"},
        description="Daily batch scores: P(purchase in the next 7 days) from the production purchase model for every "
        "user with a feature row as of the day (latest row inside the 30-day TTL); replaces the day's rows.",
    )
    @measured
    def predictions(
        context: dg.AssetExecutionContext,
        lakehouse: LakehouseResource,
        model_registry: ModelRegistryResource,
        torch_device: TorchDeviceResource,
    ) -> dg.MaterializeResult:
        from hybrid_pipeline.features.catalog import USER_FEATURE_TTL
        from hybrid_pipeline.ml.training import torch_threads

        lh = lakehouse.lakehouse()
        day = date.fromisoformat(context.partition_key)
        registry = model_registry.registry()
        loaded = registry.load_production(PURCHASE_MODEL_NAME)
        if loaded is None:
            raise dg.Failure("no production purchase model yet: materialize models/production_purchase_model first")
        features_table = table_of(USER_FEATURES)
        if lh.exists(features_table):
            window_start = day - timedelta(days=USER_FEATURE_TTL.days - 1)
            latest = (
                lh.scan(features_table)
                .filter(pl.col("event_date").is_between(window_start, day))
                .sort("user_id", "event_date")
                .group_by("user_id", maintain_order=True)
                .last()
                .collect()
            )
        else:
            latest = pl.DataFrame(schema=FEATURES_SCHEMA)
        settings = torch_device.settings()
        model = loaded.model.to(settings.torch_device)
        with torch_threads(torch_device.num_threads):
            scores = _score(model, _encoding_of(loaded.config), latest, device=settings.torch_device)
        out = pl.DataFrame(
            {
                "prediction_date": [day] * latest.height,
                "user_id": latest["user_id"],
                "feature_date": latest["event_date"],
                "score": scores,
                "model_name": [PURCHASE_MODEL_NAME] * latest.height,
                "model_version": [loaded.version] * latest.height,
                "model_run_id": [loaded.run_id] * latest.height,
                "scored_at": [datetime.now(timezone.utc)] * latest.height,
            },
            schema=PREDICTIONS_SCHEMA,
        )
        table = table_of(PREDICTIONS)
        version = lh.replace_where(table, out, f"prediction_date = '{day.isoformat()}'", partition_by=["prediction_date"])
        return dg.MaterializeResult(metadata=table_metadata(
            lh.uri(table), PREDICTIONS_SCHEMA, out.height, version,
            model_version=int(loaded.version),
            mlflow_run_id=str(loaded.run_id),
            mean_score=round(float(scores.mean()), 6) if scores.size else 0.0,
            device=settings.description(),
        ))

    @torch_asset(
        key=DIGIT_CLASSIFIER,
        deps=[IMAGE_TRAINING_MANIFEST],
        group_name=_GROUP,
        kinds={"mlflow"},
        owners=_OWNERS,
        check_specs=[dg.AssetCheckSpec(DIGIT_ACCURACY_CHECK, asset=DIGIT_CLASSIFIER,
                                       description="Test accuracy at or above the floor (0.95 by default).")],
        description="Digit CNN trained on the raw images of gold/image_training_manifest (hash splits, early stopping); "
        "logged to MLflow with the manifest's Delta version and registered as `digit_classifier`.",
    )
    @measured
    def digit_classifier(
        context: dg.AssetExecutionContext,
        config: DigitModelConfig,
        lakehouse: LakehouseResource,
        torch_device: TorchDeviceResource,
        model_registry: ModelRegistryResource,
        model_policy: ModelPolicyResource,
    ) -> dg.MaterializeResult:
        from hybrid_pipeline.defs.media import media_root
        from hybrid_pipeline.ml.digit_model import train_digit_classifier
        from hybrid_pipeline.ml.plots import loss_curve_markdown, metrics_markdown

        lh = lakehouse.lakehouse()
        table = table_of(IMAGE_TRAINING_MANIFEST)
        version = lh.version(table)
        if version is None:
            raise dg.Failure(f"{table} does not exist yet: run the media pipeline first")
        manifest = lh.read(table, version=version)
        settings = torch_device.settings()
        cfg = config.train_config(device=settings.device, num_threads=torch_device.num_threads)
        result = train_digit_classifier(manifest, media_root(lakehouse), cfg, device=settings)
        m = result.metrics
        registry = model_registry.registry()
        run_id = registry.log_train_result(
            DIGIT_MODEL_NAME, result, input_versions={table: int(version)},
            feature_definition={"manifest": table, "image_size": result.extra.get("image_size"),
                                "classes": result.extra.get("classes"), "split": "manifest hash split"},
            tags={"dagster.run_id": context.run.run_id, "dagster.asset": DIGIT_CLASSIFIER.to_user_string()},
            run_name=f"digit_classifier-{context.run.run_id[:8]}",
        )
        model_version = registry.register_model(DIGIT_MODEL_NAME, run_id, tags={"dagster.run_id": context.run.run_id})
        accuracy = float(m.get("test_accuracy", float("nan")))
        passed = math.isfinite(accuracy) and accuracy >= model_policy.digit_accuracy_floor
        return dg.MaterializeResult(
            metadata={
                "test_accuracy": _float_meta(accuracy),
                "valid_accuracy": _float_meta(m.get("valid_accuracy")),
                "test_calibration_error": _float_meta(m.get("test_ece")),
                "dagster/row_count": manifest.height,
                "rows": dg.MetadataValue.json(result.extra.get("split_rows", {})),
                "n_params": result.n_params,
                "train_seconds": round(result.train_seconds, 3),
                "epochs_run": result.epochs_run,
                "device": result.device,
                "seed": config.seed,
                "hyperparameters": dg.MetadataValue.json(_json_safe(cfg.to_params())),
                "manifest_version": int(version),
                "mlflow_run_id": run_id,
                "model_name": DIGIT_MODEL_NAME,
                "model_version": model_version,
                "loss_curve_plot": dg.MetadataValue.md(loss_curve_markdown(result.loss_curve, best_epoch=result.best_epoch)),
                "metrics": dg.MetadataValue.md(metrics_markdown({k: v for k, v in m.items() if math.isfinite(v)})),
            },
            check_results=[dg.AssetCheckResult(
                check_name=DIGIT_ACCURACY_CHECK, passed=bool(passed), severity=dg.AssetCheckSeverity.ERROR,
                metadata={"test_accuracy": _float_meta(accuracy), "floor": model_policy.digit_accuracy_floor},
            )],
        )

    @dg.asset_check(
        asset=USER_FEATURES,
        name=DRIFT_CHECK,
        partitions_def=partitions,
        blocking=False,
        automation_condition=drift_check_condition(),
        description="PSI per model input between the partition's feature rows and the production purchase model's "
        "training snapshot (the training set at the version its run recorded): WARN >= 0.1, ERROR >= 0.25. Lifetime "
        "aggregates (total_events, avg_session_duration) move with the length of the history on any growing dataset: "
        "their PSI is reported as lifetime_psi and does not decide the check. Runs by itself after each update of a "
        "recent partition (automation sensor), not in the daily load.",
    )
    def feature_drift(
        context: dg.AssetCheckExecutionContext,
        lakehouse: LakehouseResource,
        model_registry: ModelRegistryResource,
        model_policy: ModelPolicyResource,
    ) -> dg.AssetCheckResult:
        from hybrid_pipeline.ml.drift import drift_report

        day = date.fromisoformat(context.partition_key)
        registry = model_registry.registry()
        # cheap when no model exists yet: the automation sensor runs this check after every features update
        prod_version = registry.get_production(PURCHASE_MODEL_NAME) if model_registry.store_exists() else None
        if prod_version is None:
            return dg.AssetCheckResult(passed=True, severity=dg.AssetCheckSeverity.WARN,
                                       metadata={"partition": day.isoformat()},
                                       description="no production purchase model yet: nothing to compare against")
        client = model_registry.client()
        run_id = str(client.get_model_version(PURCHASE_MODEL_NAME, str(prod_version)).run_id)
        inputs = _run_inputs(registry, run_id)
        lh = lakehouse.lakehouse()
        ref_version = inputs[table_of(TRAINING_SET)]
        reference = lh.read(table_of(TRAINING_SET), version=ref_version).filter(pl.col("total_events").is_not_null())
        current = lh.scan(table_of(USER_FEATURES)).filter(pl.col("event_date") == day).collect()
        common: dict[str, Any] = {"partition": day.isoformat(), "production_version": int(prod_version),
                  "reference": f"{table_of(TRAINING_SET)}@v{ref_version}", "reference_rows": reference.height,
                  "current_rows": current.height}
        if current.height == 0 or reference.height == 0:
            return dg.AssetCheckResult(passed=True, severity=dg.AssetCheckSeverity.WARN, metadata=common,
                                       description="no rows to compare")
        ref_frame, cur_frame = drift_frame(reference), drift_frame(current)
        report = drift_report(ref_frame, cur_frame, DRIFT_COLUMNS, warn=model_policy.psi_warn, error=model_policy.psi_error)
        lifetime = drift_report(ref_frame, cur_frame, list(LIFETIME_FEATURES), warn=model_policy.psi_warn,
                                error=model_policy.psi_error)

        def rounded(r: Mapping[str, Any]) -> dict[str, float | None]:
            return {c: (None if f.get("psi") is None else round(float(f["psi"]), 5)) for c, f in r["features"].items()}

        severity = report["severity"]
        return dg.AssetCheckResult(
            passed=severity == "OK",
            severity=dg.AssetCheckSeverity.ERROR if severity == "ERROR" else dg.AssetCheckSeverity.WARN,
            metadata={**common, "max_psi": _float_meta(report["max_psi"]), "max_psi_feature": report["max_psi_feature"] or "",
                      "psi": dg.MetadataValue.json(rounded(report)), "warn_features": dg.MetadataValue.json(report["warn_features"]),
                      "error_features": dg.MetadataValue.json(report["error_features"]),
                      "lifetime_psi": dg.MetadataValue.json(rounded(lifetime)),
                      "warn_threshold": model_policy.psi_warn, "error_threshold": model_policy.psi_error},
            description=None if severity == "OK" else
            f"drift {severity}: max PSI {report['max_psi']:.3f} on {report['max_psi_feature']}",
        )

    model_assets = [purchase_model, production_purchase_model, predictions, digit_classifier]
    return dg.Definitions(
        assets=model_assets,
        asset_checks=[evaluation_gate, feature_drift],
        jobs=[
            dg.define_asset_job(
                PURCHASE_TRAINING_JOB, selection=dg.AssetSelection.assets(PURCHASE_MODEL, PRODUCTION_PURCHASE_MODEL),
                description="Train the purchase model, run its checks (the blocking evaluation gate among them) and "
                "promote the new version when the gate passed.",
            ),
            dg.define_asset_job(DIGIT_TRAINING_JOB, selection=dg.AssetSelection.assets(DIGIT_CLASSIFIER),
                                description="Train and register the digit CNN on the image manifest."),
            dg.define_asset_job(PREDICTIONS_JOB, selection=dg.AssetSelection.assets(PREDICTIONS), partitions_def=partitions,
                                description="A day's batch scores from the production purchase model."),
        ],
        sensors=[
            dg.AutomationConditionSensorDefinition(
                AUTOMATION_SENSOR,
                target=dg.AssetSelection.assets(TRAINING_SET, PURCHASE_MODEL, PRODUCTION_PURCHASE_MODEL)
                | dg.AssetSelection.checks(DRIFT_CHECK_KEY),
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=60,
                description="Rebuilds the training set after new labels, checks feature drift after each features "
                "update, retrains the purchase model on drift or weekly and promotes versions that pass the gate.",
            )
        ],
    )


__all__ = [
    "AUTOMATION_SENSOR",
    "DIGIT_TRAINING_JOB",
    "PREDICTIONS_JOB",
    "PURCHASE_TRAINING_JOB",
    "DIGIT_CLASSIFIER",
    "DRIFT_CHECK",
    "DRIFT_CHECK_KEY",
    "GATE_CHECK",
    "GATE_CHECK_KEY",
    "LIFETIME_FEATURES",
    "PREDICTIONS",
    "PRODUCTION_PURCHASE_MODEL",
    "PURCHASE_MODEL",
    "DigitModelConfig",
    "ModelPolicyResource",
    "ModelRegistryResource",
    "PurchaseModelConfig",
    "PurchasePredictor",
    "TorchDeviceResource",
    "build_models",
    "default_registry_uri",
    "drift_check_condition",
    "drift_frame",
    "model_resources",
    "promotion_condition",
    "purchase_predictor",
    "purchase_retrain_condition",
]
