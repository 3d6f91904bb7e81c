"""Benchmark: the pipeline on an S3 endpoint vs on the local filesystem, same data, same run.

The same landing files go through bronze -> silver -> gold analytics and gold features
(``hybrid-pipeline materialize --all-landed`` in a child process) twice per round: once with
``HYBRID_LAKEHOUSE_ROOT`` a local folder, once ``s3://<fresh bucket>/lake`` on a local S3
endpoint, in alternating order, several rounds; we report the median wall time of each, their
ratio (and each round's), the objects and bytes in the bucket, and check both wrote the same
silver rows and revenue.

The endpoint is an EMULATOR (moto's server mode, from ``hybrid_pipeline_tests.lakehouse.s3_emulator``),
on the same machine: the figure is the cost of going through the S3 API (HTTP round trips,
request signing, no local file cache), not of a network or of AWS S3's latency.

    python bench/storage.py [--days 4] [--events-per-day 50000] [--runs 3]
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
sys.path.insert(0, str(PROJECT))
START = date(2024, 1, 1)
SELECT = ("key:bronze/events or key:bronze/landed_files or key:silver/events* or key:gold/daily_metrics or "
          "key:gold/fact_events or key:gold/user_landing_summary or key:gold/dim_* or key:gold/user_features or "
          "key:gold/user_labels")


def run_child(cmd: list[str], env: dict[str, str], log: Path) -> float:
    began = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=PROJECT)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed, see {log}")
    return time.perf_counter() - began


def outputs(root: str) -> tuple[int, float]:
    """Silver rows and total revenue, read back from the lakehouse at ``root``."""
    from hybrid_pipeline.lakehouse import Lakehouse

    lh = Lakehouse(root)
    rows = lh.scan("silver/events").select(pl.len()).collect().item()
    revenue = lh.scan("gold/daily_metrics").select(pl.col("total_revenue").sum()).collect().item()
    return rows, round(revenue, 2)


def main() -> None:
    from hybrid_pipeline_tests.lakehouse.s3_emulator import s3_emulator

    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--events-per-day", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default=str(HERE / "results" / "storage"))
    args = ap.parse_args()
    work = Path(args.workdir)
    landing = work / f"landing-{args.days}x{args.events_per_day}"
    if not (landing / ".complete").exists():
        shutil.rmtree(landing, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "hybrid_pipeline.cli", "generate", "--days", str(args.days), "--events-per-day",
             str(args.events_per_day), "--seed", "42", "--start-date", START.isoformat(), "--no-media"],
            env={**os.environ, "HYBRID_LANDING_DIR": str(landing)}, check=True, cwd=PROJECT,
        )
        (landing / ".complete").touch()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HYBRID_"))}
    walls: dict[str, list[float]] = {"local": [], "s3": []}
    checks: dict[str, tuple[int, float]] = {}
    bucket_stats: dict[str, int] = {}
    with s3_emulator() as emu:
        for i in range(args.runs):
            for name in (("local", "s3") if i % 2 == 0 else ("s3", "local")):
                out = work / f"{name}-out"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                if name == "s3":
                    root = f"s3://{emu.new_bucket()}/lake"
                    store_env = emu.env()
                else:
                    root, store_env = str(out / "lake"), {}
                env = {**clean, **store_env, "HYBRID_LANDING_DIR": str(landing), "HYBRID_LAKEHOUSE_ROOT": root,
                       "DAGSTER_HOME": str(out / "dagster_home"), "HYBRID_FEATURE_REPO": str(out / "feature_repo"),
                       "HYBRID_START_DATE": START.isoformat(), "HYBRID_PII_SALT": "bench-salt"}
                (out / "dagster_home").mkdir()
                cmd = [sys.executable, "-m", "hybrid_pipeline.cli", "materialize", "--all-landed", "--select", SELECT]
                wall = run_child(cmd, env, work / f"{name}-{i}.log")
                walls[name].append(wall)
                saved = {k: os.environ.get(k) for k in store_env}
                os.environ.update(store_env)
                try:
                    checks[name] = outputs(root)
                    if name == "s3":
                        bucket = root.split("/")[2]
                        client = emu.client()
                        sizes = [o["Size"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                                 for o in page.get("Contents", [])]
                        bucket_stats = {"objects": len(sizes), "bytes": sum(sizes)}
                finally:
                    for k, v in saved.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v
                print(f"run {i} {name:<6} {wall:8.1f}s  silver rows {checks[name][0]:,}", flush=True)
    summary = {name: {"median_wall_s": round(statistics.median(w), 1), "runs": [round(x, 1) for x in w]}
               for name, w in walls.items()}
    ratio = summary["s3"]["median_wall_s"] / summary["local"]["median_wall_s"]
    pairs = [round(s / lo, 2) for s, lo in zip(walls["s3"], walls["local"], strict=True)]
    same = checks["local"] == checks["s3"]
    records = args.days * args.events_per_day
    print(f"\n{records:,} generated events, {args.days} days, {args.runs} rounds (median)")
    for name, s in summary.items():
        print(f"{name:<6} {s['median_wall_s']:>8}s  runs {s['runs']}")
    print(f"s3 / local wall time: {ratio:.2f}x (same-round pairs {pairs})")
    print(f"bucket after a run: {bucket_stats.get('objects')} objects, {bucket_stats.get('bytes', 0) / 1e6:.1f} MB")
    print(f"same silver rows and revenue: {same} {checks}")
    (work / "summary.json").write_text(json.dumps(
        {"records": records, "ratio_s3_local": round(ratio, 3), "pairs": pairs, "same_output": same,
         "bucket": bucket_stats, **summary}, indent=2))


if __name__ == "__main__":
    main()
