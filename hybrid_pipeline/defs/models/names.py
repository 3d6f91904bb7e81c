"""Names of the model assets, checks, jobs and sensor, shared by the modules of this package."""

from datetime import timedelta
from typing import Final

import dagster as dg

from hybrid_pipeline.dagster_support.keys import USER_FEATURES
from hybrid_pipeline.ml import predictor

PURCHASE_MODEL = dg.AssetKey(["models", "purchase_model"])
DIGIT_CLASSIFIER = dg.AssetKey(["models", "digit_classifier"])
PRODUCTION_PURCHASE_MODEL = dg.AssetKey(["models", "production_purchase_model"])

PURCHASE_MODEL_NAME: Final = predictor.PURCHASE_MODEL_NAME
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
SKIPPED: Final = "skipped"  # observation metadata: why a model asset materialized nothing (read by the CLI)
AUTOMATION_SENSOR: Final = "models_automation_sensor"
PURCHASE_TRAINING_JOB: Final = "purchase_model_training"
DIGIT_TRAINING_JOB: Final = "digit_classifier_training"
PREDICTIONS_JOB: Final = "batch_predictions"
OWNERS = ["team:ml-platform"]
GROUP = "models"
