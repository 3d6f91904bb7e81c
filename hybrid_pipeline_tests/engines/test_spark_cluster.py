"""The Spark engine on a real standalone cluster: a master and two one-core workers on 127.0.0.1.

The cluster comes from pyspark's own distribution (``spark_cluster.StandaloneCluster``); its
workers find a bare ``python3`` (no pyarrow) first on their PATH. Each Spark run is a child
process configured only through the environment, as a user would (``HYBRID_ENGINE=spark``,
``HYBRID_SPARK_MASTER=spark://...``), getting its session from the engine resource the assets
use. Small data (two landing days of 200 events): the point is where the work runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from hybrid_pipeline.engines.compute import PolarsEngine
from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline_tests.engines.spark_cluster import (
    StandaloneCluster,
    _java_available,
    bare_python,
    free_port,
    pack_environment,
    prepare_bronze,
    run_pipeline,
)

PROJECT = Path(__file__).resolve().parents[2]
DAYS, EVENTS_PER_DAY = 2, 200
KEYS = {
    "silver/events": ["event_id"],
    "silver/events_quarantine": ["source_file", "line_number"],
    "silver/events_duplicates": ["source_file", "line_number"],
    "gold/daily_metrics": ["event_date", "user_segment"],
    "gold/fact_events": ["event_id"],
    "gold/user_landing_summary": ["landing_date", "user_id"],
    "gold/dim_user": ["user_id"],
    "gold/user_features": ["user_id", "event_date"],
}
SILVER = [t for t in KEYS if t.startswith("silver/")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneCluster]:
    pytest.importorskip("pyspark")
    if not _java_available():
        pytest.skip("Spark needs Java")
    root = tmp_path_factory.mktemp("spark_cluster")
    with StandaloneCluster(root) as c:
        c.start(workers=2, cores=1, bare_bin=bare_python(root))
        yield c


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Bronze of two landing days in four lakehouses (the polars reference and three Spark runs);
    the polars engine's tables computed once as the reference."""
    root = tmp_path_factory.mktemp("cluster_data")
    names = ("polars", "spark", "archive", "killed")
    lakes = {n: root / n for n in names}
    days = prepare_bronze(root / "landing", list(lakes.values()), DAYS, EVENTS_PER_DAY)
    run_pipeline(PolarsEngine(), str(lakes["polars"]), days)
    return {"days": days, "lakes": lakes, "root": root}


def spark_env(cluster: StandaloneCluster, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "HYBRID_SPARK_"))}
    env.update(
        HYBRID_ENGINE="spark",
        HYBRID_SPARK_MASTER=cluster.url,
        HYBRID_SPARK_DRIVER_MEMORY="768m",
        HYBRID_SPARK_EXECUTOR_MEMORY="512m",
        HYBRID_SPARK_SHUFFLE_PARTITIONS="4",
        HYBRID_SPARK_START_TIMEOUT="240",
        **extra,
    )
    return env


def run_child(lake: Path, days: list[str], env: dict[str, str], silver_only: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hybrid_pipeline_tests.engines.spark_cluster", str(lake), ",".join(days), str(lake) + ".json"]
    log = open(str(lake) + ".log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd + (["--silver-only"] if silver_only else []), cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, lake: Path, timeout: float = 600) -> dict:
    rc = proc.wait(timeout)
    log = Path(str(lake) + ".log").read_text()
    report = Path(str(lake) + ".json")
    assert rc == 0 and report.exists(), f"Spark child failed (rc={rc}):\n{log[-4000:]}"
    return json.loads(report.read_text())


def assert_same_tables(expected: Path, actual: Path, tables: list[str]) -> None:
    a, b = Lakehouse(str(expected)), Lakehouse(str(actual))
    for table in tables:
        x, y = a.read(table), b.read(table)
        assert x.height > 0, table
        cols = sorted(x.columns)
        assert_frame_equal(x.select(cols).sort(KEYS[table]), y.select(cols).sort(KEYS[table]), check_exact=False, rel_tol=1e-12)


@pytest.mark.cluster
def test_silver_and_gold_on_the_cluster_equal_polars_and_run_on_executors(cluster: StandaloneCluster, data: dict) -> None:
    lake = data["lakes"]["spark"]
    report = finish(run_child(lake, data["days"], spark_env(cluster)), lake)
    assert report["ok"], report.get("error")
    assert_same_tables(data["lakes"]["polars"], lake, list(KEYS))
    # The workers' own python3 lacks pyarrow; the executors ran the driver's interpreter.
    assert subprocess.run([str(bare_python(cluster.root) / "python3"), "-c", "import pyarrow"], capture_output=True).returncode != 0
    assert report["executor_pythons"] == [sys.executable]
    # Executors, not the driver, read and wrote: the driver ran no task; the executors read the
    # Parquet files; the write stages (mapInArrow in engines.delta_commit) ran on executors only.
    by_id = {e["id"]: e for e in report["executors"]}
    assert by_id["driver"]["totalTasks"] == 0
    executors = [e for i, e in by_id.items() if i != "driver"]
    assert len(executors) == 2 and all(e["totalTasks"] > 0 for e in executors), executors
    assert sum(e["totalInputBytes"] for e in executors) > 0
    writes = [s for s in report["stages"] if "delta_commit.py" in (s["name"] or "") and s["status"] == "COMPLETE"]
    assert writes and all(s["executors"] and "driver" not in s["executors"] for s in writes), report["stages"]
    # Each Delta commit is atomic: every version of a silver table holds a landing day whole or not at all.
    assert_whole_days(data["lakes"]["polars"], lake)


def assert_whole_days(expected: Path, actual: Path) -> int:
    """Every version of every silver table: each landing day's rows are 0 or all of the day's rows."""
    full = {t: Lakehouse(str(expected)).read(t).group_by("landing_date").len() for t in SILVER}
    lh = Lakehouse(str(actual))
    versions = 0
    for table in SILVER:
        want = dict(full[table].iter_rows())
        for v in range(lh.version(table) + 1):
            counts = dict(lh.read(table, version=v).group_by("landing_date").len().iter_rows())
            for day, n in counts.items():
                assert n == want.get(day), f"{table} v{v} holds {n} of {want.get(day)} rows of landing day {day}"
            versions += 1
    return versions


@pytest.mark.cluster
def test_a_packed_environment_ships_with_the_job(cluster: StandaloneCluster, data: dict, tmp_path_factory: pytest.TempPathFactory) -> None:
    """HYBRID_SPARK_PYTHON_ARCHIVE: executors run ./environment/bin/python from the shipped archive
    (pyarrow and deltalake only; the project's code travels with the job)."""
    archive = pack_environment(tmp_path_factory.mktemp("packed") / "executor-env.tar.gz")
    lake = data["lakes"]["archive"]
    day = data["days"][:1]  # one landing day: the point is which Python ran it
    report = finish(run_child(lake, day, spark_env(cluster, HYBRID_SPARK_PYTHON_ARCHIVE=str(archive)), silver_only=True), lake)
    assert report["ok"], report.get("error")
    assert report["executor_pythons"] and all(p.endswith("/environment/bin/python") for p in report["executor_pythons"])
    expected, actual = Lakehouse(str(data["lakes"]["polars"])), Lakehouse(str(lake))
    for table in SILVER:
        x = expected.read(table).filter(pl.col("landing_date") == day[0])
        y = actual.read(table)
        cols = sorted(x.columns)
        assert_frame_equal(x.select(cols).sort(KEYS[table]), y.select(cols).sort(KEYS[table]))


@pytest.mark.cluster
def test_executors_without_the_packages_stop_the_run_with_one_clear_message(cluster: StandaloneCluster, data: dict) -> None:
    """Executors told to run the workers' bare python3 (what a worker does left to itself): the
    engine's start-up check fails before any write, naming what is missing and what to set."""
    lake = data["root"] / "bare"
    bare = str(bare_python(cluster.root) / "python3")
    proc = run_child(lake, data["days"], spark_env(cluster, HYBRID_SPARK_EXECUTOR_PYTHON=bare), silver_only=True)
    assert proc.wait(600) != 0
    log = Path(str(lake) + ".log").read_text()
    assert "SparkClusterUnavailable: HYBRID_SPARK_MASTER=spark://127.0.0.1:" in log, log[-3000:]
    assert "cannot import" in log and "No module named 'pyarrow'" in log and "HYBRID_SPARK_PYTHON_ARCHIVE" in log
    assert not (lake / "silver").exists()


def test_an_unreachable_master_fails_fast_naming_the_setting() -> None:
    pytest.importorskip("pyspark")
    from hybrid_pipeline.engines.spark_session import SparkClusterUnavailable, SparkSettings, get_spark

    url = f"spark://127.0.0.1:{free_port()}"
    began = time.monotonic()
    with pytest.raises(SparkClusterUnavailable, match=r"HYBRID_SPARK_MASTER=spark://127\.0\.0\.1:\d+: no Spark master answers"):
        get_spark(SparkSettings(master=url))
    assert time.monotonic() - began < 10


@pytest.mark.cluster
def test_a_worker_killed_during_a_silver_write_leaves_no_half_day(cluster: StandaloneCluster, data: dict) -> None:
    """SIGKILL worker 0 (with its executor and Python workers) as soon as the first uncommitted
    Parquet file of silver appears: the step retries on the other executor or fails, and no
    Delta version of a silver table holds part of a landing day."""
    lake = data["lakes"]["killed"]
    proc = run_child(lake, data["days"], spark_env(cluster), silver_only=True)
    victim = cluster.workers[0]
    killed_at = None
    deadline = time.monotonic() + 400
    while proc.poll() is None and time.monotonic() < deadline:
        if any((lake / "silver").rglob("part-*.parquet")) if (lake / "silver").exists() else False:
            victim.kill()
            killed_at = time.monotonic()
            break
        time.sleep(0.02)
    assert killed_at is not None, "the run ended before any silver file was written"
    rc = proc.wait(600)
    log = Path(str(lake) + ".log").read_text()
    report = json.loads(Path(str(lake) + ".json").read_text()) if rc == 0 else {"ok": False}
    assert not victim.alive()
    assert_whole_days(data["lakes"]["polars"], lake)
    if report["ok"]:  # retried on the surviving executor: the tables are complete
        assert_same_tables(data["lakes"]["polars"], lake, SILVER)
        lost = [e for e in report["executors"] if e["id"] != "driver" and not e["isActive"]]
        assert lost, report["executors"]
    else:
        assert "silver" in log or "Error" in log


# -- settings (no cluster needed) ------------------------------------------------------------


def test_cluster_executors_get_the_driver_interpreter_or_the_shipped_environment(tmp_path: Path) -> None:
    from hybrid_pipeline.engines.spark_session import SparkSettings

    conf = SparkSettings.from_env({"HYBRID_SPARK_MASTER": "spark://10.0.0.5:7077"}).conf()
    assert conf["spark.pyspark.python"] == conf["spark.executorEnv.PYSPARK_PYTHON"] == sys.executable
    assert "spark.archives" not in conf
    archive = tmp_path / "env.tar.gz"
    s = SparkSettings.from_env({"HYBRID_SPARK_MASTER": "spark://10.0.0.5:7077", "HYBRID_SPARK_PYTHON_ARCHIVE": str(archive)})
    conf = s.conf()
    assert conf["spark.archives"] == f"{archive}#environment"
    assert conf["spark.pyspark.python"] == conf["spark.executorEnv.PYSPARK_PYTHON"] == "./environment/bin/python"
    assert conf["spark.pyspark.driver.python"] == sys.executable
    image = SparkSettings.from_env({"HYBRID_SPARK_MASTER": "k8s://https://k:6443", "HYBRID_SPARK_EXECUTOR_PYTHON": "/opt/venv/bin/python"})
    assert image.conf()["spark.pyspark.python"] == "/opt/venv/bin/python"
    # A local master always uses the driver's interpreter.
    local = SparkSettings.from_env({"HYBRID_SPARK_MASTER": "local[2]", "HYBRID_SPARK_PYTHON_ARCHIVE": str(archive)})
    assert local.conf()["spark.pyspark.python"] == sys.executable and "spark.archives" not in local.conf()


def test_bad_cluster_settings_name_the_setting(tmp_path: Path) -> None:
    from hybrid_pipeline.engines.spark_session import SparkSettings, check_archive, master_addresses

    with pytest.raises(ValueError, match="HYBRID_SPARK_PYTHON_ARCHIVE must be a"):
        SparkSettings.from_env({"HYBRID_SPARK_PYTHON_ARCHIVE": "env.rar"})
    with pytest.raises(ValueError, match="HYBRID_SPARK_START_TIMEOUT must be a number"):
        SparkSettings.from_env({"HYBRID_SPARK_START_TIMEOUT": "soon"})
    with pytest.raises(ValueError, match="HYBRID_SPARK_START_TIMEOUT must be positive"):
        SparkSettings.from_env({"HYBRID_SPARK_START_TIMEOUT": "0"})
    missing = SparkSettings(master="spark://h:7077", python_archive=str(tmp_path / "nope.tar.gz"))
    with pytest.raises(ValueError, match="HYBRID_SPARK_PYTHON_ARCHIVE=.*no such file"):
        check_archive(missing)
    check_archive(SparkSettings(master="spark://h:7077", python_archive="s3://bucket/env.tar.gz"))  # fetched by Spark
    with pytest.raises(ValueError, match="HYBRID_SPARK_MASTER must look like spark://host:port"):
        master_addresses("spark://nohost")
    assert master_addresses("spark://a:7077,b:7078") == [("a", 7077), ("b", 7078)]
    assert master_addresses("k8s://https://k.example:6443") == [("k.example", 6443)]
    assert master_addresses("yarn") == [] and master_addresses("local[2]") == []
