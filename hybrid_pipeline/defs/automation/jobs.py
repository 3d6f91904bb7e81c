"""The jobs that cross domains: the daily load, the feature store build and the online push."""

import dagster as dg

from hybrid_pipeline.dagster_support.keys import ONLINE_USER_FEATURES
from hybrid_pipeline.defs.media import assets as media
from hybrid_pipeline.defs.models.names import DRIFT_CHECK_KEY

PIPELINE_JOB = "daily_pipeline"
FEATURES_JOB = "feature_store_pipeline"
ONLINE_JOB = "online_features"

daily_pipeline = dg.define_asset_job(
    PIPELINE_JOB,
    selection=dg.AssetSelection.groups("bronze", "silver", "gold_analytics", "gold_features")
    - dg.AssetSelection.assets(*media.MEDIA_ASSETS)
    # Drift is judged against the production model, apart from loading a day: the models
    # automation sensor runs the check by itself after the run that updated the partition
    # (its own AutomationCondition), so a drifting day never fails or slows the daily load.
    - dg.AssetSelection.checks(DRIFT_CHECK_KEY),
    description="Landing day -> bronze -> silver -> gold analytics and gold features, with all checks.",
)

feature_store_pipeline = dg.define_asset_job(
    FEATURES_JOB,
    selection=dg.AssetSelection.groups("features") - dg.AssetSelection.assets(ONLINE_USER_FEATURES),
    description="Feast apply, feature views and the point-in-time training set (after the daily runs).",
)

online_features = dg.define_asset_job(
    ONLINE_JOB,
    selection=dg.AssetSelection.assets(ONLINE_USER_FEATURES),
    description="A landing day's freshest features into the online store, with the skew check.",
)
