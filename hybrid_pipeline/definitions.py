"""The one Definitions of the code location: the ``defs`` folder, plus the policy applied across it.

Every asset, check, job, schedule, sensor and resource comes from ``hybrid_pipeline/defs``, loaded by
``dg.load_from_defs_folder``; only what cuts across domains is applied here, once: the freshness
policy of each layer, read off the asset keys, and each table's catalog entry as definition metadata.
"""

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg

from hybrid_pipeline.dagster_support.keys import key_of
from hybrid_pipeline.dagster_support.loading import daily_partitions, loading
from hybrid_pipeline.dagster_support.metadata import catalog_metadata, column_schema
from hybrid_pipeline.defs.automation.jobs import FEATURES_JOB, ONLINE_JOB, PIPELINE_JOB
from hybrid_pipeline.defs.media.assets import MEDIA_JOB
from hybrid_pipeline.lakehouse import catalog
from hybrid_pipeline.settings import Settings

# Job names and the partitions, for the CLI and tests that launch from the built Definitions.
__all__ = ["FEATURES_JOB", "MEDIA_JOB", "ONLINE_JOB", "PIPELINE_JOB", "build_definitions", "daily_partitions", "defs"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The `dg` project root (pyproject.toml with ``[tool.dg]``), where the loader finds the ``defs`` module."""

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


def _with_layer_policy(spec: dg.AssetSpec) -> dg.AssetSpec:
    layer = spec.key.path[0]
    policy = FRESHNESS_BY_LAYER.get(layer)
    return spec.replace_attributes(freshness_policy=policy) if policy else spec


CATALOG_BY_KEY = {key_of(table): table for table in catalog.TABLES}


def _with_catalog(spec: dg.AssetSpec) -> dg.AssetSpec:
    """A table's asset carries what the catalog declares (columns, name, owner, PII class,
    retention) as definition metadata, so the UI shows it before the first materialization."""
    table = CATALOG_BY_KEY.get(spec.key)
    if table is None:
        return spec
    return spec.merge_attributes(
        metadata={"dagster/column_schema": column_schema(table.schema), **catalog_metadata(table)}
    )


def build_definitions(settings: Settings, resource_overrides: Mapping[str, Any] | None = None) -> dg.Definitions:
    """The code location under ``settings`` instead of the environment; ``resource_overrides``
    replaces resources by key (tests, local tools). The ``defs`` folder's ``@dg.definitions``
    functions read these settings while the folder loads."""
    with loading(settings, resource_overrides):
        loaded = dg.load_from_defs_folder(project_root=PROJECT_ROOT)
    return loaded.map_asset_specs(func=lambda spec: _with_catalog(_with_layer_policy(spec)))


@dg.definitions
def defs() -> dg.Definitions:
    """The code location's entry point (``[tool.dg]`` and ``[tool.dagster]`` in pyproject.toml,
    workspace.yaml): ``dg dev``, ``dg check defs``, ``dg launch`` and ``dagster dev`` call it when
    they load the location, so the environment is read then, never at import."""
    return build_definitions(Settings.from_env())
