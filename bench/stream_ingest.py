"""Benchmark: Redis stream -> bronze/events (exactly-once micro-batches), rate and latency.

    python bench/stream_ingest.py                       # 1k/s and 5k/s for 20 s each, then max rate
    python bench/stream_ingest.py --duration 5 --rates 1000 --max-events 50000

For each offered rate a producer *process* publishes contract-shaped events from the
generator (token bucket, :func:`produce`) while this process runs one
:class:`StreamConsumer` (``consume_once`` in a loop) into a fresh local lakehouse.

* ``ingest/s``: events committed to Delta / (last commit - first publish).
* latency: publish -> committed in Delta, per event: the commit's wall time (taken right
  after ``write_deltalake`` returns) minus the entry id's timestamp (Redis assigns it at
  XADD; same machine, same clock). Millisecond resolution.
* ``max``: the stream is pre-filled (``rate=None``), then drained; ingest/s = events /
  drain time (the consumer's ceiling; there is no latency to speak of there).

Every scenario checks that bronze holds exactly the events published and nothing is pending.
Streams are named ``bench:stream:<uuid>`` and deleted afterwards.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402

from hybrid_pipeline.lakehouse import Lakehouse  # noqa: E402
from hybrid_pipeline.sources.generator import EventGenerator, GeneratorConfig  # noqa: E402
from hybrid_pipeline.sources.stream import StreamConsumer, produce, publish_ms_of_line_number  # noqa: E402


def make_events(n: int, seed: int = 1) -> list[dict]:
    cfg = GeneratorConfig(days=1, events_per_day=n, seed=seed, dirty_rate=0.0, start_date=date(2024, 1, 1))
    return next(EventGenerator(cfg).days()).events.to_dicts()


def _producer(redis_url: str, stream: str, n: int, rate: float | None, ready, go, out) -> None:
    events = make_events(n)
    ready.set()
    go.wait()
    t0 = time.perf_counter()
    out["sent"] = produce(redis_url, stream, events, rate=rate)
    out["seconds"] = time.perf_counter() - t0


def run_scenario(args, root: Path, label: str, rate: float | None, n: int) -> dict:
    client = redis.Redis.from_url(args.redis_url)
    stream = f"bench:stream:{uuid.uuid4().hex}"
    lakehouse = Lakehouse(str(root / label))
    captured: dict = {}
    consumer = StreamConsumer(
        args.redis_url, stream, "bronze", "bench", lakehouse,
        batch_size=args.batch_size, block_ms=args.block_ms, linger_ms=args.linger_ms,
        on_batch=lambda rows: captured.__setitem__("line_number", rows["line_number"].to_numpy()),
    )
    consumer.ensure_group()
    # spawn, not fork: a forked child of a process whose polars/delta-rs thread pools are
    # running can deadlock.
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    out = manager.dict()
    ready, go = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_producer, args=(args.redis_url, stream, n, rate, ready, go, out))
    proc.start()
    ready.wait()
    prefilled = rate is None
    if prefilled:  # max rate: fill the stream first, then time the drain alone
        go.set()
        proc.join()

    latencies: list[np.ndarray] = []
    rows = commits = 0
    first_publish_ms = last_commit_ms = None
    go.set()
    t_start = time.time()
    try:
        while rows < n:
            result = consumer.consume_once()
            if not result.rows:
                if time.time() - t_start > args.duration * 3 + 60:
                    raise RuntimeError(f"{label}: stalled at {rows}/{n} rows")
                continue
            commit_ms = result.committed_at.timestamp() * 1000
            publish_ms = publish_ms_of_line_number(captured.pop("line_number")).astype(np.float64)
            if first_publish_ms is None:
                first_publish_ms = float(publish_ms[0])
            latencies.append(commit_ms - publish_ms)
            last_commit_ms = commit_ms
            rows += result.rows
            commits += 1
        t_end = time.time()
        proc.join()
        bronze_rows = lakehouse.read("bronze/events").height
        pending = int(client.xpending(stream, "bronze")["pending"])
        out = dict(out)
        assert bronze_rows == n == out["sent"], (bronze_rows, n, out)
        assert pending == 0, pending
    finally:
        consumer.close()
        client.delete(stream)
        client.close()
        manager.shutdown()

    lat = np.concatenate(latencies)
    if prefilled:
        ingest_rate = n / (t_end - t_start)
    else:
        ingest_rate = n / ((last_commit_ms - first_publish_ms) / 1000)
    return {
        "scenario": label,
        "offered/s": "max" if rate is None else f"{rate:,.0f}",
        "published/s": f"{out['sent'] / out['seconds']:,.0f}",
        "events": f"{n:,}",
        "ingest/s": f"{ingest_rate:,.0f}",
        "commits": f"{commits:,}",
        "rows/commit": f"{n / commits:,.0f}",
        "p50 ms": "-" if prefilled else f"{np.percentile(lat, 50):.0f}",
        "p99 ms": "-" if prefilled else f"{np.percentile(lat, 99):.0f}",
        "max ms": "-" if prefilled else f"{lat.max():.0f}",
    }


def print_table(rows: list[dict]) -> None:
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.rjust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).rjust(width[c]) for c in cols))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--rates", type=float, nargs="*", default=[1000.0, 5000.0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per offered rate")
    parser.add_argument("--max-events", type=int, default=200_000, help="events for the max-rate drain (0 = skip)")
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--block-ms", type=int, default=100)
    parser.add_argument("--linger-ms", type=int, default=0)
    parser.add_argument("--root", help="lakehouse folder (default: a temporary one, removed afterwards)")
    args = parser.parse_args()

    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="stream-bench-"))
    results = []
    try:
        for rate in args.rates:
            results.append(run_scenario(args, root, f"rate-{rate:.0f}", rate, int(rate * args.duration)))
            print(f"done: {results[-1]}", flush=True)
        if args.max_events:
            results.append(run_scenario(args, root, "max-drain", None, args.max_events))
            print(f"done: {results[-1]}", flush=True)
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"\nbatch_size={args.batch_size} block_ms={args.block_ms} linger_ms={args.linger_ms}; "
        "one Delta commit per micro-batch, XACK after commit; local filesystem lakehouse\n"
    )
    print_table(results)


if __name__ == "__main__":
    main()
