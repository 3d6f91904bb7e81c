"""Jobs of the models: training (with the gate and promotion), the digit CNN and daily batch scores."""

import dagster as dg

from hybrid_pipeline.dagster_support.keys import PREDICTIONS
from hybrid_pipeline.defs.models.names import (
    DIGIT_CLASSIFIER,
    DIGIT_TRAINING_JOB,
    PREDICTIONS_JOB,
    PRODUCTION_PURCHASE_MODEL,
    PURCHASE_MODEL,
    PURCHASE_TRAINING_JOB,
)

purchase_model_training = dg.define_asset_job(
    PURCHASE_TRAINING_JOB,
    selection=dg.AssetSelection.assets(PURCHASE_MODEL, PRODUCTION_PURCHASE_MODEL),
    description="Train the purchase model, run its checks (the blocking evaluation gate among them) and "
    "promote the new version when the gate passed.",
)

digit_classifier_training = dg.define_asset_job(
    DIGIT_TRAINING_JOB,
    selection=dg.AssetSelection.assets(DIGIT_CLASSIFIER),
    description="Train and register the digit CNN on the image manifest.",
)

# Partitioned like gold/predictions: the job takes its partitions from the asset it selects.
batch_predictions = dg.define_asset_job(
    PREDICTIONS_JOB,
    selection=dg.AssetSelection.assets(PREDICTIONS),
    description="A day's batch scores from the production purchase model.",
)
