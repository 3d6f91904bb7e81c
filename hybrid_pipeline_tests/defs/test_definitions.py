"""The asset graph is deliberate: keys, groups, kinds, deps, partitions and policy per layer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from hybrid_pipeline.dagster_support.compute import torch_asset
from hybrid_pipeline.dagster_support.keys import SILVER_EVENTS
from hybrid_pipeline.definitions import build_definitions
from hybrid_pipeline.settings import Settings

PROJECT = Path(__file__).resolve().parents[2]

EXPECTED_GRAPH = {
    "bronze/events": ("bronze", set()),
    "bronze/landed_files": ("bronze", set()),
    "silver/events": ("silver", {"bronze/events"}),
    "silver/events_quarantine": ("silver", {"bronze/events"}),
    "silver/events_duplicates": ("silver", {"bronze/events"}),
    "gold/daily_metrics": ("gold_analytics", {"silver/events"}),
    "gold/fact_events": ("gold_analytics", {"silver/events"}),
    "gold/user_landing_summary": ("gold_analytics", {"silver/events"}),
    "gold/dim_user": ("gold_analytics", {"gold/user_landing_summary"}),
    "gold/dim_date": ("gold_analytics", {"silver/events"}),
    "bronze/media_files": ("bronze", set()),
    "bronze/media_landed": ("bronze", set()),
    "bronze/media_labels": ("bronze", set()),
    "silver/media_metadata": ("silver", {"bronze/media_files", "bronze/media_labels"}),
    "silver/document_text": ("silver", {"bronze/media_files"}),
    "silver/media_quarantine": ("silver", {"bronze/media_files", "bronze/media_landed"}),
    "gold/image_training_manifest": ("gold_features", {"silver/media_metadata", "bronze/media_labels"}),
    "gold/media_collection_stats": ("gold_analytics", {"bronze/media_files"}),
    "gold/user_features": ("gold_features", {"silver/events"}),
    "gold/user_labels": ("gold_features", {"gold/user_features", "silver/events"}),
    "features/feast_registry": ("features", {"gold/user_features", "gold/user_landing_summary"}),
    "features/user_features": ("features", {"gold/user_features"}),
    "features/user_activity": ("features", {"gold/user_landing_summary"}),
    "features/user_request_features": ("features", {"features/user_features", "features/user_activity"}),
    "features/training_set": ("features", {"features/user_features", "features/feast_registry", "gold/user_labels"}),
    "features/online_user_features": ("features", {"gold/user_features", "features/user_features",
                                                   "gold/user_landing_summary", "features/user_activity"}),
    "streaming/user_activity_1h": ("features", {"bronze/events"}),
    "monitoring/pipeline_runs": ("monitoring", set()),
    "models/purchase_model": ("models", {"features/training_set", "gold/user_features"}),
    "models/production_purchase_model": ("models", {"models/purchase_model"}),
    "models/digit_classifier": ("models", {"gold/image_training_manifest"}),
    "gold/predictions": ("models", {"models/production_purchase_model", "gold/user_features"}),
    "silver/document_chunks": ("embeddings", {"silver/document_text"}),
    "gold/document_embeddings": ("embeddings", {"silver/document_chunks", "bronze/media_files"}),
    "gold/image_embeddings": ("embeddings", {"silver/media_metadata", "bronze/media_files"}),
    "gold/media_near_duplicates": ("embeddings", {"gold/document_embeddings", "gold/image_embeddings",
                                                  "gold/image_training_manifest"}),
    "features/document_vectors": ("features", {"gold/document_embeddings"}),
}
# Media land without a date folder; every other asset is partitioned by landing day.
UNPARTITIONED = {k for k in EXPECTED_GRAPH if "media" in k or k.startswith(("features/", "models/", "streaming/", "monitoring/"))} - {
    "features/online_user_features"
} | {
    "silver/document_text",
    "gold/image_training_manifest",
} | {k for k, (group, _) in EXPECTED_GRAPH.items() if group == "embeddings"}  # media, like their inputs


@pytest.fixture(scope="module")
def repo():
    settings = Settings.from_env({"HYBRID_LAKEHOUSE_ROOT": "/tmp/unused-lakehouse", "HYBRID_START_DATE": "2024-01-01"})
    return build_definitions(settings).get_repository_def()


def _specs(repo) -> dict[str, dg.AssetSpec]:
    return {
        k.to_user_string(): a.specs_by_key[k]
        for k, a in repo.assets_defs_by_key.items()
    }


def test_graph_has_exactly_the_expected_assets_groups_and_dependencies(repo):
    specs = _specs(repo)
    assert set(specs) == set(EXPECTED_GRAPH)
    for key, (group, deps) in EXPECTED_GRAPH.items():
        spec = specs[key]
        assert spec.group_name == group, key
        assert {d.asset_key.to_user_string() for d in spec.deps} == deps, key


def test_every_asset_has_kinds_owners_description_and_daily_partitions(repo):
    for key, spec in _specs(repo).items():
        assert spec.kinds & {"delta", "feast", "mlflow", "dagster"}, key
        assert spec.owners, key
        assert spec.description and len(spec.description) > 20, key
        if key in UNPARTITIONED:
            assert spec.partitions_def is None, key
            continue
        assert isinstance(spec.partitions_def, dg.DailyPartitionsDefinition), key
        assert spec.partitions_def.start.strftime("%Y-%m-%d") == "2024-01-01"


def test_freshness_policy_is_applied_per_layer_from_one_rule(repo):
    hours = {
        key: spec.freshness_policy.fail_window.to_timedelta().total_seconds() / 3600
        for key, spec in _specs(repo).items()
        if not key.startswith("monitoring/")  # observations of the instance, not data that goes stale
    }
    assert hours["streaming/user_activity_1h"] == 0.25
    assert {k: v for k, v in hours.items() if k.startswith(("bronze", "silver"))} == {
        k: 26.0 for k in EXPECTED_GRAPH if k.startswith(("bronze", "silver"))
    }
    assert {k: v for k, v in hours.items() if k.startswith("gold")} == {k: 27.0 for k in EXPECTED_GRAPH if k.startswith("gold")}
    assert {k: v for k, v in hours.items() if k.startswith("models")} == {k: 192.0 for k in EXPECTED_GRAPH if k.startswith("models")}
    assert {k: v for k, v in hours.items() if k.startswith("features")} == {
        k: 28.0 for k in EXPECTED_GRAPH if k.startswith("features")
    }


def test_every_table_asset_carries_its_catalog_entry_before_any_run(repo):
    from hybrid_pipeline.lakehouse import catalog

    specs = _specs(repo)
    for table in catalog.TABLES:
        meta = specs[table.name].metadata
        assert meta["dagster/table_name"] == table.name
        assert meta["catalog/owner"] == table.owner and meta["catalog/pii"] == table.pii
        assert meta["catalog/retention_days"] == table.retention.days
        columns = meta["dagster/column_schema"].columns
        assert [c.name for c in columns] == list(table.schema.names()), table.name
    # Assets that write no table carry no catalog entry.
    assert "dagster/table_name" not in specs["models/purchase_model"].metadata


def test_silver_contract_checks_are_blocking(repo):
    specs = {spec.key.name: spec for d in repo.asset_checks_defs_by_key.values() for spec in d.check_specs}
    for name in ("schema_matches_contract", "keys_not_null", "event_id_unique", "event_type_valid", "row_conservation"):
        assert specs[name].blocking and specs[name].asset_key == SILVER_EVENTS, name


def test_start_date_setting_moves_the_first_partition():
    settings = Settings.from_env({"HYBRID_START_DATE": "2023-06-15", "HYBRID_LAKEHOUSE_ROOT": "/tmp/unused-lakehouse"})
    repo = build_definitions(settings).get_repository_def()
    spec = repo.assets_defs_by_key[dg.AssetKey(["silver", "events"])].specs_by_key[dg.AssetKey(["silver", "events"])]
    assert spec.partitions_def.get_first_partition_key() == "2023-06-15"


def test_importing_the_code_location_reads_no_environment():
    # A bad setting must not break an import; it fails only when definitions are built.
    code = (
        "import os; os.environ['HYBRID_ENGINE']='nonsense';"
        "import hybrid_pipeline.definitions as d;"
        "import sys\n"
        "try:\n    d.defs()\nexcept Exception as e:\n    print('raised', type(e).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "raised" in out.stdout


def test_project_instance_config_queues_runs_and_limits_pools(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    (home / "dagster.yaml").write_text((PROJECT / "dagster.yaml").read_text())
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        settings = instance.get_concurrency_config()
        assert settings.pool_config.default_pool_limit == 1
        assert settings.run_queue_config.max_concurrent_runs == 4
    finally:
        instance.dispose()


@pytest.fixture(scope="module", params=["polars", "spark"])
def repo_on_engine(request):
    settings = Settings.from_env({"HYBRID_LAKEHOUSE_ROOT": "/tmp/unused-lakehouse", "HYBRID_ENGINE": request.param})
    return build_definitions(settings).get_repository_def()


def test_on_both_engines_every_pytorch_asset_and_only_those_get_the_gpu_pool_tag_and_k8s_request(repo_on_engine):
    torch_assets = set()
    for key, assets_def in repo_on_engine.assets_defs_by_key.items():
        spec = assets_def.specs_by_key[key]
        if not assets_def.is_executable:  # written outside Dagster (the stream consumer): no op to place
            assert "pytorch" not in spec.kinds and "compute" not in spec.tags, key
            continue
        op = assets_def.op
        if "pytorch" in spec.kinds:
            torch_assets.add(key.to_user_string())
            assert op.pool == "gpu", key
            assert spec.tags.get("compute") == "gpu" and op.tags.get("compute") == "gpu", key
            k8s = op.tags["dagster-k8s/config"]
            k8s = json.loads(k8s) if isinstance(k8s, str) else k8s  # op tags are stored as JSON text
            limits = k8s["container_config"]["resources"]["limits"]
            assert limits["nvidia.com/gpu"] == "1", key
        else:
            assert op.pool != "gpu" and "compute" not in spec.tags and "dagster-k8s/config" not in op.tags, key
    assert torch_assets == {"models/purchase_model", "models/digit_classifier", "gold/predictions",
                            "gold/document_embeddings", "gold/image_embeddings"}


def test_a_torch_asset_cannot_be_placed_outside_the_gpu_pool():
    with pytest.raises(TypeError, match="gpu pool"):
        torch_asset(key="models/x", pool="other")
