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
* Too few rows, no model: ``models/purchase_model`` and ``models/digit_classifier`` train only
  when their input has at least ``min_training_rows`` rows (run config; the default is
  :data:`hybrid_pipeline.ml.readiness.MIN_TRAINING_ROWS`). Below it they yield no output
  (``output_required=False``): no version is registered, their checks and everything downstream
  in the run are skipped, the automation sensor sees no update (so no promotion), and an
  observation on the asset records the reason (metadata ``skipped``), which the UI shows and the
  CLI prints. ``gold/predictions`` likewise scores nothing while there is no production model.
* Checks: ``training_converged`` and ``evaluation_gate`` (blocking): AUC on the new
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

The checks are in :mod:`.checks`, the jobs in :mod:`.jobs`, the automation sensor in :mod:`.sensors`
and its conditions in :mod:`.conditions`; scoring, the gate's rule and drift framing are plain
libraries in :mod:`hybrid_pipeline.ml`. The torch assets are declared with
:func:`~hybrid_pipeline.dagster_support.compute.torch_asset`, which gives them the ``pytorch`` kind, the ``gpu`` pool, the GPU tags and the k8s GPU request.
"""

import json
import math
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import polars as pl

from hybrid_pipeline.dagster_support.compute import torch_asset
from hybrid_pipeline.dagster_support.keys import IMAGE_TRAINING_MANIFEST, PREDICTIONS, TRAINING_SET, USER_FEATURES, table_of
from hybrid_pipeline.dagster_support.loading import current_settings, daily_partitions
from hybrid_pipeline.dagster_support.metadata import measured, table_metadata
from hybrid_pipeline.dagster_support.resources import LakehouseResource, ModelRegistryResource, TorchDeviceResource
from hybrid_pipeline.defs.models.conditions import promotion_condition, purchase_retrain_condition
from hybrid_pipeline.defs.models.config import DigitModelConfig, PurchaseModelConfig
from hybrid_pipeline.defs.models.names import (
    DIGIT_CLASSIFIER,
    DIGIT_MODEL_NAME,
    GATE_TAG,
    GROUP,
    OWNERS,
    PRODUCTION_PURCHASE_MODEL,
    PURCHASE_MODEL,
    PURCHASE_MODEL_NAME,
)
from hybrid_pipeline.defs.models.records import float_meta, json_safe, latest_metadata, skipped, training_snapshot
from hybrid_pipeline.lakehouse.catalog import GOLD_PREDICTIONS
from hybrid_pipeline.ml import reproduce as recipe_mod
from hybrid_pipeline.ml.predictor import encoding_of, score
from hybrid_pipeline.ml.readiness import too_few_rows
from hybrid_pipeline.transforms.features import FEATURES_SCHEMA

PREDICTIONS_SCHEMA = GOLD_PREDICTIONS.schema


@torch_asset(
    key=PURCHASE_MODEL,
    deps=[TRAINING_SET, USER_FEATURES],
    group_name=GROUP,
    kinds={"mlflow"},
    owners=OWNERS,
    automation_condition=purchase_retrain_condition(),
    output_required=False,
    description="Purchase-in-7-days MLP trained on features/training_set (encoded features, users split by hash, "
    "seeded, early stopping); logged to MLflow with the training set's Delta version, its source versions and "
    "content hash, feature definitions hash, code version, seed and hyperparameters; registered as a new version "
    "of `purchase_model`. With fewer labelled rows than `min_training_rows` (run config, 100 by default) it trains "
    "nothing: no version, no gate, no promotion; an observation on this asset says why.",
)
@measured
def purchase_model(
    context: dg.AssetExecutionContext,
    config: PurchaseModelConfig,
    lakehouse: LakehouseResource,
    torch_device: TorchDeviceResource,
    model_registry: ModelRegistryResource,
) -> Iterator[dg.MaterializeResult | dg.AssetObservation]:
    from hybrid_pipeline.features import catalog
    from hybrid_pipeline.ml.plots import loss_curve_markdown, metrics_markdown, roc_curve_markdown
    from hybrid_pipeline.ml.registry import detect_code_version

    lh = lakehouse.lakehouse()
    if lh.exists(table_of(TRAINING_SET)):
        rows, snapshot = training_snapshot(lh, context.instance)
    else:
        rows, snapshot = pl.DataFrame(), {"version": -1}
    reason = too_few_rows(rows.height, config.min_training_rows, "labelled rows")
    if reason is not None:
        description = (f"not trained: {reason} in features/training_set@v{snapshot['version']} (a label needs a "
                       "complete 7-day horizon); no version registered, nothing to gate or promote")
        context.log.warning(f"purchase_model {description}")
        yield skipped(PURCHASE_MODEL, reason, description, rows=rows.height,
                      min_training_rows=config.min_training_rows, training_set_version=snapshot["version"])
        return
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
        tags={"dagster.run_id": context.run.run_id, "dagster.asset": PURCHASE_MODEL.to_user_string(),
              # the registry keeps these view versions while an alias points at this model (features.catalog)
              "feature_view_versions": json.dumps(snapshot.get("feature_view_versions") or {}, sort_keys=True),
              # how the training set was retrieved (as_known_at: filter_by_created_timestamp), to rebuild it alike
              "training_set.retrieval": snapshot.get("retrieval") or ""},
        run_name=f"purchase_model-{context.run.run_id[:8]}",
    )
    context.log.info(f"purchase_model v{version}: test AUC {m['test_auc']:.4f} on {int(m['test_rows'])} rows "
                     f"({result.epochs_run} epochs, {result.train_seconds:.2f}s on {result.device})")

    first, last = result.loss_curve[0], result.loss_curve[-1]
    y_test, p_test = result.predictions["test"]
    roc = roc_curve_markdown(y_test, p_test, title=f"ROC (test users, v{version})") if 0 < y_test.sum() < y_test.size else "one class only"
    metadata = {
        "test_auc": float_meta(m["test_auc"]),
        "valid_auc": float_meta(m["valid_auc"]),
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
        "hyperparameters": dg.MetadataValue.json(json_safe(result.params)),
        "mlflow_run_id": run_id,
        "model_name": PURCHASE_MODEL_NAME,
        "model_version": version,
        "tracking_uri": model_registry.tracking_uri,
        "training_set_version": snapshot["version"],
        "input_versions": dg.MetadataValue.json(input_versions),
        "training_set_sha256": snapshot["content_sha256"] or "",
        "feature_definitions_hash": definitions_hash,
        "code_version": code_version,
        "loss_curve": dg.MetadataValue.json(json_safe(result.loss_curve_dicts())),
        "loss_curve_plot": dg.MetadataValue.md(loss_curve_markdown(result.loss_curve, best_epoch=result.best_epoch)),
        "roc_curve_plot": dg.MetadataValue.md(roc),
        "metrics": dg.MetadataValue.md(metrics_markdown({k: v for k, v in m.items() if math.isfinite(v)})),
        "convergence": dg.MetadataValue.json(json_safe({
            "first_train_loss": first.train_loss, "last_train_loss": last.train_loss,
            "first_valid_loss": first.valid_loss, "best_valid_loss": result.metrics["best_valid_loss"]})),
    }
    yield dg.MaterializeResult(metadata=metadata)


@dg.asset(
    key=PRODUCTION_PURCHASE_MODEL,
    deps=[PURCHASE_MODEL],
    group_name=GROUP,
    kinds={"mlflow"},
    owners=OWNERS,
    automation_condition=promotion_condition(),
    description="The purchase model version serving uses: MLflow alias `production` moved to the newest version "
    "that passed the evaluation gate (blocking, so a failing gate means no promotion).",
)
@measured
def production_purchase_model(
    context: dg.AssetExecutionContext, model_registry: ModelRegistryResource
) -> dg.MaterializeResult:
    meta = latest_metadata(context.instance, PURCHASE_MODEL)
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
    key=DIGIT_CLASSIFIER,
    deps=[IMAGE_TRAINING_MANIFEST],
    group_name=GROUP,
    kinds={"mlflow"},
    owners=OWNERS,
    output_required=False,
    description="Digit CNN trained on the raw images of gold/image_training_manifest (hash splits, early stopping); "
    "logged to MLflow with the manifest's Delta version and registered as `digit_classifier`. With fewer manifest "
    "images than `min_training_rows` (run config, 100 by default) it trains nothing; an observation on this asset "
    "says why.",
)
@measured
def digit_classifier(
    context: dg.AssetExecutionContext,
    config: DigitModelConfig,
    lakehouse: LakehouseResource,
    torch_device: TorchDeviceResource,
    model_registry: ModelRegistryResource,
) -> Iterator[dg.MaterializeResult | dg.AssetObservation]:
    from hybrid_pipeline.defs.media.assets import media_root
    from hybrid_pipeline.ml.digit_model import train_digit_classifier
    from hybrid_pipeline.ml.plots import loss_curve_markdown, metrics_markdown

    lh = lakehouse.lakehouse()
    table = table_of(IMAGE_TRAINING_MANIFEST)
    version = lh.version(table)
    manifest = pl.DataFrame() if version is None else lh.read(table, version=version)
    reason = too_few_rows(manifest.height, config.min_training_rows, "manifest images")
    if reason is not None:
        where = "the media pipeline has not run yet" if version is None else f"{table}@v{version}"
        description = f"not trained: {reason} ({where}); no version registered"
        context.log.warning(f"digit_classifier {description}")
        yield skipped(DIGIT_CLASSIFIER, reason, description, rows=manifest.height,
                      min_training_rows=config.min_training_rows)
        return
    settings = torch_device.settings()
    cfg = config.train_config(device=settings.device, num_threads=torch_device.num_threads)
    from hybrid_pipeline.media.store import local_media_root

    with local_media_root(media_root(lakehouse), manifest["bronze_path"].to_list(), lh.storage_options) as images:
        result = train_digit_classifier(manifest, images, cfg, device=settings)
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
    yield dg.MaterializeResult(
        metadata={
            "test_accuracy": float_meta(m.get("test_accuracy")),
            "valid_accuracy": float_meta(m.get("valid_accuracy")),
            "test_calibration_error": float_meta(m.get("test_ece")),
            "dagster/row_count": manifest.height,
            "rows": dg.MetadataValue.json(result.extra.get("split_rows", {})),
            "n_params": result.n_params,
            "train_seconds": round(result.train_seconds, 3),
            "epochs_run": result.epochs_run,
            "device": result.device,
            "seed": config.seed,
            "hyperparameters": dg.MetadataValue.json(json_safe(cfg.to_params())),
            "manifest_version": int(version),
            "mlflow_run_id": run_id,
            "model_name": DIGIT_MODEL_NAME,
            "model_version": model_version,
            "loss_curve_plot": dg.MetadataValue.md(loss_curve_markdown(result.loss_curve, best_epoch=result.best_epoch)),
            "metrics": dg.MetadataValue.md(metrics_markdown({k: v for k, v in m.items() if math.isfinite(v)})),
        },
    )


def build_predictions(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    """``gold/predictions``, daily: the partitions follow ``HYBRID_START_DATE``, so it is built at load time."""

    @torch_asset(
        key=PREDICTIONS,
        deps=[PRODUCTION_PURCHASE_MODEL, USER_FEATURES],
        partitions_def=partitions,
        group_name=GROUP,
        kinds={"delta"},
        owners=OWNERS,
        tags={"layer": "gold"},
        output_required=False,
        description="Daily batch scores: P(purchase in the next 7 days) from the production purchase model for every "
        "user with a feature row as of the day (latest row inside the 30-day TTL); replaces the day's rows. Scores "
        "nothing while no purchase model was trained and promoted; an observation on the partition says so.",
    )
    @measured
    def predictions(
        context: dg.AssetExecutionContext,
        lakehouse: LakehouseResource,
        model_registry: ModelRegistryResource,
        torch_device: TorchDeviceResource,
    ) -> Iterator[dg.MaterializeResult | dg.AssetObservation]:
        from hybrid_pipeline.features.catalog import USER_FEATURE_TTL
        from hybrid_pipeline.ml.training import torch_threads

        lh = lakehouse.lakehouse()
        day = date.fromisoformat(context.partition_key)
        # the store check first: with no registry yet, mlflow is not even imported
        loaded = model_registry.registry().load_production(PURCHASE_MODEL_NAME) if model_registry.store_exists() else None
        if loaded is None:
            reason = "no production purchase model yet"
            context.log.warning(f"gold/predictions {day}: {reason} (models/purchase_model trains once "
                                "features/training_set has enough labelled rows); nothing scored")
            yield skipped(PREDICTIONS, reason, f"not scored: {reason}", partition=context.partition_key)
            return
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
            scores = score(model, encoding_of(loaded.config), latest, device=settings.torch_device)
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
        version = lh.replace_where(table, out, f"prediction_date = '{day.isoformat()}'", partition_by=list(GOLD_PREDICTIONS.partition_by))
        yield dg.MaterializeResult(metadata=table_metadata(
            lh.uri(table), PREDICTIONS_SCHEMA, out.height, version,
            model_version=int(loaded.version),
            mlflow_run_id=str(loaded.run_id),
            mean_score=round(float(scores.mean()), 6) if scores.size else 0.0,
            device=settings.description(),
        ))

    return predictions


@dg.definitions
def defs() -> dg.Definitions:
    """The model assets; ``gold/predictions`` takes the daily partitions of the load's settings."""
    predictions = build_predictions(daily_partitions(current_settings()))
    return dg.Definitions(assets=[purchase_model, production_purchase_model, predictions, digit_classifier])
