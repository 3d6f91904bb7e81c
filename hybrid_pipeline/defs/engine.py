"""The engine resource: which compute engine the silver and gold assets run on (``HYBRID_ENGINE``).

Assets take ``engine: EngineResource`` and call ``engine.compute().daily_metrics(...)`` etc.;
nothing in an asset asks which engine it is. ``polars`` (the default) runs in process;
``spark`` gets its SparkSession from dagster-pyspark's :class:`LazyPySparkResource`, configured
from :class:`~hybrid_pipeline.engines.spark_session.SparkSettings` (``HYBRID_SPARK_MASTER``:
``local[*]`` by default or a cluster URL, ``HYBRID_SPARK_SHUFFLE_PARTITIONS``,
``HYBRID_SPARK_DRIVER_MEMORY``, executors, Delta jars). The session is created on first use
only, so a polars deployment never starts a JVM; it lives as long as the step's process (the
in-process executor reuses it across steps; the multiprocess executor starts one JVM per step).

Pools: the Spark-backed assets carry the tag ``engine: configurable``; :func:`apply_engine_policy`
puts them into the ``spark`` pool (one Spark step at a time, dagster.yaml) and gives them the
``spark`` kind when the engine is Spark. An op has one pool: ``silver/events`` keeps its
``silver_writer`` pool (it serialises silver writers, which also keeps Spark silver steps one
at a time).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Literal

import dagster as dg
from dagster_pyspark import LazyPySparkResource
from pydantic import Field, PrivateAttr

from hybrid_pipeline.defs.compute import map_assets, with_op_placement
from hybrid_pipeline.engines.compute import ComputeEngine, make_engine
from hybrid_pipeline.engines.spark_session import SparkSettings

SPARK_POOL = "spark"
ENGINE_TAG = {"engine": "configurable"}


class EngineResource(dg.ConfigurableResource):
    """The compute engine of the silver and gold assets: ``polars`` or ``spark``."""

    engine: Literal["polars", "spark"] = "polars"
    pyspark: LazyPySparkResource = Field(
        default_factory=lambda: LazyPySparkResource(spark_config=SparkSettings().conf()),
        description="Spark session (created on first use, only by the spark engine).",
    )
    spark_log_level: str = "ERROR"
    _compute: Any = PrivateAttr(default=None)

    def compute(self) -> ComputeEngine:
        """The engine's operations (one object per resource instance)."""
        if self._compute is None:
            self._compute = make_engine(self.engine, self._spark_session)
        return self._compute

    def _spark_session(self) -> Any:
        # PySpark starts local Python workers with $PYSPARK_PYTHON (default "python3", which may
        # lack the project's packages): the driver's interpreter, as get_spark does.
        master = str(self.pyspark.spark_config.get("spark.master", "local[*]"))
        if master.startswith("local") and not os.environ.get("PYSPARK_PYTHON"):
            os.environ["PYSPARK_PYTHON"] = sys.executable
        session = self.pyspark.spark_session
        session.sparkContext.setLogLevel(self.spark_log_level)
        return session


def engine_resource(engine: str, spark: SparkSettings | None = None) -> EngineResource:
    """The resource for ``HYBRID_ENGINE`` with Spark settings (``SparkSettings.from_env()`` when None)."""
    spark = spark if spark is not None else SparkSettings.from_env()
    return EngineResource(engine=engine, pyspark=LazyPySparkResource(spark_config=spark.conf()))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# pool and kinds of the engine-backed assets
# ---------------------------------------------------------------------------------------------


def on_engine(spec: dg.AssetSpec) -> bool:
    return spec.tags.get("engine") == ENGINE_TAG["engine"]


def runs_on_engine(assets_def: dg.AssetsDefinition) -> bool:
    return any(on_engine(spec) for spec in assets_def.specs)


def with_spark_policy(assets_def: dg.AssetsDefinition) -> dg.AssetsDefinition:
    """The same asset with its op in the ``spark`` pool (unless it has a pool already) and kind ``spark``."""
    return with_op_placement(
        assets_def,
        pool=assets_def.node_def.pool or SPARK_POOL,
        spec=lambda s: s.replace_attributes(kinds=(set(s.kinds) - {"polars"}) | {"spark"}) if on_engine(s) else s,
    )


def apply_engine_policy(defs: dg.Definitions, engine: str) -> dg.Definitions:
    """For ``engine == "spark"``: every engine-backed asset in the ``spark`` pool, kind ``spark``."""
    if engine != "spark":
        return defs
    return map_assets(defs, runs_on_engine, with_spark_policy)
