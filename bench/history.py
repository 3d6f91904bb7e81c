"""Benchmark: does a landing day's silver step cost more when the table holds a long history?

Lands ``--days`` generated days (``--events-per-day`` each) one after the other into one
lakehouse, as the daily runs do (bronze ingest, then the silver step of the polars engine:
decode, type, contract, cross-day dedup through the event index, the three table writes and the
index update), and times, per day:

* ``silver_s`` / ``silver_cpu_s``: the silver step (``PolarsEngine.write_silver``), the figure the target is about;
* ``unique_check_s``: the whole-table uniqueness check's lookup of the day's ids in the other
  days (through the event index, caught up to silver's version first), as the check runs it;
* ``scan_ids_s``: for reference, the same question answered by scanning every stored
  ``event_id`` of silver (what dedup and the check did before the index): the cost that grows.

Reports days 1, middle and last, and the median of five days around each (noise), and
writes every day's figures to ``history.json`` in the work directory.

    python bench/history.py [--days 60] [--events-per-day 200000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl

from hybrid_pipeline.engines.compute import PolarsEngine
from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.lakehouse.event_index import EventIndex
from hybrid_pipeline.sources.generator import GeneratorConfig, generate
from hybrid_pipeline.sources.landing import collect_landing
from hybrid_pipeline.transforms import quality

HERE = Path(__file__).resolve().parent


class Clock:
    """Wall and CPU seconds (all threads of this process) of a block: on a shared machine the
    CPU seconds are the steadier figure."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def figures(self, name: str) -> dict[str, float]:
        return {f"{name}_s": round(self.wall, 3), f"{name}_cpu_s": round(self.cpu, 3)}
START = date(2024, 1, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--events-per-day", type=int, default=200_000)
    ap.add_argument("--workdir", default=str(HERE / "results" / "history"))
    args = ap.parse_args()
    work = Path(args.workdir)
    landing = work / f"landing-{args.days}x{args.events_per_day}"
    if not (landing / ".complete").exists():
        shutil.rmtree(landing, ignore_errors=True)
        generate(GeneratorConfig(days=args.days, events_per_day=args.events_per_day, seed=42, start_date=START), landing)
        (landing / ".complete").touch()
    root = work / "lake"
    shutil.rmtree(root, ignore_errors=True)
    lh = Lakehouse(str(root))
    engine = PolarsEngine()
    rows: list[dict] = []
    for i in range(args.days):
        day = (START + timedelta(days=i)).isoformat()
        # every generated file is new: the ingest ledger's lookup is the bronze step's, not timed here
        batch = collect_landing(landing, day, {}, datetime.now(timezone.utc))
        lh.append("bronze/events", batch.records, partition_by=["landing_date"])

        with Clock() as silver:
            written = engine.write_silver(lh, day, "bench-salt")
        ids = lh.scan("silver/events").filter(pl.col("landing_date") == day).select("event_id").collect()
        with Clock() as check:
            index = EventIndex(lh).current()
            unique = quality.event_ids_unique(ids.lazy(), index.lookup(ids["event_id"], exclude_day=day).lazy())
        with Clock() as scan:
            clashes = (
                lh.scan("silver/events").filter(pl.col("landing_date") != day).select("event_id")
                .join(ids.lazy(), on="event_id", how="semi").collect().height
            )
        assert unique.passed and clashes == 0
        rows.append({"day": i + 1, "landing_date": day, "bronze_rows": written.bronze_rows, "stored_ids": index.rows(),
                     **silver.figures("silver"), **check.figures("unique_check"), **scan.figures("scan_ids")})
        print(json.dumps(rows[-1]), flush=True)

    (work / "history.json").write_text(json.dumps(rows, indent=1))
    n = len(rows)
    marks = sorted({1, (n + 1) // 2, n})
    print(f"\n{n} days x {args.events_per_day:,} events; seconds: that day | median of the 5 days around it")
    keys = ("silver_s", "silver_cpu_s", "unique_check_cpu_s", "scan_ids_cpu_s")
    print(f"{'day':>5}{'stored ids':>12}" + "".join(f"{k:>22}" for k in keys))
    for m in marks:
        around = rows[max(0, m - 3): m + 2]
        cells = [f"{rows[m - 1][k]:>7.2f} | {statistics.median(r[k] for r in around):>5.2f}" for k in keys]
        print(f"{m:>5}{rows[m - 1]['stored_ids']:>12,}" + "".join(f"{c:>22}" for c in cells))
    for k in ("silver_s", "silver_cpu_s"):
        first = statistics.median(r[k] for r in rows[:5])
        last = statistics.median(r[k] for r in rows[-5:])
        print(f"{k}: last / first (medians of 5 days): {last / first:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
