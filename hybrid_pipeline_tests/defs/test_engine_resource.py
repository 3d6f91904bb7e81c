"""The engine resource: HYBRID_ENGINE picks the engine, the default never starts Spark, and the
engine-backed assets are declared in the spark pool with kind spark only when the engine is Spark."""

from __future__ import annotations

import dagster as dg
import pytest

from hybrid_pipeline.dagster_support.engine import (
    SPARK_POOL,
    EngineResource,
    engine_kinds,
    engine_pool,
    engine_resource,
    on_engine,
)
from hybrid_pipeline.definitions import build_definitions
from hybrid_pipeline.defs.resources import project_resources
from hybrid_pipeline.engines.compute import ComputeEngine, PolarsEngine, make_engine
from hybrid_pipeline.engines.spark_session import SparkSettings
from hybrid_pipeline.settings import Settings

ENGINE_ASSETS = {
    ("silver", "events"),
    ("silver", "events_quarantine"),
    ("silver", "events_duplicates"),
    ("gold", "daily_metrics"),
    ("gold", "fact_events"),
    ("gold", "user_landing_summary"),
    ("gold", "dim_user"),
    ("gold", "user_features"),
}
# The silver tables are one op in the silver_writer pool on either engine.
SILVER_POOL_BY_KEY = {key: "silver_writer" for key in ENGINE_ASSETS if key[0] == "silver"}


def test_default_engine_is_polars_and_starts_no_spark() -> None:
    res = project_resources(Settings.from_env({}))["engine"]
    assert isinstance(res, EngineResource) and res.engine == "polars"
    engine = res.compute()
    assert isinstance(engine, PolarsEngine) and isinstance(engine, ComputeEngine)
    assert res.pyspark._spark_session is None  # the lazy session was never touched


def test_hybrid_engine_spark_configures_the_session_from_spark_settings() -> None:
    res = project_resources(Settings.from_env({"HYBRID_ENGINE": "spark"}))["engine"]
    assert res.engine == "spark"
    conf = res.pyspark.spark_config
    assert conf["spark.master"] == "local[*]" and conf["spark.sql.session.timeZone"] == "UTC"
    cluster = engine_resource("spark", SparkSettings(master="spark://h:7077", executor_instances=2, executor_cores=4))
    assert cluster.pyspark.spark_config["spark.master"] == "spark://h:7077"
    assert cluster.pyspark.spark_config["spark.sql.shuffle.partitions"] == "16"


def test_unknown_engines_are_refused() -> None:
    with pytest.raises(ValueError, match="HYBRID_ENGINE"):
        Settings.from_env({"HYBRID_ENGINE": "duckdb"})
    with pytest.raises(ValueError, match="polars' or 'spark"):
        make_engine("duckdb")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="SparkSession"):
        make_engine("spark", lambda: None)  # type: ignore[arg-type, return-value]


def _engine_assets(defs: dg.Definitions) -> dict[tuple[str, ...], dg.AssetsDefinition]:
    """Engine-backed asset key -> the assets definition holding it (one op may hold several)."""
    return {
        tuple(spec.key.path): a
        for a in defs.assets or []
        if isinstance(a, dg.AssetsDefinition)
        for spec in a.specs
        if on_engine(spec)
    }


def _kinds(defs: dg.Definitions, key: tuple[str, ...]) -> set[str]:
    return set(defs.get_assets_def(dg.AssetKey(list(key))).specs_by_key[dg.AssetKey(list(key))].kinds)


def _definitions(tmp_path, engine: str) -> dg.Definitions:
    return build_definitions(
        Settings.from_env(
            {"HYBRID_LAKEHOUSE_ROOT": str(tmp_path / "lake"), "DAGSTER_HOME": str(tmp_path), "HYBRID_ENGINE": engine}
        )
    )


def test_on_polars_engine_backed_assets_have_kind_polars_and_no_pool_of_the_engine(tmp_path) -> None:
    defs = _definitions(tmp_path, "polars")
    on_polars = _engine_assets(defs)
    assert set(on_polars) == ENGINE_ASSETS
    for key, a in on_polars.items():
        assert a.op.pool == SILVER_POOL_BY_KEY.get(key), key
        assert "polars" in _kinds(defs, key) and "spark" not in _kinds(defs, key), key
        assert a.required_resource_keys >= {"engine"}


def test_on_spark_engine_backed_assets_join_the_spark_pool_with_kind_spark(tmp_path) -> None:
    defs = _definitions(tmp_path, "spark")
    on_spark = _engine_assets(defs)
    assert set(on_spark) == ENGINE_ASSETS
    for key, a in on_spark.items():
        # silver keeps its own pool (an op has one), which runs one silver step at a time already
        assert a.op.pool == SILVER_POOL_BY_KEY.get(key, SPARK_POOL), key
        assert "spark" in _kinds(defs, key) and "polars" not in _kinds(defs, key), key
    assert _kinds(defs, ("gold", "daily_metrics")) == {"delta", "spark"}
    assert _kinds(defs, ("silver", "events")) == {"delta", "spark", "pandera"}
    # dim_date shares the gold op (so the spark pool) but is computed on the driver: it keeps its kinds
    assert _kinds(defs, ("gold", "dim_date")) == {"delta", "polars"}
    defs.get_repository_def()  # still one valid code location


def test_engine_pool_and_kinds_refuse_an_unknown_engine() -> None:
    assert engine_pool("spark") == SPARK_POOL and engine_pool("polars") is None
    assert engine_kinds("spark", "delta") == {"delta", "spark"}
    with pytest.raises(ValueError, match="polars' or 'spark"):
        engine_pool("duckdb")
    with pytest.raises(ValueError, match="polars' or 'spark"):
        engine_kinds("duckdb", "delta")
