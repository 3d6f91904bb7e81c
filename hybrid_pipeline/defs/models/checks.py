"""Checks of the models: convergence, the blocking evaluation gate, the digit accuracy floor and feature drift.

Each judges what the model's latest materialization recorded, apart from the asset: a model
asset that trains nothing (too few rows) yields no output, and its checks are skipped with it.

The gate's rule is :func:`hybrid_pipeline.ml.gate.gate_verdict` and the drift inputs are framed by
:mod:`hybrid_pipeline.ml.purchase_drift`; here the models and rows are loaded and the verdicts recorded.
"""

import math
from collections.abc import Mapping
from datetime import date
from typing import Any

import dagster as dg
import polars as pl

from hybrid_pipeline.dagster_support.keys import TRAINING_SET, USER_FEATURES, table_of
from hybrid_pipeline.dagster_support.loading import current_settings, daily_partitions
from hybrid_pipeline.dagster_support.resources import LakehouseResource, ModelPolicyResource, ModelRegistryResource
from hybrid_pipeline.defs.models.conditions import drift_check_condition
from hybrid_pipeline.defs.models.names import (
    CONVERGENCE_CHECK,
    DIGIT_ACCURACY_CHECK,
    DIGIT_CLASSIFIER,
    DRIFT_CHECK,
    GATE_CHECK,
    GATE_TAG,
    PURCHASE_MODEL,
    PURCHASE_MODEL_NAME,
)
from hybrid_pipeline.defs.models.records import float_meta, latest_metadata, model_config, run_inputs
from hybrid_pipeline.ml import reproduce as recipe_mod
from hybrid_pipeline.ml.gate import gate_verdict
from hybrid_pipeline.ml.predictor import encoding_of, score
from hybrid_pipeline.ml.purchase_drift import DRIFT_COLUMNS, LIFETIME_FEATURES, drift_frame


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

    meta = latest_metadata(context.instance, PURCHASE_MODEL)
    if "model_version" not in meta:
        return dg.AssetCheckResult(passed=False, description="models/purchase_model has no registered version yet")
    new_version = int(meta["model_version"])
    registry = model_registry.registry()
    new = registry.load_model_version(PURCHASE_MODEL_NAME, new_version)
    run_id = str(new.run_id)
    inputs = run_inputs(registry, run_id)
    train_config = model_config(registry, run_id)
    lh = lakehouse.lakehouse()
    rows = lh.read(table_of(TRAINING_SET), version=inputs[table_of(TRAINING_SET)])
    data = recipe_mod.prepare(rows, train_config)
    test_rows = data.rows.filter(pl.col("split") == "test")
    y = test_rows[recipe_mod.LABEL].cast(pl.Float64).to_numpy()

    def auc_of(model: Any, config: Mapping[str, Any]) -> float:
        try:
            return roc_auc(y, score(model, encoding_of(config), test_rows, device="cpu"))
        except ValueError:  # one class only / no rows
            return float("nan")

    new_auc = auc_of(new.model, new.config)
    prod_version = registry.get_production(PURCHASE_MODEL_NAME)
    prod_auc: float | None = None
    if prod_version is not None and prod_version != new_version:
        prod = registry.load_model_version(PURCHASE_MODEL_NAME, prod_version)
        prod_auc = auc_of(prod.model, prod.config)
    verdict = gate_verdict(new_auc, prod_auc, prod_version, model_policy.auc_floor, model_policy.max_auc_regression)
    passed = verdict.passed
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
            "auc": float_meta(new_auc),
            "auc_floor": model_policy.auc_floor,
            "production_version": -1 if prod_version is None else int(prod_version),
            "production_auc": float_meta(prod_auc),
            "max_auc_regression": model_policy.max_auc_regression,
            "auc_delta_vs_production": float_meta(None if prod_auc is None else new_auc - prod_auc),
            "test_rows": test_rows.height,
            "training_set_version": inputs[table_of(TRAINING_SET)],
        },
        description="; ".join(verdict.reasons) or None,
    )


@dg.asset_check(
    asset=PURCHASE_MODEL,
    name=CONVERGENCE_CHECK,
    description="Training converged: the train loss fell and the best validation loss is below the first epoch's "
    "(the losses the latest version's materialization recorded).",
)
def training_converged(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    losses = latest_metadata(context.instance, PURCHASE_MODEL).get("convergence")
    if not losses:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                   description="models/purchase_model recorded no losses to judge")
    converged = (losses["last_train_loss"] < losses["first_train_loss"]
                 and losses["best_valid_loss"] < losses["first_valid_loss"])
    return dg.AssetCheckResult(
        passed=bool(converged),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={name: float_meta(value) for name, value in losses.items()},
        description=None if converged else "the loss did not decrease: the model did not learn",
    )


@dg.asset_check(
    asset=DIGIT_CLASSIFIER,
    name=DIGIT_ACCURACY_CHECK,
    description="Test accuracy of the latest version at or above the floor (0.95 by default).",
)
def digit_accuracy_floor(context: dg.AssetCheckExecutionContext, model_policy: ModelPolicyResource) -> dg.AssetCheckResult:
    accuracy = float_meta(latest_metadata(context.instance, DIGIT_CLASSIFIER).get("test_accuracy"))
    passed = math.isfinite(accuracy) and accuracy >= model_policy.digit_accuracy_floor
    return dg.AssetCheckResult(passed=bool(passed), severity=dg.AssetCheckSeverity.ERROR,
                               metadata={"test_accuracy": accuracy, "floor": model_policy.digit_accuracy_floor})


def build_feature_drift(partitions: dg.PartitionsDefinition) -> dg.AssetChecksDefinition:
    """The drift check per partition of ``gold/user_features``: partitioned, so built at load time."""

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
        inputs = run_inputs(registry, run_id)
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
            metadata={**common, "max_psi": float_meta(report["max_psi"]), "max_psi_feature": report["max_psi_feature"] or "",
                      "psi": dg.MetadataValue.json(rounded(report)), "warn_features": dg.MetadataValue.json(report["warn_features"]),
                      "error_features": dg.MetadataValue.json(report["error_features"]),
                      "lifetime_psi": dg.MetadataValue.json(rounded(lifetime)),
                      "warn_threshold": model_policy.psi_warn, "error_threshold": model_policy.psi_error},
            description=None if severity == "OK" else
            f"drift {severity}: max PSI {report['max_psi']:.3f} on {report['max_psi_feature']}",
        )

    return feature_drift


@dg.definitions
def defs() -> dg.Definitions:
    """The model checks; ``feature_drift`` takes the daily partitions of the load's settings."""
    return dg.Definitions(asset_checks=[training_converged, evaluation_gate, digit_accuracy_floor,
                                        build_feature_drift(daily_partitions(current_settings()))])
