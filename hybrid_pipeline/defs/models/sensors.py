"""The models' automation sensor: one RUNNING sensor evaluates the conditions of :mod:`.conditions`."""

import dagster as dg

from hybrid_pipeline.dagster_support.keys import TRAINING_SET
from hybrid_pipeline.defs.models.names import AUTOMATION_SENSOR, DRIFT_CHECK_KEY, PRODUCTION_PURCHASE_MODEL, PURCHASE_MODEL

models_automation_sensor = dg.AutomationConditionSensorDefinition(
    AUTOMATION_SENSOR,
    target=dg.AssetSelection.assets(TRAINING_SET, PURCHASE_MODEL, PRODUCTION_PURCHASE_MODEL)
    | dg.AssetSelection.checks(DRIFT_CHECK_KEY),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Rebuilds the training set after new labels, checks feature drift after each features "
    "update, retrains the purchase model on drift or weekly and promotes versions that pass the gate.",
)
