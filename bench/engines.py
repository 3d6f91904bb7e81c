"""Benchmark: the same silver and gold work on polars and on Spark (local[1] vs local[2], or a
standalone cluster of one vs two one-core workers).

Prepared once (not timed): generated landings with dirt, ingested into ``bronze/events`` with
delta-rs. Then each engine runs in its own child process over the same bronze table and writes
its own lakehouse: per landing day, silver (events, quarantine, duplicates: one replace-where
each); then gold through the engine operations the assets call (``engines.compute``):
``daily_metrics`` over every event date, ``fact_events`` and ``dim_user`` per landing day,
``user_features`` over the whole range. Spark silver uses ``engines.spark_silver`` reading the
Delta snapshots itself and writing through ``engines.delta_commit``.

Memory: the parent samples the child's process tree with psutil every 0.1 s. For polars that is
one process (its ru_maxrss is reported too). For Spark it is the Python driver, the JVM (driver
and, in local mode, the executors) and the Python workers the JVM starts for ``mapInArrow``;
the peak of each and the peak of their sum are reported.

At the end the polars and Spark outputs are compared: every silver and gold table, row for row.

Masters: ``local[N]``, any cluster URL, or ``standalone:N``: a Spark standalone cluster of N
one-core workers on 127.0.0.1 (pyspark's own ``spark-class`` Master/Worker, started for the run
and stopped after it, as the cluster tests do), with one 1 GiB executor per worker. The memory
sampler sees the driver only there (executors are children of the workers, not of the run).

    python bench/engines.py --events 10000000          # the default size (2 cores: long)
    python bench/engines.py --events 1000000 --days 5  # what fits in a few minutes here
    python bench/engines.py --events 10000000 --gold-only  # gold again on the silver of the last run
    python bench/engines.py --events 100000 --days 2 --masters standalone:1,standalone:2  # cluster scaling
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from datetime import date, datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
START = date(2024, 1, 1)
SALT = "bench-salt"
SILVER = {"events": "silver/events", "quarantine": "silver/events_quarantine", "duplicates": "silver/events_duplicates"}
SILVER_PARTITIONS = {"events": ["event_date"], "quarantine": ["landing_date"], "duplicates": ["landing_date"]}
WORK = ("silver", "daily_metrics", "fact_events", "dim_user", "user_features")
GOLD_ONLY = "BENCH_ENGINES_GOLD_ONLY"  # set for the children by --gold-only


# -- preparation ---------------------------------------------------------------------------------


def prepare(work: Path, events: int, days: int, dirty: float) -> tuple[Path, list[str], int]:
    from hybrid_pipeline.lakehouse import Lakehouse
    from hybrid_pipeline.sources.generator import GeneratorConfig, generate
    from hybrid_pipeline.sources.landing import collect_landing, landed_dates

    bronze_root = work / f"bronze-{days}x{events // days}-{dirty}"
    marker = bronze_root / ".complete"
    landing = bronze_root / "landing"
    if not marker.exists():
        shutil.rmtree(bronze_root, ignore_errors=True)
        t = time.perf_counter()
        generate(GeneratorConfig(days=days, events_per_day=events // days, dirty_rate=dirty, seed=42, start_date=START), landing)
        lh = Lakehouse(str(bronze_root / "lake"))
        now = datetime(2024, 6, 1, tzinfo=timezone.utc)
        for day in landed_dates(landing):
            lh.append("bronze/events", collect_landing(landing, day, {}, now).records, partition_by=["landing_date"])
        print(f"prepared {events:,} events over {days} days in {time.perf_counter() - t:.1f}s (not timed below)", flush=True)
        marker.touch()
    from hybrid_pipeline.lakehouse import Lakehouse

    lh = Lakehouse(str(bronze_root / "lake"))
    rows = lh.scan("bronze/events").select("landing_date").collect()
    return bronze_root / "lake", sorted(rows["landing_date"].unique().to_list()), rows.height


# -- engine runs (child processes) ---------------------------------------------------------------


def run_polars(bronze_root: str, out_root: str, days: list[str]) -> dict:
    import polars as pl

    from hybrid_pipeline.engines.compute import PolarsEngine
    from hybrid_pipeline.lakehouse import Lakehouse
    from hybrid_pipeline.transforms.contract import silver_schema

    bronze, out = Lakehouse(bronze_root), Lakehouse(out_root)
    engine = PolarsEngine()
    stages: dict[str, float] = {}
    t = time.perf_counter()
    for day in [] if os.environ.get(GOLD_ONLY) else days:
        records = bronze.scan("bronze/events").filter(pl.col("landing_date") == day).collect()
        existing = out.scan_or_empty(SILVER["events"], silver_schema()).filter(pl.col("landing_date") != day)
        batch = engine.clean_events(records, existing, SALT)
        for name, table in SILVER.items():
            out.replace_where(table, getattr(batch, name), f"landing_date = '{day}'", partition_by=SILVER_PARTITIONS[name])
    if not os.environ.get(GOLD_ONLY):
        stages["silver"] = time.perf_counter() - t
    stages.update(run_gold(engine, out, days))
    stages["ru_maxrss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    return stages


def run_gold(engine, out, days: list[str]) -> dict:  # noqa: ANN001
    """Gold through the engine operations the assets call: daily_metrics over every event date,
    fact_events and dim_user (its landing-day summary, then the touched users) per landing day (as the
    daily runs do), user_features over the range."""
    import polars as pl

    stages: dict[str, float] = {}
    t = time.perf_counter()
    dates = out.scan(SILVER["events"]).select(pl.col("event_date").unique().sort()).collect()["event_date"].to_list()
    metrics = engine.daily_metrics(out, dates)
    out.replace_where("gold/daily_metrics", metrics, "true", partition_by=["event_date"])
    stages["daily_metrics"] = time.perf_counter() - t
    t = time.perf_counter()
    for day in days:
        engine.write_fact_events(out, day)
    stages["fact_events"] = time.perf_counter() - t
    t = time.perf_counter()
    for day in days:
        engine.write_user_landing_summary(out, day)
        users = engine.dim_user(out, day)
        out.upsert("gold/dim_user", users, ["user_key"])
    stages["dim_user"] = time.perf_counter() - t
    t = time.perf_counter()
    engine.write_user_features(out, date.fromisoformat(days[0]), date.fromisoformat(days[-1]))
    stages["user_features"] = time.perf_counter() - t
    return stages


def run_spark(bronze_root: str, out_root: str, days: list[str], master: str, driver_memory: str) -> dict:
    from hybrid_pipeline.engines.compute import SparkEngine
    from hybrid_pipeline.engines.delta_commit import SparkLakehouse
    from hybrid_pipeline.engines.spark_session import SparkSettings, get_spark
    from hybrid_pipeline.engines.spark_silver import clean_events
    from hybrid_pipeline.lakehouse import Lakehouse

    stages: dict[str, float] = {}
    t = time.perf_counter()
    local = master.startswith("local")
    spark = get_spark(SparkSettings(master=master, driver_memory=driver_memory, executor_memory=None if local else "1g"))
    spark.range(1).count()
    stages["startup"] = time.perf_counter() - t
    out_lh = Lakehouse(out_root)
    bronze, out = SparkLakehouse(Lakehouse(bronze_root), spark), SparkLakehouse(out_lh, spark)
    # Silver on the scale-out path: Spark reads the bronze snapshot and earlier silver itself and
    # writes through delta_commit (nothing passes through the driver).
    t = time.perf_counter()
    for day in [] if os.environ.get(GOLD_ONLY) else days:
        records = bronze.scan("bronze/events", predicate=f"landing_date = '{day}'")
        if out.exists(SILVER["events"]):
            existing = out.scan(SILVER["events"], predicate=f"landing_date != '{day}'")
        else:
            existing = spark.createDataFrame([], "event_id string, landing_date string, source_file string, line_number long")
        batch = clean_events(records, existing, SALT)
        try:
            for name, table in SILVER.items():
                out.replace_where(table, getattr(batch, name), f"landing_date = '{day}'", partition_by=SILVER_PARTITIONS[name])
        finally:
            batch.unpersist()
    if not os.environ.get(GOLD_ONLY):
        stages["silver"] = time.perf_counter() - t
    stages.update(run_gold(SparkEngine(spark), out_lh, days))
    spark.stop()
    return stages


# -- measurement -------------------------------------------------------------------------------


def measure(cmd: list[str], log: Path) -> dict:
    """Run a child; sample RSS of its process tree by role; return its JSON result plus memory."""
    import psutil

    began = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=fh, cwd=PROJECT, text=True)
        root = psutil.Process(proc.pid)
        peaks = {"driver_python": 0, "jvm": 0, "python_workers": 0, "total": 0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    now = {"driver_python": root.memory_info().rss, "jvm": 0, "python_workers": 0}
                    for child in root.children(recursive=True):
                        try:
                            name = child.name()
                            rss = child.memory_info().rss
                        except psutil.Error:
                            continue
                        if "java" in name:
                            now["jvm"] += rss
                        else:
                            now["python_workers"] += rss
                    now["total"] = sum(now.values())
                    for k, v in now.items():
                        peaks[k] = max(peaks[k], v)
                except psutil.Error:
                    pass
                stop.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out, _ = proc.communicate()
        stop.set()
        sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} failed; see {log}")
    result = json.loads(out.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - began
    result.update({f"peak_{k}_gib": v / 2**30 for k, v in peaks.items()})
    return result


def compare(polars_root: Path, spark_root: Path) -> dict:
    """Every table of both runs, sorted on its keys: identical (user_features floats to 1e-12)."""
    from polars.testing import assert_frame_equal

    from hybrid_pipeline.lakehouse import Lakehouse

    a, b = Lakehouse(str(polars_root)), Lakehouse(str(spark_root))
    keys = {
        SILVER["events"]: ["event_id"],
        SILVER["quarantine"]: ["source_file", "line_number"],
        SILVER["duplicates"]: ["source_file", "line_number"],
        "gold/daily_metrics": ["event_date", "user_segment"],
        "gold/fact_events": ["event_id"],
        "gold/user_landing_summary": ["landing_date", "user_id"],
        "gold/dim_user": ["user_id"],
        "gold/user_features": ["user_id", "event_date"],
    }
    rows = {}
    for table, key in keys.items():
        x, y = a.read(table), b.read(table)
        assert_frame_equal(x.select(sorted(x.columns)).sort(key), y.select(sorted(x.columns)).sort(key), check_exact=False, rel_tol=1e-12)
        rows[table] = x.height
    return {"identical tables (rows)": rows}


def pl_len():  # noqa: ANN201
    import polars as pl

    return pl.len()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=5)
    ap.add_argument("--dirty-rate", type=float, default=0.02)
    ap.add_argument("--masters", default="local[1],local[2]", help="Spark masters to compare, comma separated")
    ap.add_argument("--driver-memory", default="3g")
    ap.add_argument("--engines", default="polars,spark")
    ap.add_argument("--workdir", default=str(HERE / "results" / "engines"))
    ap.add_argument(
        "--gold-only",
        action="store_true",
        help="keep each engine's silver tables from an earlier run in --workdir and time gold alone",
    )
    ap.add_argument("--_child", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._child:
        kind, bronze_root, out_root, days_csv, *rest = args._child
        days = days_csv.split(",")
        result = run_polars(bronze_root, out_root, days) if kind == "polars" else run_spark(bronze_root, out_root, days, *rest)
        print(json.dumps(result), flush=True)
        return

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    bronze_root, days, bronze_rows = prepare(work, args.events, args.days, args.dirty_rate)
    print(f"bronze: {bronze_rows:,} records over {len(days)} landing days; cores: {os.cpu_count()}", flush=True)
    runs: dict[str, dict] = {}
    engines = args.engines.split(",")
    plan = (["polars"] if "polars" in engines else []) + (
        [f"spark {m}" for m in args.masters.split(",")] if "spark" in engines else []
    )
    for name in plan:
        out = work / ("out-" + name.replace(" ", "-").replace("[", "").replace("]", "").replace(":", ""))
        if args.gold_only:
            if not (out / "silver").exists():
                raise SystemExit(f"--gold-only: no silver tables in {out}; run once without it first")
            shutil.rmtree(out / "gold", ignore_errors=True)
            os.environ[GOLD_ONLY] = "1"
        else:
            shutil.rmtree(out, ignore_errors=True)
        child = [sys.executable, str(Path(__file__).resolve()), "--_child"]
        master = "" if name == "polars" else name.split()[1]
        cluster = None
        if master.startswith("standalone:"):
            sys.path.insert(0, str(PROJECT))
            from hybrid_pipeline_tests.engines.spark_cluster import StandaloneCluster

            shutil.rmtree(work / f"{out.name}-cluster", ignore_errors=True)
            cluster = StandaloneCluster(work / f"{out.name}-cluster", worker_memory="1280m")
            cluster.start(workers=int(master.split(":", 1)[1]), cores=1)
            master = cluster.url
        if name == "polars":
            child += ["polars", str(bronze_root), str(out), ",".join(days)]
        else:
            child += ["spark", str(bronze_root), str(out), ",".join(days), master, args.driver_memory]
        load_before = os.getloadavg()
        try:
            runs[name] = measure(child, work / f"{out.name}.log")
        finally:
            if cluster is not None:
                cluster.stop()
        runs[name]["loadavg_before_after"] = [round(x, 2) for x in (*load_before, *os.getloadavg())]
        runs[name]["out"] = str(out)
        r = runs[name]
        stages = " ".join(f"{k}={r[k]:.1f}s" for k in ("startup", *WORK) if k in r)
        print(
            f"{name:16s} wall={r['wall']:.1f}s {stages} | peak RSS total={r['peak_total_gib']:.2f} GiB "
            f"(driver python {r['peak_driver_python_gib']:.2f}, jvm {r['peak_jvm_gib']:.2f}, "
            f"python workers {r['peak_python_workers_gib']:.2f})"
            + (f" ru_maxrss={r['ru_maxrss_gib']:.2f} GiB" if "ru_maxrss_gib" in r else "")
            + f" | load average (1/5/15 min) before {r['loadavg_before_after'][:3]} after {r['loadavg_before_after'][3:]}",
            flush=True,
        )
    if "polars" in runs and len(runs) > 1:
        for spark_name in [n for n in runs if n != "polars"]:
            check = compare(Path(runs["polars"]["out"]), Path(runs[spark_name]["out"]))
            print(f"check {spark_name}:", json.dumps(check), flush=True)
    summary = {"events": args.events, "bronze_rows": bronze_rows, "days": len(days), "runs": runs}
    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    for name, r in runs.items():
        per_s = bronze_rows / sum(r.get(k, 0.0) for k in WORK)
        scope = "gold" if args.gold_only else "silver+gold"
        print(f"{name:16s} {per_s:,.0f} bronze records/s through {scope} (startup excluded)")


if __name__ == "__main__":
    main()
