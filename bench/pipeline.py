"""Benchmark: bronze -> silver -> gold analytics on generated events, pipeline vs two baselines.

The pipeline (``hybrid-pipeline materialize``), the hand-written polars script
(``baseline_polars.py``) and the DuckDB SQL script (``baseline_duckdb.py``) run as child
processes on the same landing files, in a rotating order, several times; we report the median
wall time, events/s and peak RSS (ru_maxrss of each child), each pair's ratio measured in the
same run, check all three produced the same silver row count and revenue, and check the two
baselines wrote the same eight tables row for row.

    python bench/pipeline.py [--days 10] [--events-per-day 1000000] [--runs 3] [--only pipeline,duckdb]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
START = date(2024, 1, 1)


def run_child(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (GiB) and CPU seconds (user + system, all its threads) of one child
    process; on a shared machine the CPU seconds are the steadier figure."""
    began = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=PROJECT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[:3]} failed, see {log}")
    return wall, usage.ru_maxrss / 1024 / 1024, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--events-per-day", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default=str(HERE / "results" / "pipeline"))
    ap.add_argument("--only", default="pipeline,polars,duckdb", help="comma-separated subset of pipeline,polars,duckdb")
    args = ap.parse_args()
    names = [n for n in ("pipeline", "polars", "duckdb") if n in args.only.split(",")]
    work = Path(args.workdir)
    landing = work / f"landing-{args.days}x{args.events_per_day}"
    if not (landing / ".complete").exists():
        shutil.rmtree(landing, ignore_errors=True)
        env = {**os.environ, "HYBRID_LANDING_DIR": str(landing)}
        subprocess.run(
            [sys.executable, "-m", "hybrid_pipeline.cli", "generate", "--days", str(args.days), "--events-per-day",
             str(args.events_per_day), "--seed", "42", "--start-date", START.isoformat(), "--no-media"],
            env=env, check=True, cwd=PROJECT,
        )
        (landing / ".complete").touch()
    bronze_rows = sum(
        (f.read_text().count("\n") if f.suffix == ".jsonl" else pl.scan_csv(f, infer_schema=False).select(pl.len()).collect().item()
         if f.suffix == ".csv" else pl.scan_parquet(f).select(pl.len()).collect().item())
        for f in (landing / "events").rglob("*") if f.is_file()
    )
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    checks: dict[str, tuple[int, float]] = {}
    for i in range(args.runs):
        order = names[i % len(names):] + names[: i % len(names)]  # each one goes first in turn
        for name in order:
            out = work / f"{name}-out"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            if name != "pipeline":
                cmd = [sys.executable, str(HERE / f"baseline_{name}.py"), str(landing), str(out / "lake"), "bench-salt"]
                env = dict(os.environ)
            else:
                # The benchmarked scope: bronze -> silver -> gold analytics (the baseline's scope).
                cmd = [sys.executable, "-m", "hybrid_pipeline.cli", "materialize", "--all-landed",
                       "--select", "key:bronze/events or key:bronze/landed_files or key:silver/events* or "
                       "key:gold/daily_metrics or key:gold/fact_events or key:gold/user_landing_summary or key:gold/dim_*"]
                env = {**os.environ, "HYBRID_LANDING_DIR": str(landing), "HYBRID_LAKEHOUSE_ROOT": str(out / "lake"),
                       "DAGSTER_HOME": str(out / "dagster_home"), "HYBRID_START_DATE": START.isoformat(),
                       "HYBRID_PII_SALT": "bench-salt"}
            wall, rss, cpu = run_child(cmd, env, work / f"{name}-{i}.log")
            results[name].append((wall, rss, cpu))
            silver = "silver/events" if name == "pipeline" else "silver"
            metrics = "gold/daily_metrics" if name == "pipeline" else "daily_metrics"
            rows = pl.scan_delta(str(out / "lake" / silver)).select(pl.len()).collect().item()
            revenue = pl.scan_delta(str(out / "lake" / metrics)).select(pl.col("total_revenue").sum()).collect().item()
            checks[name] = (rows, round(revenue, 2))
            print(f"run {i} {name:<8} {wall:8.1f}s  cpu {cpu:8.1f}s  peak RSS {rss:5.2f} GiB  silver rows {rows:,}", flush=True)
    summary = {}
    for name, runs in results.items():
        wall = statistics.median(w for w, _, _ in runs)
        summary[name] = {"median_wall_s": round(wall, 1), "median_cpu_s": round(statistics.median(c for _, _, c in runs), 1),
                         "events_per_s": round(bronze_rows / wall), "peak_rss_gib": round(max(r for _, r, _ in runs), 2),
                         "runs": [round(w, 1) for w, _, _ in runs], "cpu_runs": [round(c, 1) for _, _, c in runs]}
    print(f"\n{bronze_rows:,} landed records, {args.days} days, {args.runs} runs each (median)")
    print(f"{'':<10}{'wall s':>10}{'cpu s':>10}{'events/s':>12}{'peak RSS GiB':>14}")
    for name, s in summary.items():
        print(f"{name:<10}{s['median_wall_s']:>10}{s['median_cpu_s']:>10}{s['events_per_s']:>12,}{s['peak_rss_gib']:>14}")
    ratios = {}
    for a, b in (("pipeline", "duckdb"), ("pipeline", "polars"), ("polars", "duckdb")):
        if a in summary and b in summary:
            ratios[f"{a}/{b}"] = round(summary[a]["median_wall_s"] / summary[b]["median_wall_s"], 3)
            pairs = [round(x[0] / y[0], 2) for x, y in zip(results[a], results[b], strict=True)]
            ratios[f"{a}/{b} cpu"] = round(summary[a]["median_cpu_s"] / summary[b]["median_cpu_s"], 3)
            print(f"{a} / {b} wall time: {ratios[f'{a}/{b}']:.2f}x (same-run pairs {pairs}); "
                  f"cpu time: {ratios[f'{a}/{b} cpu']:.2f}x")
    print("targets: pipeline / duckdb <= 1.3x, pipeline peak RSS <= 3 GiB")
    same = len({checks[n] for n in names}) == 1
    print(f"same silver rows and revenue in all: {same} {checks}")
    tables_equal = None
    if "polars" in names and "duckdb" in names:
        sys.path.insert(0, str(HERE))
        from baseline_duckdb import differences

        found = differences(work / "polars-out" / "lake", work / "duckdb-out" / "lake")
        tables_equal = not found
        print(f"the two baselines wrote the same eight tables row for row: {tables_equal} {found or ''}")
    (work / "summary.json").write_text(json.dumps(
        {"records": bronze_rows, "ratios": ratios, "same_output": same, "baseline_tables_equal": tables_equal, **summary}, indent=2))


if __name__ == "__main__":
    main()
