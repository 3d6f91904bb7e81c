"""What earlier runs recorded, read back by the model assets and checks: materialization metadata,
the training snapshot a model trained on, and the inputs and config of an MLflow run."""

import json
import math
from collections.abc import Mapping
from typing import Any

import dagster as dg
import polars as pl

from hybrid_pipeline.dagster_support.keys import TRAINING_SET, table_of
from hybrid_pipeline.defs.models.names import SKIPPED
from hybrid_pipeline.ml import reproduce as recipe_mod
from hybrid_pipeline.ml.purchase_config import PurchaseTrainConfig


def latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, Any]:
    """Plain values of the asset's latest materialization metadata ({} when never materialized)."""
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return {}
    return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}


def skipped(key: dg.AssetKey, reason: str, description: str, partition: str | None = None,
            **metadata: Any) -> dg.AssetObservation:
    """What a model asset records when it decides not to materialize: an observation, not a
    materialization, so nothing downstream counts it as an update, while the asset's events in
    the UI (and the CLI's summary) say why."""
    return dg.AssetObservation(asset_key=key, partition=partition, description=description,
                               metadata={SKIPPED: reason, **metadata})


def json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def float_meta(value: float | None) -> float:
    return float(value) if value is not None and math.isfinite(value) else float("nan")


def training_snapshot(lh: Any, instance: dg.DagsterInstance) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The training set at the version its latest materialization recorded, and that record."""
    table = table_of(TRAINING_SET)
    meta = latest_metadata(instance, TRAINING_SET)
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
        "feature_view_versions": dict(meta.get("feature_view_versions") or {}),
        "retrieval": meta.get("retrieval"),  # as_known_at or point_in_time (None: recorded before either)
    }
    return rows, record


def run_inputs(registry: Any, run_id: str) -> dict[str, int]:
    tags = registry.get_run(run_id)["tags"]
    return {str(k): int(v) for k, v in json.loads(tags.get("input_versions") or "{}").items()}


def model_config(registry: Any, run_id: str) -> PurchaseTrainConfig:
    params = registry.get_run(run_id)["params"]
    return recipe_mod.config_from_run_params(params)
