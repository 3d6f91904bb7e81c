"""Benchmark: Redis stream -> bronze/events (exactly-once micro-batches) -> online streaming
features, rate and latency.

    python bench/stream_ingest.py                       # 1k/s and 5k/s for 20 s each, then max rate
    python bench/stream_ingest.py --duration 5 --rates 1000 --max-events 50000
    python bench/stream_ingest.py --online redis://127.0.0.1:6379/0 --repeat 3 --max-events 0

For each offered rate a producer *process* publishes contract-shaped events from the
generator (token bucket, :func:`produce`; each event's ``timestamp`` is set when it is
sent, so it counts in the one-hour window) while this process runs one
:class:`StreamConsumer` (``consume_once`` in a loop) into a fresh local lakehouse, with the
``on_batch`` of ``hybrid-pipeline stream`` (less its Dagster materialization report, at most
one per 30 s): :func:`push_streaming_features` merges every committed micro-batch into
``events_1h``/``revenue_1h`` in the online store
(``--online``: ``sqlite``, the default setting, or a ``redis://`` URL).

* ``ingest/s``: events committed to Delta / (last commit - first publish).
* ``commit p50/p99``: publish -> committed in Delta, every event: the commit's wall time
  (taken right after ``write_deltalake`` returns) minus the entry id's timestamp (Redis
  assigns it at XADD; same machine, same clock). Millisecond resolution.
* ``online p50/p99/max``: publish -> the event is visible in the online store, for a sample
  of events (``--samples``, evenly spaced), seen by an independent *reader process* that
  polls through the serving API's read path (``CombinedReader`` over the store's
  ``OnlineReader``, as ``hybrid-pipeline serve`` builds it) every ``--poll-ms``. Event i of
  user u is visible once the ``events_1h`` served for u reaches the number of u's events
  among the first i+1 published (users are unique to the run, counts only grow during it).
  The reader's poll interval bounds the resolution.
* ``push ms``: mean time of the online push per micro-batch (inside the consumer loop).
* ``--full-window``: users start with the record of a full hour (59 minute buckets, 50
  batch ids), as active users have in steady state; a short run otherwise merges into
  nearly empty records.
* ``max``: the stream is pre-filled (``rate=None``), then drained; ingest/s = events /
  drain time (the consumer's ceiling, online push included; no latency to speak of there).

Before the clock starts, 50 warm-up events (their own users) are published and consumed:
the first batch creates the tables and pays the imports of the push, which a running
consumer has behind it. Every scenario checks that bronze holds exactly the events
published, nothing is pending,
and every sampled event became visible online. Streams are named ``bench:stream:<uuid>``
and deleted afterwards; the run's online records are deleted too (Redis) or live in the
temporary feature repo (SQLite).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402

from hybrid_pipeline.lakehouse import Lakehouse  # noqa: E402
from hybrid_pipeline.settings import Settings  # noqa: E402
from hybrid_pipeline.sources.generator import EventGenerator, GeneratorConfig  # noqa: E402
from hybrid_pipeline.sources.stream import StreamConsumer, produce, publish_ms_of_line_number  # noqa: E402

SERVED_VIEW = "user_features"  # the view `hybrid-pipeline serve` answers, streaming features merged in
WARMUP_EVENTS = 50


def make_events(n: int, token: str, seed: int = 1) -> list[dict]:
    cfg = GeneratorConfig(days=1, events_per_day=n, seed=seed, dirty_rate=0.0, start_date=date(2024, 1, 1))
    events = next(EventGenerator(cfg).days()).events.to_dicts()
    for e in events:  # users of this run alone: nothing else writes their online records
        e["user_id"] = f"bench{token}-{e['user_id']}"
    return events


def stamped(events: list[dict]):  # noqa: ANN201
    """The events, each timestamped as it is handed to the producer (just before XADD)."""
    for e in events:
        yield {**e, "timestamp": datetime.now(timezone.utc).isoformat()}


def _producer(redis_url: str, stream: str, n: int, token: str, rate: float | None, ready, go, out) -> None:
    events = make_events(n, token)
    ready.set()
    go.wait()
    t0 = time.perf_counter()
    out["sent"] = produce(redis_url, stream, stamped(events), rate=rate)
    out["seconds"] = time.perf_counter() - t0


def bench_settings(root: Path, online: str) -> Settings:
    return Settings.from_env({
        "HYBRID_LAKEHOUSE_ROOT": str(root / "lakehouse"),
        "HYBRID_FEATURE_REPO": str(root / "feature_repo"),
        "HYBRID_ONLINE_STORE": online,
        "DAGSTER_HOME": str(root / "dagster_home"),
    })


def _reader(repo_dir: str, online: str, users: list[str], counts: list[int], poll_ms: float,
            ready, go, stop, out) -> None:
    """Independent reader: when does each sampled event become visible through the serving read path?"""
    from hybrid_pipeline.dagster_support.resources import FeatureStoreResource
    from hybrid_pipeline.features.streaming import CombinedReader

    reader = CombinedReader(FeatureStoreResource(repo_dir=repo_dir, online_store=online).reader())
    seen = [0.0] * len(users)
    window = 64
    polls = 0
    reader.get(SERVED_VIEW, users[:window])  # connect, warm up
    ready.set()
    go.wait()
    i = 0
    try:
        while i < len(users) and not stop.is_set():
            ids = users[i : i + window]
            records = reader.get(SERVED_VIEW, ids)
            now = time.time()
            polls += 1
            # Visibility is in stream order (batches commit in order): advance over the visible prefix.
            for rec, need in zip(records, counts[i : i + window]):
                if rec is None or (rec.get("events_1h") or 0) < need:
                    break
                seen[i] = now
                i += 1
            else:
                continue  # the whole window was visible: poll the next one at once
            time.sleep(poll_ms / 1000)
    finally:
        reader.close()
        out["visible_s"] = seen
        out["visible"] = i
        out["polls"] = polls


def samples_of(events: list[dict], k: int) -> tuple[list[int], list[str], list[int]]:
    """Every k-th event (and the last): index, user, and that user's event count up to it."""
    running: dict[str, int] = {}
    idx, users, counts = [], [], []
    last = len(events) - 1
    for i, e in enumerate(events):
        u = e["user_id"]
        running[u] = running.get(u, 0) + 1
        if i % k == 0 or i == last:
            idx.append(i)
            users.append(u)
            counts.append(running[u])
    return idx, users, counts


def fill_window(settings: Settings, users: set[str]) -> None:
    """Give every user of the run the online record of an hour of streaming: 59 minute buckets
    (with 0 events, so the counts the reader waits for stay those of this run) and 50 merged
    batch ids, built by the merge itself (so in the form it stores)."""
    from hybrid_pipeline.dagster_support.resources import FeatureStoreResource
    from hybrid_pipeline.features.streaming import VIEW, merge_window

    now = datetime.now(timezone.utc)
    minute = int(now.timestamp() // 60)
    record = merge_window(None, {m: (0, 0.0) for m in range(minute - 59, minute)}, now)
    for _ in range(50):
        record = merge_window(record, {}, now, batch_id=uuid.uuid4().hex + uuid.uuid4().hex)
    writer = FeatureStoreResource(repo_dir=str(settings.feature_repo_dir), online_store=settings.online_store.url).writer()
    try:
        writer.write_records(VIEW, [(u, record, now, None) for u in sorted(users)])
    finally:
        writer.close()


def _delete_online_records(settings: Settings, users: set[str]) -> None:
    from hybrid_pipeline.dagster_support.resources import FeatureStoreResource
    from hybrid_pipeline.features.streaming import VIEW
    from hybrid_pipeline.online import RedisBackend

    writer = FeatureStoreResource(repo_dir=str(settings.feature_repo_dir), online_store=settings.online_store.url).writer()
    try:
        if isinstance(writer.backend, RedisBackend):
            key = writer.backend.hash_key(writer.table(VIEW))
            client = redis.Redis.from_url(settings.online_store.url)
            ids = sorted(users)
            for start in range(0, len(ids), 5000):
                client.hdel(key, *ids[start : start + 5000])
            client.close()
    finally:
        writer.close()


def run_scenario(args, root: Path, label: str, rate: float | None, n: int) -> dict:
    from hybrid_pipeline.defs.streaming.sensors import push_streaming_features

    client = redis.Redis.from_url(args.redis_url)
    stream = f"bench:stream:{uuid.uuid4().hex}"
    token = uuid.uuid4().hex[:8]
    run_root = root / f"{label}-{token}"
    (run_root / "feature_repo" / "data").mkdir(parents=True, exist_ok=True)
    settings = bench_settings(run_root, args.online)
    lakehouse = Lakehouse(settings.lakehouse_root)
    online = not args.no_online
    line_numbers: list[np.ndarray] = []
    push_s: list[float] = []

    def on_batch(rows) -> None:  # noqa: ANN001 - what `hybrid-pipeline stream` does, timed
        line_numbers.append(rows["line_number"].to_numpy())
        if online:
            t0 = time.perf_counter()
            push_streaming_features(rows, settings, batch_id=rows["file_sha256"][0] if rows.height else None)
            push_s.append(time.perf_counter() - t0)

    consumer = StreamConsumer(
        args.redis_url, stream, "bronze", "bench", lakehouse,
        batch_size=args.batch_size, block_ms=args.block_ms, linger_ms=args.linger_ms, on_batch=on_batch,
    )
    consumer.ensure_group()
    # Warm-up, not measured: the first batch creates bronze/events and the online table and
    # pays the imports of the push; a running deployment has all of that behind it.
    warm_events = make_events(WARMUP_EVENTS, token + "w", seed=2)  # users of their own
    produce(args.redis_url, stream, stamped(warm_events))
    warm_rows = 0
    while warm_rows < WARMUP_EVENTS:
        warm_rows += consumer.consume_once().rows
    line_numbers.clear()
    push_s.clear()
    prefilled = rate is None
    events = make_events(n, token)
    if online and args.full_window:
        fill_window(settings, {e["user_id"] for e in events})
    sample_idx, sample_users, sample_counts = samples_of(events, max(1, n // args.samples))
    # spawn, not fork: a forked child of a process whose polars/delta-rs thread pools are
    # running can deadlock.
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    out, rout = manager.dict(), manager.dict()
    ready, go, rready, stop = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_producer, args=(args.redis_url, stream, n, token, rate, ready, go, out))
    proc.start()
    rproc = None
    if online and not prefilled:
        rproc = ctx.Process(target=_reader, args=(str(settings.feature_repo_dir), args.online, sample_users,
                                                 sample_counts, args.poll_ms, rready, go, stop, rout))
        rproc.start()
        rready.wait()
    ready.wait()
    if prefilled:  # max rate: fill the stream first, then time the drain alone
        go.set()
        proc.join()

    commit_lat: list[np.ndarray] = []
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
            publish_ms = publish_ms_of_line_number(line_numbers[-1]).astype(np.float64)
            if first_publish_ms is None:
                first_publish_ms = float(publish_ms[0])
            commit_lat.append(commit_ms - publish_ms)
            last_commit_ms = commit_ms
            rows += result.rows
            commits += 1
        t_end = time.time()
        proc.join()
        if rproc is not None:
            rproc.join(timeout=30)
            if rproc.is_alive():
                stop.set()
                rproc.join()
        bronze_rows = lakehouse.read("bronze/events").height
        pending = int(client.xpending(stream, "bronze")["pending"])
        out, rout = dict(out), dict(rout)
        assert bronze_rows - WARMUP_EVENTS == n == out["sent"], (bronze_rows, n, out)
        assert pending == 0, pending
        if rproc is not None:
            assert rout["visible"] == len(sample_users), f"{label}: {rout['visible']}/{len(sample_users)} samples visible"
    finally:
        stop.set()
        consumer.close()
        client.delete(stream)
        client.close()
        manager.shutdown()
        if online:
            _delete_online_records(settings, {e["user_id"] for e in events + warm_events})

    publish_all = publish_ms_of_line_number(np.concatenate(line_numbers)).astype(np.float64)
    assert publish_all.size == n
    lat = np.concatenate(commit_lat)
    if prefilled:
        ingest_rate = n / (t_end - t_start)
    else:
        ingest_rate = n / ((last_commit_ms - first_publish_ms) / 1000)
    result = {
        "scenario": label,
        "offered/s": "max" if rate is None else f"{rate:,.0f}",
        "published/s": f"{out['sent'] / out['seconds']:,.0f}",
        "events": f"{n:,}",
        "ingest/s": f"{ingest_rate:,.0f}",
        "commits": f"{commits:,}",
        "rows/commit": f"{n / commits:,.0f}",
        "push ms": f"{1000 * statistics.fmean(push_s):.1f}" if push_s else "-",
        "commit p50": "-" if prefilled else f"{np.percentile(lat, 50):.0f}",
        "commit p99": "-" if prefilled else f"{np.percentile(lat, 99):.0f}",
        "online p50": "-",
        "online p99": "-",
        "online max": "-",
        "samples": "-",
    }
    if rproc is not None:
        visible_ms = np.asarray(rout["visible_s"], dtype=np.float64) * 1000
        online_lat = visible_ms - publish_all[np.asarray(sample_idx)]
        result.update({
            "online p50": f"{np.percentile(online_lat, 50):.0f}",
            "online p99": f"{np.percentile(online_lat, 99):.0f}",
            "online max": f"{online_lat.max():.0f}",
            "samples": f"{len(sample_idx):,}",
        })
    return result


def print_table(rows: list[dict]) -> None:
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.rjust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).rjust(width[c]) for c in cols))


def medians(rows: list[dict]) -> list[dict]:
    """One row per scenario: the median of each numeric column over the repeats."""
    out = []
    for label in dict.fromkeys(r["scenario"] for r in rows):
        runs = [r for r in rows if r["scenario"] == label]
        merged = {}
        for col, value in runs[0].items():
            try:
                merged[col] = f"{statistics.median(float(r[col].replace(',', '')) for r in runs):,.0f}"
                if col == "push ms":
                    merged[col] = f"{statistics.median(float(r[col]) for r in runs):.1f}"
            except (ValueError, AttributeError):
                merged[col] = value
        merged["scenario"] = f"{label} (median of {len(runs)})"
        out.append(merged)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--online", default="sqlite", help="online store: sqlite (default setting) or redis://...")
    parser.add_argument("--no-online", action="store_true", help="no online push (publish -> Delta commit only)")
    parser.add_argument("--rates", type=float, nargs="*", default=[1000.0, 5000.0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per offered rate")
    parser.add_argument("--repeat", type=int, default=1, help="runs per offered rate (medians are printed too)")
    parser.add_argument("--max-events", type=int, default=200_000, help="events for the max-rate drain (0 = skip)")
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--block-ms", type=int, default=100)
    parser.add_argument("--linger-ms", type=int, default=0)
    parser.add_argument("--full-window", action="store_true",
                        help="start every user with an hour of (empty) minute buckets and 50 batch ids, as in steady state")
    parser.add_argument("--samples", type=int, default=2000, help="events per run whose online visibility is timed")
    parser.add_argument("--poll-ms", type=float, default=2.0, help="reader's pause between polls")
    parser.add_argument("--root", help="working folder (default: a temporary one, removed afterwards)")
    args = parser.parse_args()

    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="stream-bench-"))
    load_before = os.getloadavg()
    results = []
    try:
        for rate in args.rates:
            for _ in range(args.repeat):
                results.append(run_scenario(args, root, f"rate-{rate:.0f}", rate, int(rate * args.duration)))
                print(f"done: {results[-1]}  (load {os.getloadavg()[0]:.2f})", flush=True)
        if args.max_events:
            results.append(run_scenario(args, root, "max-drain", None, args.max_events))
            print(f"done: {results[-1]}", flush=True)
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    load_after = os.getloadavg()
    print(
        f"\nbatch_size={args.batch_size} block_ms={args.block_ms} linger_ms={args.linger_ms} "
        f"online={'off' if args.no_online else args.online} poll_ms={args.poll_ms} "
        f"full_window={args.full_window}; one Delta commit per "
        "micro-batch, XACK after commit, then the online push; local filesystem lakehouse"
    )
    print(f"load average (1/5/15 min) before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} on {os.cpu_count()} CPUs\n")
    print_table(results)
    if args.repeat > 1:
        print()
        print_table(medians(results))


if __name__ == "__main__":
    main()
