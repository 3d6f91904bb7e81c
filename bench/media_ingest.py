"""Benchmark: images ingested into bronze + described per second, against a plain copy.

Why: ingest (stream, sha256, sniff, atomic write) and describe (header check,
verify, full decode, dHash) should cost a small multiple of the I/O floor; this
shows how big that multiple is on the machine at hand.

    python bench/media_ingest.py                 # 10,000 random 32x32 RGB PNGs, 3 runs
    python bench/media_ingest.py --n 2000 --workers 2

Each configuration runs ``--runs`` times into fresh output folders (page cache
warm for all of them, since the landing files were just written; ``os.sync()``
before each timed stage so none pays for another's writeback); the median is
reported. Stages: ``copy`` = shutil.copyfile of every file (the floor),
``ingest`` = ingest_landing_media (one process), ``describe`` =
describe_many on ``--workers`` processes (pool start-up included),
``ingest+describe`` = the two back to back.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybrid_pipeline.media.demo import random_png_bytes  # noqa: E402
from hybrid_pipeline.media.extract import available_cpus, describe_many  # noqa: E402
from hybrid_pipeline.media.store import ingest_landing_media  # noqa: E402


def generate(landing: Path, n: int, size: int) -> int:
    images = landing / "images"
    images.mkdir(parents=True)
    total = 0
    for i in range(n):
        data = random_png_bytes(size, size, seed=i, mode="RGB")
        (images / f"img_{i:06d}.png").write_bytes(data)
        total += len(data)
    return total


def copy_all(landing: Path, out: Path) -> float:
    out.mkdir(parents=True)
    start = time.perf_counter()
    for src in sorted((landing / "images").iterdir()):
        shutil.copyfile(src, out / src.name)
    return time.perf_counter() - start


def pipeline(landing: Path, bronze: Path, workers: int) -> tuple[float, float, int]:
    start = time.perf_counter()
    records, rejected = ingest_landing_media(landing, bronze, "2024-01-01")
    ingested = time.perf_counter()
    descriptions = describe_many([bronze / r.bronze_path for r in records],
                                 original_names=[r.original_name for r in records], workers=workers)
    done = time.perf_counter()
    bad = len(rejected) + sum(not d.ok for d in descriptions)
    if bad:
        raise SystemExit(f"benchmark data produced {bad} rejected/quarantined files")
    return ingested - start, done - ingested, len(descriptions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="number of PNGs (default 10000)")
    parser.add_argument("--size", type=int, default=32, help="PNG side in pixels (default 32)")
    parser.add_argument("--runs", type=int, default=3, help="runs per stage; the median is reported")
    parser.add_argument("--workers", type=int, default=available_cpus(), help="describe processes (default: all CPUs)")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="media_bench_", dir=args.dir))
    try:
        landing = scratch / "landing"
        t0 = time.perf_counter()
        total_bytes = generate(landing, args.n, args.size)
        print(f"generated {args.n} PNGs ({args.size}x{args.size} RGB noise, {total_bytes / 1e6:.1f} MB) "
              f"in {time.perf_counter() - t0:.1f}s; CPUs available: {available_cpus()}, describe workers: {args.workers}")

        copies, ingests, describes, totals = [], [], [], []
        for run in range(args.runs):
            os.sync()  # flush earlier runs' dirty pages so no stage pays for another's writeback
            copies.append(copy_all(landing, scratch / f"copy_{run}"))
            os.sync()
            ingest_s, describe_s, n = pipeline(landing, scratch / f"bronze_{run}", args.workers)
            assert n == args.n
            ingests.append(ingest_s)
            describes.append(describe_s)
            totals.append(ingest_s + describe_s)
            shutil.rmtree(scratch / f"copy_{run}")
            shutil.rmtree(scratch / f"bronze_{run}")

        rows = [("copy (I/O floor, 1 proc)", copies), ("ingest (1 proc)", ingests),
                (f"describe ({args.workers} procs)", describes), ("ingest+describe", totals)]
        print(f"\n{'stage':<28}{'median s':>10}{'files/s':>12}{'MB/s':>9}   runs (s)")
        for name, times in rows:
            med = statistics.median(times)
            print(f"{name:<28}{med:>10.3f}{args.n / med:>12,.0f}{total_bytes / 1e6 / med:>9.1f}   "
                  + ", ".join(f"{t:.3f}" for t in times))
        ratio = statistics.median(totals) / statistics.median(copies)
        print(f"\ningest+describe takes {ratio:.1f}x the copy floor "
              f"({args.n / statistics.median(totals):,.0f} images/s end to end)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
