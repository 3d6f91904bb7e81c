"""Every resource of the code location, configured once from the settings of the load.

Secrets (``HYBRID_PII_SALT``, ``HYBRID_ALERT_WEBHOOK``) are passed as ``dg.EnvVar`` when they come
from the environment, so their values are read by the run that uses them and never stored in the
resource configuration the UI and the run storage show. Unset, they fall back to the local
defaults of :mod:`hybrid_pipeline.settings`, which are not secrets.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from hybrid_pipeline.dagster_support.engine import engine_resource
from hybrid_pipeline.dagster_support.loading import current_settings, resource_overrides
from hybrid_pipeline.dagster_support.resources import (
    AlertsResource,
    DataPolicyResource,
    FeatureStoreResource,
    LakehouseResource,
    LandingZoneResource,
    ModelPolicyResource,
    ModelRegistryResource,
    TorchDeviceResource,
)
from hybrid_pipeline.settings import Settings

PII_SALT_VAR = "HYBRID_PII_SALT"
ALERT_WEBHOOK_VAR = "HYBRID_ALERT_WEBHOOK"


def secret(var: str, value: str | None) -> Any:
    """``dg.EnvVar(var)`` when the environment holds ``value`` under ``var``; else ``value`` itself
    (a local default, or settings given explicitly that the environment does not carry)."""
    return dg.EnvVar(var) if value is not None and os.environ.get(var) == value else value


def model_resources(settings: Settings, tracking_uri: str | None = None, device: str = "auto") -> dict[str, Any]:
    """What the model assets need besides ``lakehouse``: ``torch_device``, ``model_registry``, ``model_policy``."""
    return {
        "torch_device": TorchDeviceResource(device=device),
        "model_registry": ModelRegistryResource(tracking_uri=tracking_uri or settings.model_registry_uri),
        "model_policy": ModelPolicyResource(),
    }


def project_resources(settings: Settings) -> dict[str, Any]:
    """Every resource, by key, for ``settings`` (``HYBRID_ENGINE`` and ``HYBRID_SPARK_*`` are read now)."""
    alert_file = settings.alert_file or settings.dagster_home / "alerts.jsonl"
    return {
        "engine": engine_resource(settings.engine),
        "lakehouse": LakehouseResource(root=settings.lakehouse_root),
        "landing": LandingZoneResource(path=str(settings.landing_dir)),
        "policy": DataPolicyResource(pii_salt=secret(PII_SALT_VAR, settings.pii_salt)),
        "feature_store": FeatureStoreResource(repo_dir=str(settings.feature_repo_dir), online_store=settings.online_store.url,
                                              training_as_known_at=settings.training_as_known_at),
        "alerts": AlertsResource(file_path=str(alert_file), webhook_url=secret(ALERT_WEBHOOK_VAR, settings.alert_webhook_url)),
        **model_resources(settings),
    }


@dg.definitions
def resources() -> dg.Definitions:
    """The resources of the load in progress, with any overrides given to ``build_definitions``."""
    return dg.Definitions(resources={**project_resources(current_settings()), **resource_overrides()})
