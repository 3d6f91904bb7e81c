"""A real Spark standalone cluster on 127.0.0.1, started from pyspark's own distribution.

``spark-class org.apache.spark.deploy.master.Master`` and ``...deploy.worker.Worker`` from
``SPARK_HOME`` = the installed pyspark package (no download), on free ports, each daemon in its
own process group so that a worker can be killed with the executors and Python workers it
started. Workers see a *bare* ``python3`` first on their PATH (a virtualenv without the
project's packages), as on a machine where nobody installed them: the engine must give the
executors the project's environment by itself.

Used by ``test_spark_cluster.py`` (fixture ``standalone_cluster``) and by ``bench/engines.py``
(one worker vs two). :func:`pack_environment` builds the packed virtualenv that the
``HYBRID_SPARK_PYTHON_ARCHIVE`` tests ship to the executors.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What the executors import besides pyspark (whose Python code the workers' SPARK_HOME provides):
# the Parquet writer of engines.delta_commit and what it imports (the lakehouse's storage, polars).
EXECUTOR_PACKAGES = ("pyarrow", "deltalake", "arro3", "deprecated", "wrapt", "typing_extensions", "polars", "_polars_runtime_32")


def spark_home() -> Path:
    """pyspark's package directory: a complete Spark distribution (bin/, jars/, python/lib/)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _java_available() -> bool:
    return bool(os.environ.get("JAVA_HOME") or shutil.which("java"))


def bare_python(root: Path) -> Path:
    """A virtualenv without pip or any package, made from the base interpreter; its bin directory."""
    env = root / "bare-python"
    if not (env / "bin" / "python3").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    return env / "bin"


def pack_environment(dest: Path, packages: tuple[str, ...] = EXECUTOR_PACKAGES) -> Path:
    """A packed virtualenv (``.tar.gz``: Spark unpacks it with ``tar``, keeping the executable bits; a plain
    ``.tar`` is unpacked by Java without them) holding ``packages`` copied from this interpreter's site-packages.

    What ``venv-pack`` does, restricted to what executors import (the project's virtualenv with
    torch would be gigabytes): a fresh venv from the same base interpreter, the packages'
    directories and dist-info copied in, the tree tarred with ``bin/python`` at its root.
    Workers need that base interpreter at the same path (true here; for other machines build the
    archive on the workers' image, or use conda-pack).
    """
    if dest.exists():
        return dest
    work = dest.parent / (dest.name + ".d")
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--copies", str(work)], check=True)
    site = Path(next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()))
    target = next((work / "lib").glob("python*/site-packages"))
    for name in packages:
        found = [p for p in site.iterdir() if p.name in (name, f"{name}.py") or p.name.lower().startswith(name.replace("-", "_") + "-")]
        found += [p for p in site.iterdir() if p.name.lower().startswith(name.replace("-", "_") + "_") and p.suffix == ".dist-info"]
        if not found:
            raise FileNotFoundError(f"{name} is not installed in {site}")
        for p in found:
            if p.is_dir():
                shutil.copytree(p, target / p.name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "tests"))
            else:
                shutil.copy2(p, target / p.name)
    tmp = dest.with_name(dest.name + ".partial")
    with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
        for item in sorted(work.iterdir()):
            tar.add(item, arcname=item.name)
    tmp.rename(dest)
    shutil.rmtree(work, ignore_errors=True)
    return dest


@dataclass
class Daemon:
    """A master or worker JVM (``spark-class`` execs java, so the pid is the JVM's)."""

    name: str
    proc: subprocess.Popen
    web_port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def descendants(self) -> list[Any]:
        """psutil processes started by this daemon (executor JVMs, their Python workers)."""
        import psutil

        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the daemon's whole process group (it and everything it started)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill(signal.SIGKILL)  # leftovers of the group (executors) too
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class StandaloneCluster:
    """One master and its workers on 127.0.0.1; :meth:`stop` ends every process it started."""

    root: Path
    worker_memory: str = "768m"
    daemon_memory: str = "256m"
    master: Daemon | None = None
    workers: list[Daemon] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def _env(self, bare_bin: Path | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        conf_dir = self.root / "conf"
        conf_dir.mkdir(parents=True, exist_ok=True)
        env.update(
            SPARK_HOME=str(spark_home()),
            SPARK_CONF_DIR=str(conf_dir),  # empty: no stray spark-defaults or log settings
            SPARK_LOCAL_IP="127.0.0.1",
            SPARK_DAEMON_MEMORY=self.daemon_memory,
            SPARK_NO_DAEMONIZE="1",
        )
        if bare_bin is not None:
            env["PATH"] = f"{bare_bin}{os.pathsep}{env.get('PATH', '')}"
        return env

    def _spawn(self, name: str, args: list[str], web_port: int, bare_bin: Path | None) -> Daemon:
        log = self.root / f"{name}.log"
        cmd = [str(spark_home() / "bin" / "spark-class"), *args]
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, env=self._env(bare_bin), cwd=self.root, start_new_session=True
            )
        return Daemon(name, proc, web_port, log)

    def state(self) -> dict[str, Any]:
        """The master's JSON state (workers, applications), from its web UI."""
        assert self.master is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{self.master.web_port}/json/", timeout=5) as r:
            return json.loads(r.read())

    def _wait(self, what: str, ok: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            for d in [self.master, *self.workers]:
                if d is not None and not d.alive():
                    raise RuntimeError(f"{d.name} exited while waiting for {what}; log:\n{d.log.read_text()[-3000:]}")
            try:
                if ok(self.state()):
                    return
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
            time.sleep(0.5)
        raise TimeoutError(f"{what} not reached in {timeout:.0f}s ({last})")

    def start(self, workers: int = 2, cores: int = 1, bare_bin: Path | None = None, timeout: float = 90.0) -> StandaloneCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port, web = free_port(), free_port()
        self.master = self._spawn(
            "master",
            ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(web)],
            web,
            None,
        )
        self._wait("master ALIVE", lambda s: s.get("status") == "ALIVE", timeout)
        for _ in range(workers):
            self.add_worker(cores, bare_bin, timeout)
        return self

    def alive_workers(self) -> list[dict[str, Any]]:
        return [w for w in self.state().get("workers", []) if w.get("state") == "ALIVE"]

    def add_worker(self, cores: int = 1, bare_bin: Path | None = None, timeout: float = 90.0) -> Daemon:
        n = len(self.workers)
        web = free_port()
        work_dir = self.root / f"worker-{n}"
        work_dir.mkdir(parents=True, exist_ok=True)
        worker = self._spawn(
            f"worker-{n}",
            [
                "org.apache.spark.deploy.worker.Worker",
                "--host", "127.0.0.1",
                "--webui-port", str(web),
                "--cores", str(cores),
                "--memory", self.worker_memory,
                "--work-dir", str(work_dir),
                self.url,
            ],
            web,
            bare_bin,
        )
        self.workers.append(worker)
        expected = sum(1 for w in self.workers if w.alive())
        self._wait(f"{expected} ALIVE worker(s)", lambda s: len([w for w in s.get("workers", []) if w.get("state") == "ALIVE"]) >= expected, timeout)
        return worker

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        if self.master is not None:
            self.master.stop()

    def __enter__(self) -> StandaloneCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the pipeline's silver and gold on an engine (run in a child process for Spark: one JVM each) --

SALT = "cluster-test-salt"


def prepare_bronze(landing: Path, lakehouse_roots: list[Path], days: int, events_per_day: int, seed: int = 7) -> list[str]:
    """Generated dirty landings ingested into ``bronze/events`` of each lakehouse; the landing days."""
    from datetime import date, datetime, timezone

    from hybrid_pipeline.lakehouse import Lakehouse
    from hybrid_pipeline.sources.generator import GeneratorConfig, generate
    from hybrid_pipeline.sources.landing import collect_landing, landed_dates

    generate(GeneratorConfig(days=days, events_per_day=events_per_day, dirty_rate=0.05, seed=seed, start_date=date(2024, 3, 1)), landing)
    now = datetime(2024, 4, 1, tzinfo=timezone.utc)
    out = landed_dates(landing)
    for day in out:
        records = collect_landing(landing, day, {}, now).records
        for root in lakehouse_roots:
            Lakehouse(str(root)).append("bronze/events", records, partition_by=["landing_date"])
    return out


def run_pipeline(engine: Any, lakehouse_root: str, days: list[str], gold: bool = True) -> None:
    """Silver per landing day, then gold, through the engine operations the assets call."""
    from datetime import date

    import polars as pl

    from hybrid_pipeline.lakehouse import Lakehouse

    lh = Lakehouse(lakehouse_root)
    for day in days:
        engine.write_silver(lh, day, SALT)
        print(f"silver {day} written", flush=True)
    if not gold:
        return
    dates = lh.scan("silver/events").select(pl.col("event_date").unique().sort()).collect()["event_date"].to_list()
    lh.replace_where("gold/daily_metrics", engine.daily_metrics(lh, dates), "true", partition_by=["event_date"])
    for day in days:
        engine.write_fact_events(lh, day)
        engine.write_user_landing_summary(lh, day)
        lh.upsert("gold/dim_user", engine.dim_user(lh, day), ["user_key"])
    engine.write_user_features(lh, date.fromisoformat(days[0]), date.fromisoformat(days[-1]))
    print("gold written", flush=True)


def _get_json(url: str, tries: int = 3) -> Any:
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                return json.loads(r.read())
        except OSError:
            if attempt == tries - 1:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


def spark_child(lakehouse_root: str, days: list[str], report: Path, gold: bool) -> None:
    """The child process: the engine from the environment (``HYBRID_ENGINE=spark``,
    ``HYBRID_SPARK_*``) through dagster-pyspark's resource, as the assets get it; then the
    pipeline; then what the application's REST API says about its executors and stages."""
    from dataclasses import replace

    from hybrid_pipeline.dagster_support.engine import engine_resource
    from hybrid_pipeline.engines.spark_session import SparkSettings

    ui_port = free_port()
    settings = SparkSettings.from_env()
    settings = replace(settings, ui_enabled=True, extra_conf={**settings.extra_conf, "spark.ui.port": str(ui_port)})
    engine: Any = engine_resource(os.environ.get("HYBRID_ENGINE", "spark"), settings).compute()
    spark = engine.spark
    sc = spark.sparkContext
    # Which interpreter the executors' Python workers run (one task per core).
    pythons = sorted(set(sc.parallelize(range(4), 4).map(lambda _: __import__("sys").executable).collect()))
    out: dict[str, Any] = {"driver_pid": os.getpid(), "executor_pythons": pythons, "app_id": sc.applicationId}
    try:
        run_pipeline(engine, lakehouse_root, days, gold)
        out["ok"] = True
    except Exception as exc:  # noqa: BLE001 - reported to the test
        out["ok"] = False
        out["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        print(out["error"], flush=True)
    report.write_text(json.dumps(out, default=str))
    api = f"http://127.0.0.1:{ui_port}/api/v1/applications/{sc.applicationId}"
    out["executors"] = _get_json(f"{api}/allexecutors")
    out["stages"] = []
    for st in _get_json(f"{api}/stages") if gold else []:
        detail = _get_json(f"{api}/stages/{st['stageId']}/{st['attemptId']}")
        out["stages"].append(
            {"name": st.get("name"), "status": st.get("status"), "executors": sorted((detail.get("executorSummary") or {}).keys())}
        )
    report.write_text(json.dumps(out, default=str))
    spark.stop()


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description="run silver (and gold) on the Spark engine configured by the environment")
    ap.add_argument("lakehouse")
    ap.add_argument("days")
    ap.add_argument("report")
    ap.add_argument("--silver-only", action="store_true")
    a = ap.parse_args()
    spark_child(a.lakehouse, a.days.split(","), Path(a.report), gold=not a.silver_only)


if __name__ == "__main__":
    main()
