"""Spark session settings for the scale-out engine (``HYBRID_ENGINE=spark``).

One place decides how a SparkSession is built, so that tests, benchmarks and assets all get the
same semantics whatever the cluster:

* ``spark.sql.session.timeZone=UTC`` always: Spark turns timestamps into dates and hours in the
  session time zone, and silver's ``event_date``/``hour`` are defined in UTC (DESIGN.md). The
  Spark silver port refuses to run on a session with another time zone.
* Executors get the project's Python environment from the engine itself, because the
  executor-side Parquet writer (:mod:`hybrid_pipeline.engines.delta_commit`) imports pyarrow,
  deltalake and this package, and a worker left to itself starts the machine's ``python3``
  (``ModuleNotFoundError: No module named 'pyarrow'``). Which interpreter (:meth:`SparkSettings.executor_interpreter`):

  - ``local[...]`` masters, and cluster workers on this machine (the default): the driver's own
    interpreter (``sys.executable``);
  - ``HYBRID_SPARK_PYTHON_ARCHIVE``: a packed virtualenv (``venv-pack``/``conda-pack`` output, or a
    ``.tar.gz``/``.zip`` of a venv) shipped with the job through ``spark.archives`` and unpacked
    by every executor as ``./environment`` (``./environment/bin/python``); the project's own code
    travels with each job as a zip (``addPyFile``), so the archive holds only third-party packages;
  - ``HYBRID_SPARK_EXECUTOR_PYTHON``: an interpreter that already exists on every worker (a
    container image on Kubernetes, a managed service's runtime); the code is shipped the same way.

  PySpark reads the executors' interpreter from ``PYSPARK_PYTHON`` once, when the context starts
  (``spark.pyspark.python`` is only read by spark-submit): :func:`get_spark` sets it for that
  moment, and :func:`prepare_executors` applies ``spark.pyspark.python`` to a session built
  elsewhere (dagster-pyspark's resource).
* A cluster master that does not answer, or gives the application no executors, fails within
  ``HYBRID_SPARK_START_TIMEOUT`` seconds with one message naming ``HYBRID_SPARK_MASTER``
  (:class:`SparkClusterUnavailable`), not a hang. :func:`prepare_executors` also runs one tiny
  Python task to check that the executors' interpreter imports what the engine needs.
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
import socket
import sys
import tempfile
import threading
import uuid
import zipfile
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from collections.abc import Iterator

    from pyspark.sql import SparkSession

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
_LOCAL = re.compile(r"^local(?:\[(\*|\d+)(?:\s*,\s*\d+)?\])?$")
ARCHIVE_ALIAS = "environment"  # the directory a shipped environment is unpacked to on each executor
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip", ".tar", ".jar")  # what Spark unpacks
# What the executors' Python must import for the engine (the Parquet writer, its module and the
# lakehouse storage it opens files with).
EXECUTOR_IMPORTS = ("pyarrow", "deltalake", "polars", "hybrid_pipeline.engines.delta_commit", "hybrid_pipeline.lakehouse")
_CONNECT_TIMEOUT_S = 5.0


class SparkClusterUnavailable(RuntimeError):
    """The Spark master does not answer, gives no executors, or the executors lack the environment."""


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
    python_archive: str | None = None  # a packed environment shipped to the executors (spark.archives)
    executor_python: str | None = None  # an interpreter present on every worker (e.g. a container image)
    start_timeout_s: float = 120.0  # how long to wait for the master and a first executor
    extra_conf: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SparkSettings:
        """Settings from ``HYBRID_SPARK_*`` variables (all optional).

        ``HYBRID_SPARK_MASTER``, ``HYBRID_SPARK_DRIVER_MEMORY``, ``HYBRID_SPARK_SHUFFLE_PARTITIONS``,
        ``HYBRID_SPARK_EXECUTOR_MEMORY``, ``HYBRID_SPARK_EXECUTOR_CORES``,
        ``HYBRID_SPARK_EXECUTOR_INSTANCES``, ``HYBRID_SPARK_DELTA_PACKAGES`` (comma separated Maven
        coordinates), ``HYBRID_SPARK_DELTA_JARS`` (comma separated paths), ``HYBRID_SPARK_LOCAL_DIR``,
        ``HYBRID_SPARK_PYTHON_ARCHIVE`` (a packed virtualenv for the executors: a path or a URI the
        workers can fetch), ``HYBRID_SPARK_EXECUTOR_PYTHON`` (an interpreter on every worker),
        ``HYBRID_SPARK_START_TIMEOUT`` (seconds, default 120).
        """
        env = os.environ if environ is None else environ

        def opt_int(name: str) -> int | None:
            raw = env.get(name, "").strip()
            return int(raw) if raw else None

        def csv(name: str) -> tuple[str, ...]:
            return tuple(p.strip() for p in env.get(name, "").split(",") if p.strip())

        raw_timeout = env.get("HYBRID_SPARK_START_TIMEOUT", "").strip()
        try:
            timeout = float(raw_timeout) if raw_timeout else 120.0
        except ValueError:
            raise ValueError(f"HYBRID_SPARK_START_TIMEOUT must be a number of seconds, got {raw_timeout!r}") from None
        if timeout <= 0:
            raise ValueError(f"HYBRID_SPARK_START_TIMEOUT must be positive, got {raw_timeout!r}")
        archive = env.get("HYBRID_SPARK_PYTHON_ARCHIVE", "").strip() or None
        if archive is not None and not archive.lower().split("#", 1)[0].endswith(ARCHIVE_SUFFIXES):
            raise ValueError(
                f"HYBRID_SPARK_PYTHON_ARCHIVE must be a {', '.join(ARCHIVE_SUFFIXES)} file (a packed virtualenv), got {archive!r}"
            )
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
            python_archive=archive,
            executor_python=env.get("HYBRID_SPARK_EXECUTOR_PYTHON", "").strip() or None,
            start_timeout_s=timeout,
        )

    @property
    def is_local(self) -> bool:
        return master_cores(self.master) is not None

    @property
    def wants_delta_jars(self) -> bool:
        return bool(self.delta_packages or self.delta_jars)

    def executor_interpreter(self) -> str:
        """The interpreter executors start their Python workers with (see the module docstring)."""
        if self.is_local:
            return sys.executable
        if self.executor_python:
            return self.executor_python
        if self.python_archive:
            return f"./{ARCHIVE_ALIAS}/bin/python"
        return sys.executable

    def archive_uri(self) -> str | None:
        """``spark.archives`` value for the packed environment: an absolute path or URI, ``#environment``."""
        if not self.python_archive:
            return None
        location = self.python_archive.split("#", 1)[0]
        if "://" not in location:
            location = str(Path(location).expanduser().resolve())
        return f"{location}#{ARCHIVE_ALIAS}"

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
        conf["spark.pyspark.python"] = self.executor_interpreter()
        conf["spark.pyspark.driver.python"] = sys.executable
        if not self.is_local:
            # Cluster managers that start executors in their own environment (Kubernetes, YARN)
            # read the interpreter from the executors' environment.
            conf["spark.executorEnv.PYSPARK_PYTHON"] = self.executor_interpreter()
            archive = self.archive_uri()
            if archive:
                conf["spark.archives"] = archive
        if self.executor_memory:
            conf["spark.executor.memory"] = self.executor_memory
        if self.executor_cores:
            conf["spark.executor.cores"] = str(self.executor_cores)
        if self.executor_instances:
            conf["spark.executor.instances"] = str(self.executor_instances)
        if self.local_dir:
            conf["spark.local.dir"] = self.local_dir
        if not self.is_local:
            conf["spark.hybrid.startTimeout"] = str(self.start_timeout_s)
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
    if not settings.is_local:
        check_master(settings.master)  # first: an unreachable master is the clearer message
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
    if not settings.is_local:
        check_archive(settings)
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    with _pyspark_python(None if settings.is_local else settings.executor_interpreter()):
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.log_level)
    prepare_executors(spark, settings)
    return spark


@contextmanager
def _pyspark_python(python: str | None) -> Iterator[None]:
    """``PYSPARK_PYTHON`` = ``python`` while a context starts (PySpark reads it then, once)."""
    if python is None:
        yield
        return
    before = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = python
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYSPARK_PYTHON", None)
        else:
            os.environ["PYSPARK_PYTHON"] = before


def master_addresses(master: str) -> list[tuple[str, int]]:
    """(host, port) of each master a ``spark://h:p[,h2:p2]`` or ``k8s://https://h:p`` URL names."""
    from urllib.parse import urlsplit

    if master.startswith("spark://"):
        out = []
        for part in master[len("spark://") :].split(","):
            host, _, port = part.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"HYBRID_SPARK_MASTER must look like spark://host:port, got {master!r}")
            out.append((host.strip("[]"), int(port)))
        return out
    if master.startswith("k8s://"):
        url = urlsplit(master[len("k8s://") :] if "://" in master[len("k8s://") :] else "https://" + master[len("k8s://") :])
        if not url.hostname:
            raise ValueError(f"HYBRID_SPARK_MASTER must look like k8s://https://host:port, got {master!r}")
        return [(url.hostname, url.port or (80 if url.scheme == "http" else 443))]
    return []


def check_master(master: str, timeout: float = _CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`SparkClusterUnavailable` naming HYBRID_SPARK_MASTER unless a master accepts a TCP
    connection (bounded: ``timeout`` seconds per address). Spark itself would retry for minutes."""
    addresses = master_addresses(master)
    problems = []
    for host, port in addresses:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return
        except OSError as exc:
            problems.append(f"{host}:{port} ({exc.strerror or exc})")
    if addresses:
        raise SparkClusterUnavailable(
            f"HYBRID_SPARK_MASTER={master}: no Spark master answers at {', '.join(problems)} "
            f"(waited {timeout:.0f} s per address); start the cluster or correct HYBRID_SPARK_MASTER"
        )


def check_archive(settings: SparkSettings) -> None:
    """A local ``HYBRID_SPARK_PYTHON_ARCHIVE`` must exist (a URI is fetched by Spark, unchecked here)."""
    uri = settings.archive_uri()
    if uri is None or "://" in uri:
        return
    path = Path(uri.split("#", 1)[0])
    if not path.is_file():
        raise ValueError(f"HYBRID_SPARK_PYTHON_ARCHIVE={settings.python_archive}: no such file ({path})")


# SparkContexts (by application id) whose executors were already checked and given the code.
_PREPARED: set[str] = set()
_PREPARED_LOCK = threading.Lock()


def ship_project_code(spark: SparkSession) -> Path:
    """Zip this package and add it to every executor's Python path (``addPyFile``).

    For executors that run another interpreter than the driver's (a shipped or preinstalled
    environment): the code that runs is then always the driver's, whatever the workers have.
    """
    import hybrid_pipeline

    package = Path(hybrid_pipeline.__file__).resolve().parent
    out = Path(tempfile.mkdtemp(prefix="hybrid-pyfiles-")) / f"hybrid_pipeline-{uuid.uuid4().hex[:12]}.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(package.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                zf.write(path, Path("hybrid_pipeline") / path.relative_to(package))
    spark.sparkContext.addPyFile(str(out))
    return out


def _executor_probe(modules: tuple[str, ...]) -> Any:
    """A task body, pickled by value (executors may not have this module): which interpreter ran it
    and which of ``modules`` it could not import."""

    def probe(_: Any) -> Any:
        import importlib
        import os as _os
        import sys as _sys

        missing = []
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 - reported to the driver
                missing.append(f"{name} ({type(exc).__name__}: {exc})")
        yield (_sys.executable, _os.getpid(), missing)

    return probe


def prepare_executors(spark: SparkSession, settings: SparkSettings | None = None) -> list[tuple[str, int, list[str]]]:
    """Give a cluster session's executors the project's environment and check it, within a bounded time.

    Local masters need nothing. On a cluster: the executors' interpreter is ``spark.pyspark.python``
    (set by :meth:`SparkSettings.conf`; applied here to a session that another builder created),
    the project's code is shipped when that interpreter is not the driver's, and one tiny Python
    task must run within ``start_timeout_s`` and import :data:`EXECUTOR_IMPORTS`; otherwise
    :class:`SparkClusterUnavailable` names the setting to fix and the session is stopped. Returns
    what the probe task reported (interpreter, pid, missing modules); once per application.
    """
    sc = spark.sparkContext
    master = str(sc.master)
    if master_cores(master) is not None:
        return []
    with _PREPARED_LOCK:
        if sc.applicationId in _PREPARED:
            return []
        conf = sc.getConf()
        python = (settings.executor_interpreter() if settings else None) or conf.get("spark.pyspark.python") or sys.executable
        timeout = settings.start_timeout_s if settings else float(conf.get("spark.hybrid.startTimeout", "120"))
        try:
            check_master(master)
        except SparkClusterUnavailable:
            spark.stop()
            raise
        if sc.pythonExec != python:
            sc.pythonExec = python  # read by every Python function Spark wraps from now on
        if python != sys.executable:
            ship_project_code(spark)
        report = _run_probe(spark, python, timeout)
        _PREPARED.add(sc.applicationId)
        return report


def _cause(error: str) -> str:
    """The telling line of a py4j/Spark error (its first line is usually 'An error occurred while calling ...')."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    for line in lines:
        if re.search(r"ModuleNotFoundError|ImportError|Cannot run program|No such file|Permission denied", line):
            return line[:500]
    return lines[0][:500] if lines else "unknown error"


def _run_probe(spark: SparkSession, python: str, timeout: float) -> list[tuple[str, int, list[str]]]:
    sc = spark.sparkContext
    master = str(sc.master)
    group = f"hybrid-executor-probe-{uuid.uuid4().hex[:8]}"
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            sc.setJobGroup(group, "hybrid_pipeline: check the executors' Python environment", interruptOnCancel=True)
            outcome["rows"] = sc.parallelize([0], 1).mapPartitions(_executor_probe(EXECUTOR_IMPORTS)).collect()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=group, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        sc.cancelJobGroup(group)
        thread.join(10)
        memory = sc.getConf().get("spark.executor.memory", "1g")
        spark.stop()
        raise SparkClusterUnavailable(
            f"HYBRID_SPARK_MASTER={master}: the master accepted the application but no executor ran a task "
            f"within {timeout:.0f} s (HYBRID_SPARK_START_TIMEOUT): are workers registered, with a free core and "
            f"{memory} of memory (HYBRID_SPARK_EXECUTOR_MEMORY) each?"
        )
    if "error" in outcome:
        spark.stop()
        raise SparkClusterUnavailable(
            f"HYBRID_SPARK_MASTER={master}: executors could not run Python {python!r}: "
            f"{_cause(str(outcome['error']))}. Workers on other machines need the project's "
            "environment: set HYBRID_SPARK_PYTHON_ARCHIVE (a packed virtualenv) or HYBRID_SPARK_EXECUTOR_PYTHON"
        ) from None
    rows = [(str(r[0]), int(r[1]), list(r[2])) for r in outcome.get("rows", [])]
    missing = sorted({m for r in rows for m in r[2]})
    if missing:
        spark.stop()
        raise SparkClusterUnavailable(
            f"HYBRID_SPARK_MASTER={master}: the executors' Python ({rows[0][0]}) cannot import {'; '.join(missing)}; "
            "give them the project's environment with HYBRID_SPARK_PYTHON_ARCHIVE or HYBRID_SPARK_EXECUTOR_PYTHON"
        )
    return rows


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
