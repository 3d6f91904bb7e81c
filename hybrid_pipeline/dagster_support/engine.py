"""The engine resource: which compute engine the silver and gold assets run on (``HYBRID_ENGINE``).

Assets take ``engine: EngineResource`` and call ``engine.compute().daily_metrics(...)`` etc.;
nothing in an asset asks which engine it is. ``polars`` (the default) runs in process;
``spark`` gets its SparkSession from dagster-pyspark's :class:`LazyPySparkResource` (itself built
on first use by :class:`SparkSessionResource`, so loading the definitions imports no pyspark), configured
from :class:`~hybrid_pipeline.engines.spark_session.SparkSettings` (``HYBRID_SPARK_MASTER``:
``local[*]`` by default or a cluster URL, ``HYBRID_SPARK_SHUFFLE_PARTITIONS``,
``HYBRID_SPARK_DRIVER_MEMORY``, executors, Delta jars). The session is created on first use
only, so a polars deployment never starts a JVM; it lives as long as the step's process (the
in-process executor reuses it across steps; the multiprocess executor starts one JVM per step).

Pools and kinds of the engine-backed assets are declared where the assets are: the factories
(``build_silver``, ``build_gold_analytics``, ``build_gold_features``) take the engine name, which
their domain's ``@dg.definitions`` function reads from the settings when the code location loads, and pass
:func:`engine_pool` and :func:`engine_kinds` to ``@dg.asset``/``@dg.multi_asset``. Dagster fixes
an op's pool when the asset is defined (there is no documented way to move it afterwards), and
the kinds say what computes the table, so both follow the engine at that point:

* ``polars``: kind ``polars``, no pool of the engine's own (the steps run side by side, as any
  in-process step).
* ``spark``: kind ``spark`` instead of ``polars``, pool ``spark`` (limit 1 through
  ``default_limit`` in dagster.yaml: one Spark step at a time shares the cluster).

The other documented option, one pool for every engine-backed step at all times with its limit
set per deployment in dagster.yaml, was not taken: the kinds must follow the engine anyway, so
the engine is known where the assets are declared, and a limit kept in the instance's
dagster.yaml would be a second setting that has to agree with ``HYBRID_ENGINE``. An op has one pool: ``silver/events`` keeps its
``silver_writer`` pool on both engines (it serialises silver writers, which also keeps Spark
silver steps one at a time). Engine-backed assets carry the tag ``engine: configurable``.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Literal, get_args

import dagster as dg
from pydantic import Field, PrivateAttr

from hybrid_pipeline.engines.compute import ComputeEngine, make_engine
from hybrid_pipeline.engines.spark_session import SparkSettings

EngineName = Literal["polars", "spark"]
ENGINES: tuple[EngineName, ...] = get_args(EngineName)
SPARK_POOL = "spark"
ENGINE_TAG = {"engine": "configurable"}


class SparkSessionResource(dg.ConfigurableResource):
    """dagster-pyspark's :class:`LazyPySparkResource`, itself built on first use.

    Why: importing ``dagster_pyspark`` imports pyspark (~1 CPU second), and the code location is
    loaded by every ``materialize``, run worker and code server, polars deployments included. This
    resource holds the same ``spark_config``; the first ``spark_session`` access imports
    dagster-pyspark and lets its ``LazyPySparkResource`` build the session.
    """

    spark_config: dict[str, Any]
    _spark_session: Any = PrivateAttr(default=None)

    @property
    def spark_session(self) -> Any:
        """The SparkSession, created by dagster-pyspark on first access."""
        if self._spark_session is None:
            from dagster_pyspark import LazyPySparkResource

            self._spark_session = LazyPySparkResource(spark_config=self.spark_config).spark_session
        return self._spark_session

    @property
    def spark_context(self) -> Any:
        """The session's SparkContext (creates the session on first access)."""
        return self.spark_session.sparkContext


class EngineResource(dg.ConfigurableResource):
    """The compute engine of the silver and gold assets: ``polars`` or ``spark``."""

    engine: EngineName = "polars"
    # Typed as any resource so that dagster-pyspark's LazyPySparkResource is accepted too, without
    # importing it (and pyspark) when the definitions load; both expose spark_config and spark_session.
    pyspark: dg.ConfigurableResource = Field(
        default_factory=lambda: SparkSessionResource(spark_config=SparkSettings().conf()),
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
        spark: Any = self.pyspark  # SparkSessionResource or dagster-pyspark's LazyPySparkResource
        master = str(spark.spark_config.get("spark.master", "local[*]"))
        if master.startswith("local") and not os.environ.get("PYSPARK_PYTHON"):
            os.environ["PYSPARK_PYTHON"] = sys.executable
        session = spark.spark_session
        session.sparkContext.setLogLevel(self.spark_log_level)
        return session


def engine_resource(engine: str, spark: SparkSettings | None = None) -> EngineResource:
    """The resource for ``HYBRID_ENGINE`` with Spark settings (``SparkSettings.from_env()`` when None)."""
    spark = spark if spark is not None else SparkSettings.from_env()
    return EngineResource(engine=engine, pyspark=SparkSessionResource(spark_config=spark.conf()))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# pool and kinds of the engine-backed assets, passed to their decorators
# ---------------------------------------------------------------------------------------------


def _known(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine must be 'polars' or 'spark', got {engine!r}")
    return engine


def engine_kinds(engine: str, *kinds: str) -> set[str]:
    """``kinds`` plus the engine's own kind (``polars`` or ``spark``): what computes the table."""
    return {*kinds, _known(engine)}


def engine_pool(engine: str) -> str | None:
    """The pool of an engine-backed step: ``spark`` (one Spark step at a time) or none on polars."""
    return SPARK_POOL if _known(engine) == "spark" else None


def on_engine(spec: dg.AssetSpec) -> bool:
    """Whether the asset's table is computed by the configured engine (its kinds follow the engine)."""
    return spec.tags.get("engine") == ENGINE_TAG["engine"]
