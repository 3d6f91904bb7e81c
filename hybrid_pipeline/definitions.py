"""The one Definitions of the code location; cross-cutting policy is applied here, once."""


from datetime import timedelta

import dagster as dg

from hybrid_pipeline.defs.automation import alerts_resource, build_automation
from hybrid_pipeline.defs.bronze import build_bronze
from hybrid_pipeline.defs.gold_analytics import build_gold_analytics
from hybrid_pipeline.defs.feature_store import FeatureStoreResource, build_feature_store
from hybrid_pipeline.defs.gold_features import build_gold_features
from hybrid_pipeline.defs.keys import ONLINE_USER_FEATURES
from hybrid_pipeline.defs.maintenance import build_maintenance
from hybrid_pipeline.defs.media import MEDIA_ASSETS, build_media
from hybrid_pipeline.defs.monitoring import build_monitoring
from hybrid_pipeline.defs.models import DRIFT_CHECK_KEY, build_models, model_resources
from hybrid_pipeline.defs.online import build_online
from hybrid_pipeline.defs.resources import DataPolicyResource, LakehouseResource, LandingZoneResource
from hybrid_pipeline.defs.silver import build_silver
from hybrid_pipeline.defs.streaming import build_streaming
from hybrid_pipeline.settings import Settings

# Freshness per layer: a daily pipeline that may run a couple of hours late.
FRESHNESS_BY_LAYER = {
    "bronze": dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=26), warn_window=timedelta(hours=25)),
    "silver": dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=26), warn_window=timedelta(hours=25)),
    "gold": dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=27), warn_window=timedelta(hours=26)),
    "features": dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=28), warn_window=timedelta(hours=27)),
    # Streaming features are pushed by every micro-batch: stale after minutes, not hours.
    "streaming": dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=15), warn_window=timedelta(minutes=5)),
    # Models retrain weekly at least (or on drift): stale after 8 days.
    "models": dg.FreshnessPolicy.time_window(fail_window=timedelta(days=8), warn_window=timedelta(days=7)),
}

PIPELINE_JOB = "daily_pipeline"
MEDIA_JOB = "media_pipeline"
FEATURES_JOB = "feature_store_pipeline"
ONLINE_JOB = "online_features"


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    # end_offset=1 includes today, so a file landed today can be processed today.
    return dg.DailyPartitionsDefinition(start_date=settings.start_date.isoformat(), end_offset=1, timezone="UTC")


def resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    from hybrid_pipeline.defs.engine import engine_resource  # HYBRID_ENGINE + HYBRID_SPARK_* (read now)

    return {
        "engine": engine_resource(settings.engine),
        "lakehouse": LakehouseResource(root=settings.lakehouse_root),
        "landing": LandingZoneResource(path=str(settings.landing_dir)),
        "policy": DataPolicyResource(pii_salt=settings.pii_salt),
        "feature_store": FeatureStoreResource(repo_dir=str(settings.feature_repo_dir), online_store=settings.online_store.url),
        "alerts": alerts_resource(settings.alert_file or settings.dagster_home / "alerts.jsonl", settings.alert_webhook_url),
        **model_resources(settings),
    }


def _with_layer_policy(spec: dg.AssetSpec) -> dg.AssetSpec:
    layer = spec.key.path[0]
    policy = FRESHNESS_BY_LAYER.get(layer)
    return spec.replace_attributes(freshness_policy=policy) if policy else spec


def build_definitions(settings: Settings, resource_overrides: dict | None = None) -> dg.Definitions:
    """All definitions for ``settings``; ``resource_overrides`` replaces resources by key."""
    partitions = daily_partitions(settings)
    pipeline_job = dg.define_asset_job(
        PIPELINE_JOB,
        selection=dg.AssetSelection.groups("bronze", "silver", "gold_analytics", "gold_features")
        - dg.AssetSelection.assets(*MEDIA_ASSETS)
        # Drift is judged against the production model, apart from loading a day: the models
        # automation sensor runs the check by itself after the run that updated the partition
        # (its own AutomationCondition), so a drifting day never fails or slows the daily load.
        - dg.AssetSelection.checks(DRIFT_CHECK_KEY),
        description="Landing day -> bronze -> silver -> gold analytics and gold features, with all checks.",
    )
    merged = dg.Definitions.merge(
        build_bronze(partitions),
        # The engine-backed assets declare the engine's pool and kind (defs/engine.py).
        build_silver(partitions, settings.engine),
        build_gold_analytics(partitions, settings.engine),
        build_gold_features(partitions, settings.engine),
        build_maintenance(),
        build_media(),
        build_feature_store(),
        build_online(partitions),
        build_streaming(settings),
        build_models(partitions),
        build_automation(pipeline_job),
        build_monitoring(),
        dg.Definitions(
            jobs=[
                pipeline_job,
                dg.define_asset_job(
                    FEATURES_JOB,
                    selection=dg.AssetSelection.groups("features") - dg.AssetSelection.assets(ONLINE_USER_FEATURES),
                    description="Feast apply, feature views and the point-in-time training set (after the daily runs).",
                ),
                dg.define_asset_job(
                    ONLINE_JOB,
                    selection=dg.AssetSelection.assets(ONLINE_USER_FEATURES),
                    description="A landing day's freshest features into the online store, with the skew check.",
                ),
            ],
            resources={**resources(settings), **(resource_overrides or {})}),
    )
    return merged.map_asset_specs(func=_with_layer_policy)


@dg.definitions
def defs() -> dg.Definitions:
    """The code location's entry point (``[tool.dg]`` and ``[tool.dagster]`` in pyproject.toml,
    workspace.yaml): ``dg dev``, ``dg check defs``, ``dg launch`` and ``dagster dev`` call it when
    they load the location, so the environment is read then, never at import."""
    return build_definitions(Settings.from_env())
