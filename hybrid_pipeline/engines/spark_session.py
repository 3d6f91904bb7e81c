"""Spark session settings for the scale-out engine (``HYBRID_ENGINE=spark``).

One place decides how a SparkSession is built, so that tests, benchmarks and assets all get the
same semantics whatever the cluster:

* ``spark.sql.session.timeZone=UTC`` always: Spark turns timestamps into dates and hours in the
  session time zone, and silver's ``event_date``/``hour`` are defined in UTC (DESIGN.md). The
  Spark silver port refuses to run on a session with another time zone.
* Python workers run the driver's interpreter in local mode (``PYSPARK_PYTHON``, set when unset:
  PySpark ignores ``spark.pyspark.python`` outside spark-submit), because
  the executor-side Parquet writer (:mod:`hybrid_pipeline.engines.delta_commit`) and the e-mail
  hashing fallback need pyarrow and the project's packages. On a cluster, point
  ``spark.pyspark.python`` at an environment with the project installed (``extra_conf``).
* Delta jars are optional. With them (``delta_packages`` resolved from Maven through
  ``spark.jars.packages``, or ``delta_jars`` local paths), the session gets Delta's SQL extension
  and catalog and :func:`delta_jars_configured` answers True, so reads and writes use
  ``format("delta")``. Without them (this machine: no Maven), Spark computes and delta-rs reads
  snapshots and commits writes (see ``delta_commit``).

Nothing is read from the environment at import time; :meth:`SparkSettings.from_env` reads the
mapping it is given when a resource is built.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pyspark.sql import SparkSession

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
_LOCAL = re.compile(r"^local(?:\[(\*|\d+)(?:\s*,\s*\d+)?\])?$")


def master_cores(master: str) -> int | None:
    """Cores a ``local``/``local[N]``/``local[*]``/``local[N,F]`` master uses; None for a cluster."""
    m = _LOCAL.match(master.strip())
    if not m:
        return None
    n = m.group(1)
    if n is None:
        return 1
    return os.cpu_count() or 1 if n == "*" else max(1, int(n))


@dataclass(frozen=True)
class SparkSettings:
    """How to build the SparkSession; every field has a safe local default.

    ``master`` is ``local[*]`` by default; give a cluster URL (``spark://host:7077``,
    ``yarn``, ``k8s://https://...``) together with the executor settings to scale out.
    ``shuffle_partitions`` defaults to 2 x the cores Spark can use (local: the master's cores;
    cluster: ``executor_instances * executor_cores``; otherwise Spark's 200, which adaptive query
    execution coalesces).
    """

    master: str = "local[*]"
    app_name: str = "hybrid_pipeline"
    driver_memory: str = "2g"
    shuffle_partitions: int | None = None
    executor_memory: str | None = None
    executor_cores: int | None = None
    executor_instances: int | None = None
    delta_packages: tuple[str, ...] = ()  # e.g. ("io.delta:delta-spark_2.13:4.0.0",): needs Maven
    delta_jars: tuple[str, ...] = ()  # local jar paths (delta-spark + delta-storage)
    ui_enabled: bool = False
    local_dir: str | None = None
    log_level: str = "ERROR"
    extra_conf: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SparkSettings:
        """Settings from ``HYBRID_SPARK_*`` variables (all optional).

        ``HYBRID_SPARK_MASTER``, ``HYBRID_SPARK_DRIVER_MEMORY``, ``HYBRID_SPARK_SHUFFLE_PARTITIONS``,
        ``HYBRID_SPARK_EXECUTOR_MEMORY``, ``HYBRID_SPARK_EXECUTOR_CORES``,
        ``HYBRID_SPARK_EXECUTOR_INSTANCES``, ``HYBRID_SPARK_DELTA_PACKAGES`` (comma separated Maven
        coordinates), ``HYBRID_SPARK_DELTA_JARS`` (comma separated paths), ``HYBRID_SPARK_LOCAL_DIR``.
        """
        env = os.environ if environ is None else environ

        def opt_int(name: str) -> int | None:
            raw = env.get(name, "").strip()
            return int(raw) if raw else None

        def csv(name: str) -> tuple[str, ...]:
            return tuple(p.strip() for p in env.get(name, "").split(",") if p.strip())

        return cls(
            master=env.get("HYBRID_SPARK_MASTER", "local[*]").strip() or "local[*]",
            driver_memory=env.get("HYBRID_SPARK_DRIVER_MEMORY", "2g").strip() or "2g",
            shuffle_partitions=opt_int("HYBRID_SPARK_SHUFFLE_PARTITIONS"),
            executor_memory=env.get("HYBRID_SPARK_EXECUTOR_MEMORY") or None,
            executor_cores=opt_int("HYBRID_SPARK_EXECUTOR_CORES"),
            executor_instances=opt_int("HYBRID_SPARK_EXECUTOR_INSTANCES"),
            delta_packages=csv("HYBRID_SPARK_DELTA_PACKAGES"),
            delta_jars=csv("HYBRID_SPARK_DELTA_JARS"),
            local_dir=env.get("HYBRID_SPARK_LOCAL_DIR") or None,
        )

    @property
    def is_local(self) -> bool:
        return master_cores(self.master) is not None

    @property
    def wants_delta_jars(self) -> bool:
        return bool(self.delta_packages or self.delta_jars)

    def with_master(self, master: str) -> SparkSettings:
        return replace(self, master=master)

    def effective_shuffle_partitions(self) -> int:
        if self.shuffle_partitions:
            return self.shuffle_partitions
        cores = master_cores(self.master)
        if cores is None and self.executor_instances and self.executor_cores:
            cores = self.executor_instances * self.executor_cores
        return 2 * cores if cores else 200

    def conf(self) -> dict[str, str]:
        """The Spark configuration these settings stand for (static and runtime keys)."""
        conf: dict[str, str] = {
            "spark.app.name": self.app_name,
            "spark.master": self.master,
            "spark.driver.memory": self.driver_memory,
            "spark.sql.shuffle.partitions": str(self.effective_shuffle_partitions()),
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.adaptive.enabled": "true",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            # Native Parquet writes (format("parquet"/"delta")) store timestamps as Delta expects.
            "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
            "spark.ui.enabled": str(self.ui_enabled).lower(),
            "spark.ui.showConsoleProgress": "false",
            "spark.log.structuredLogging.enabled": "false",
            # json.loads keeps the last of duplicate keys; Spark's default raises on them.
            "spark.sql.mapKeyDedupPolicy": "LAST_WIN",
        }
        if self.is_local:
            conf["spark.pyspark.python"] = sys.executable
            conf["spark.pyspark.driver.python"] = sys.executable
        if self.executor_memory:
            conf["spark.executor.memory"] = self.executor_memory
        if self.executor_cores:
            conf["spark.executor.cores"] = str(self.executor_cores)
        if self.executor_instances:
            conf["spark.executor.instances"] = str(self.executor_instances)
        if self.local_dir:
            conf["spark.local.dir"] = self.local_dir
        if self.delta_packages:
            conf["spark.jars.packages"] = ",".join(self.delta_packages)
        if self.delta_jars:
            conf["spark.jars"] = ",".join(self.delta_jars)
        if self.wants_delta_jars:
            conf["spark.sql.extensions"] = DELTA_EXTENSION
            conf["spark.sql.catalog.spark_catalog"] = DELTA_CATALOG
        conf.update(self.extra_conf)
        return conf


def get_spark(settings: SparkSettings | None = None) -> SparkSession:
    """The SparkSession for ``settings`` (created once per process, then reused).

    Static settings (master, driver memory, jars) only take effect when the JVM starts: if a
    session already runs with another master, this raises instead of silently returning it.
    """
    from pyspark.sql import SparkSession

    settings = settings or SparkSettings()
    conf = settings.conf()
    active = SparkSession.getActiveSession()
    if active is not None:
        running = active.sparkContext.master
        if running != settings.master:
            raise RuntimeError(f"a SparkSession with master {running!r} is already running; stop it first")
        for key in ("spark.sql.shuffle.partitions", "spark.sql.session.timeZone", "spark.sql.mapKeyDedupPolicy"):
            active.conf.set(key, conf[key])
        return active
    if settings.is_local and not os.environ.get("PYSPARK_PYTHON"):
        # PySpark starts Python workers with $PYSPARK_PYTHON (default "python3", which lacks the
        # project's packages); the spark.pyspark.python key is only read by spark-submit.
        os.environ["PYSPARK_PYTHON"] = sys.executable
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.log_level)
    return spark


def delta_jars_configured(spark: SparkSession) -> bool:
    """True when this session can use ``format("delta")``: jars loaded and Delta's extension set."""
    try:
        extensions = spark.conf.get("spark.sql.extensions", "") or ""
    except Exception:  # noqa: BLE001 - a session without the key
        extensions = ""
    if DELTA_EXTENSION not in extensions:
        return False
    jvm = getattr(spark, "_jvm", None) or getattr(getattr(spark, "sparkContext", None), "_jvm", None)
    if jvm is None:  # Spark Connect: the server decides; trust its configuration
        return True
    try:
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        loader.loadClass("io.delta.tables.DeltaTable")
        return True
    except Exception:  # noqa: BLE001 - py4j wraps ClassNotFoundException
        return False


def spark_path(uri: str) -> str:
    """A table or file URI as Spark's Hadoop filesystems name it (``s3://`` -> ``s3a://``)."""
    if uri.startswith("s3://"):
        return "s3a://" + uri[len("s3://") :]
    return uri
