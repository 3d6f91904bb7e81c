"""Online lookup and materialization benchmark: our packed store vs Feast's stock stores.

Populates N entities x F features (default 100k x 20: 12 Float64, 4 Int64, 2 String,
2 Array(String)) and measures

* lookup latency p50/p99 for 1 and 100 entities per request, sequential requests:
  - in process, ``OnlineReader.get`` (our store, SQLite and Redis);
  - over HTTP: the serving app under uvicorn in a subprocess on 127.0.0.1, httpx client
    with keep-alive (``GET /features/{id}`` for 1, ``POST /features`` for 100);
  - through Feast's ``FeatureStore.get_online_features``: Feast's stock ``sqlite`` and
    ``redis`` online stores, and ours, on the same data;
* materialization rows/s: ``OnlineWriter.write_frame`` (polars, direct) and Feast's
  ``write_to_online_store`` into ours and into the stock stores.

Each latency figure is the median over ``--reps`` rounds of ``--queries`` requests (after a
warm-up and ``gc.freeze()``, as the server does at start-up); each write figure the median
over ``--write-reps`` loads into an empty store (Feast's writes: one load, timed once).

    python bench/online_lookup.py                     # 100k x 20, Redis at 127.0.0.1:6379/0
    python bench/online_lookup.py --n 20000 --reps 3 --no-redis

Redis keys live under a unique prefix/project and are deleted at the end (never a flush).
Targets: in-process p99 < 1 ms and HTTP p99 < 3 ms for one entity.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

import polars as pl  # noqa: E402

from hybrid_pipeline.online import OnlineReader, OnlineWriter, online_store_block  # noqa: E402

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
PROJECT = f"bench_{uuid.uuid4().hex[:8]}"
VIEW = "user_features"


# --------------------------------------------------------------------------- data


def make_frame(n: int, n_features: int, seed: int = 1) -> tuple[pl.DataFrame, dict[str, str]]:
    rng = random.Random(seed)
    kinds = (["Float64"] * 12 + ["Int64"] * 4 + ["String"] * 2 + ["Array(String)"] * 2)
    kinds = (kinds * (n_features // len(kinds) + 1))[:n_features]
    spec: dict[str, str] = {}
    data: dict[str, Any] = {
        "user_id": [f"u{i}" for i in range(n)],
        "event_timestamp": [T0 + timedelta(seconds=rng.randrange(86_400)) for _ in range(n)],
    }
    for j, kind in enumerate(kinds):
        name = f"f{j:02d}_{kind.lower().replace('array(string)', 'tags')}"
        spec[name] = kind
        if kind == "Float64":
            data[name] = [rng.random() * 100 for _ in range(n)]
        elif kind == "Int64":
            data[name] = [rng.randrange(1_000_000) for _ in range(n)]
        elif kind == "String":
            data[name] = [rng.choice(["new", "casual", "power", "churned"]) + str(rng.randrange(100)) for _ in range(n)]
        else:
            data[name] = [[f"p{rng.randrange(10_000)}" for _ in range(3)] for _ in range(n)]
    frame = pl.DataFrame(data, schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")})
    return frame, spec


# --------------------------------------------------------------------------- timing


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def measure(call: Callable[[list[str]], Any], users: list[str], k: int, queries: int, reps: int,
            warmup: int = 100, seed: int = 7) -> dict[str, float]:
    """Median over ``reps`` rounds of the per-round p50/p99 (ms) of ``call(ids)``."""
    rng = random.Random(seed)
    batches = [[rng.choice(users) for _ in range(k)] for _ in range(queries)]
    for ids in batches[:warmup]:
        call(ids)
    gc.collect()
    gc.freeze()  # as a serving process does after start-up: set-up garbage out of the collector's way
    p50s, p99s, means = [], [], []
    for _ in range(reps):
        samples = []
        for ids in batches:
            start = time.perf_counter_ns()
            call(ids)
            samples.append((time.perf_counter_ns() - start) / 1e6)
        samples.sort()
        p50s.append(percentile(samples, 0.50))
        p99s.append(percentile(samples, 0.99))
        means.append(statistics.fmean(samples))
    return {"p50_ms": statistics.median(p50s), "p99_ms": statistics.median(p99s),
            "mean_ms": statistics.median(means), "queries": queries, "reps": reps}


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m hybrid_pipeline.serving`` in a subprocess."""

    def __init__(self, url: str, key_prefix: str):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hybrid_pipeline.serving", "--url", url, "--key-prefix", key_prefix,
             "--project", PROJECT, "--view", VIEW, "--port", str(self.port)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=str(ROOT), HYBRID_SERVING_API_KEY=""),
        )

    def __enter__(self):
        import httpx

        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.client.get("/health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)

    def get(self, ids: list[str]):
        if len(ids) == 1:
            r = self.client.get(f"/features/{ids[0]}")
        else:
            r = self.client.post("/features", json={"user_ids": ids})
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        return r

    def __exit__(self, *exc):
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)


# --------------------------------------------------------------------------- Feast


def feast_repo(root: Path, delta_uri: str, spec: dict[str, str], online: dict[str, Any], name: str):
    from hybrid_pipeline.features.repo import FeatureTableSpec, apply_feature_repo, write_feature_repo

    table = FeatureTableSpec(name=VIEW, delta_uri=delta_uri, entity_key="user_id",
                             timestamp_field="event_timestamp", features=spec)
    repo = write_feature_repo(root / name, PROJECT, [table], online)
    return apply_feature_repo(repo)


def redis_cleanup(url: str, patterns: list[str]) -> int:
    import redis

    client = redis.Redis.from_url(url)
    n = 0
    for pattern in patterns:
        keys = list(client.scan_iter(match=pattern, count=5000))
        for start in range(0, len(keys), 5000):
            client.unlink(*keys[start:start + 5000])
        n += len(keys)
    client.close()
    return n


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="entities")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5, help="rounds per latency figure (median reported)")
    parser.add_argument("--queries", type=int, default=2000, help="requests per round (1 entity)")
    parser.add_argument("--write-reps", type=int, default=3, help="loads per direct-write figure")
    parser.add_argument("--feast-write-rows", type=int, default=None,
                        help="rows per Feast write_to_online_store timing (default: all N)")
    parser.add_argument("--redis-url", default=os.environ.get("HYBRID_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--no-feast", action="store_true")
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    q1 = args.queries
    q100 = max(50, args.queries // 4)
    qf1 = max(50, args.queries // 4)  # Feast calls are slower; fewer of them
    qf100 = max(30, args.queries // 10)
    backends = ["sqlite"] + ([] if args.no_redis else ["redis"])

    work = Path(tempfile.mkdtemp(prefix="online_bench_"))
    prefix = f"hybrid-bench-{uuid.uuid4().hex[:8]}"
    lookups: list[dict[str, Any]] = []
    writes: list[dict[str, Any]] = []
    feast_stores = []
    t_start = time.perf_counter()
    try:
        frame, spec = make_frame(args.n, args.features)
        users = frame["user_id"].to_list()
        print(f"data: {args.n} entities x {len(spec)} features; work dir {work}", flush=True)

        def url_for(backend: str, tag: str) -> str:
            return f"sqlite://{work / f'ours_{tag}.db'}" if backend == "sqlite" else args.redis_url

        # ---- ours, direct write (fresh store per rep), then in-process and HTTP lookups
        for backend in backends:
            secs = []
            for rep in range(args.write_reps):
                tag = f"w{rep}"
                writer = OnlineWriter.from_url(url_for(backend, tag), PROJECT, key_prefix=f"{prefix}-{tag}")
                secs.append(timed(lambda: writer.write_frame(VIEW, frame, "user_id", "event_timestamp")))
                writer.close()
                if backend == "redis":
                    redis_cleanup(args.redis_url, [f"{prefix}-{tag}:*"])
            writes.append({"writer": "ours write_frame (polars, direct)", "store": f"ours/{backend}",
                           "rows": args.n, "seconds": statistics.median(secs),
                           "rows_per_s": args.n / statistics.median(secs)})
            print(f"  write ours/{backend}: {args.n / statistics.median(secs):,.0f} rows/s", flush=True)

            url = url_for(backend, "main")
            with OnlineWriter.from_url(url, PROJECT, key_prefix=prefix) as writer:
                writer.write_frame(VIEW, frame, "user_id", "event_timestamp")
            with OnlineReader.from_url(url, PROJECT, key_prefix=prefix) as reader:
                assert reader.get(VIEW, [users[0]])[0] is not None
                for k, q in ((1, q1), (100, q100)):
                    m = measure(lambda ids: reader.get(VIEW, ids), users, k, q, args.reps)
                    lookups.append({"path": "in-process OnlineReader.get", "store": f"ours/{backend}", "k": k, **m})
                    print(f"  in-process ours/{backend} k={k}: p50 {m['p50_ms']:.3f} ms p99 {m['p99_ms']:.3f} ms",
                          flush=True)
            if not args.no_http:
                with Server(url, prefix) as server:
                    for k, q in ((1, q1), (100, q100)):
                        m = measure(server.get, users, k, q, args.reps)
                        lookups.append({"path": "HTTP (uvicorn, keep-alive)", "store": f"ours/{backend}", "k": k, **m})
                        print(f"  HTTP ours/{backend} k={k}: p50 {m['p50_ms']:.3f} ms p99 {m['p99_ms']:.3f} ms",
                              flush=True)
            if backend == "redis":
                redis_cleanup(args.redis_url, [f"{prefix}:*"])

        # ---- Feast: stock stores and ours, through write_to_online_store / get_online_features
        if not args.no_feast:
            t_import = time.perf_counter()
            import feast  # noqa: F401  (seconds; timed apart)

            print(f"feast imported in {time.perf_counter() - t_import:.1f} s", flush=True)
            delta_uri = str(work / "lake" / VIEW)
            frame.write_delta(delta_uri)
            feast_rows = min(args.n, args.feast_write_rows or args.n)
            pdf = frame.to_pandas()
            configs = []
            for backend in backends:
                if backend == "sqlite":
                    configs.append(("feast stock sqlite", {"type": "sqlite", "path": str(work / "stock.db")}))
                    configs.append(("ours/sqlite via Feast",
                                    online_store_block(url_for("sqlite", "feast"), key_prefix=prefix)))
                else:
                    host = args.redis_url.split("://", 1)[1].split("/", 1)
                    db = host[1] if len(host) > 1 and host[1] else "0"
                    configs.append(("feast stock redis", {"type": "redis", "connection_string": f"{host[0]},db={db}"}))
                    configs.append(("ours/redis via Feast", online_store_block(args.redis_url,
                                                                               key_prefix=f"{prefix}-feast")))
            refs = [f"{VIEW}:{name}" for name in spec]
            for label, online in configs:
                store = feast_repo(work, delta_uri, spec, online, label.replace(" ", "_").replace("/", "_"))
                feast_stores.append(store)
                # write: the first feast_rows rows, timed once (Feast's conversion dominates), then the rest
                head = pdf.iloc[:feast_rows]
                feast_secs = timed(lambda: store.write_to_online_store(VIEW, head))
                writes.append({"writer": "Feast write_to_online_store", "store": label, "rows": feast_rows,
                               "seconds": feast_secs, "rows_per_s": feast_rows / feast_secs})
                print(f"  write_to_online_store {label}: {feast_rows / feast_secs:,.0f} rows/s", flush=True)
                if feast_rows < args.n:
                    store.write_to_online_store(VIEW, pdf.iloc[feast_rows:])
                check = store.get_online_features(features=refs[:1], entity_rows=[{"user_id": users[-1]}]).to_dict()
                assert check[refs[0].split(":")[1]][0] is not None, label

                def feast_get(ids, store=store):
                    return store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in ids])

                for k, q in ((1, qf1), (100, qf100)):
                    m = measure(feast_get, users, k, q, args.reps, warmup=20)
                    lookups.append({"path": "Feast get_online_features", "store": label, "k": k, **m})
                    print(f"  Feast {label} k={k}: p50 {m['p50_ms']:.3f} ms p99 {m['p99_ms']:.3f} ms", flush=True)
    finally:
        for store in feast_stores:
            try:
                store.teardown()
            except Exception as exc:  # report, keep cleaning
                print(f"teardown failed: {exc}", file=sys.stderr)
        if not args.no_redis:
            left = redis_cleanup(args.redis_url, [f"{prefix}*", f"*{PROJECT}*"])
            if left:
                print(f"(deleted {left} Redis keys that teardown left behind)")
        shutil.rmtree(work, ignore_errors=True)

    elapsed = time.perf_counter() - t_start
    print()
    print(f"Online lookups: {args.n:,} entities x {len(spec)} features; sequential requests; median of "
          f"{args.reps} rounds; {os.cpu_count()} CPUs; {elapsed:.0f} s total")
    print(f"{'path':<30} {'store':<24} {'k':>4} {'p50 ms':>9} {'p99 ms':>9} {'req':>6}")
    for r in lookups:
        print(f"{r['path']:<30} {r['store']:<24} {r['k']:>4} {r['p50_ms']:>9.3f} {r['p99_ms']:>9.3f} "
              f"{r['queries']:>6}")
    print()
    print(f"{'materialization':<38} {'store':<24} {'rows':>8} {'rows/s':>12}")
    for w in writes:
        print(f"{w['writer']:<38} {w['store']:<24} {w['rows']:>8} {w['rows_per_s']:>12,.0f}")
    one = {r["store"]: r for r in lookups if r["k"] == 1 and r["path"].startswith("in-process")}
    http = {r["store"]: r for r in lookups if r["k"] == 1 and r["path"].startswith("HTTP")}
    print()
    for store, r in one.items():
        print(f"target in-process p99 < 1 ms ({store}): {r['p99_ms']:.3f} ms -> {'met' if r['p99_ms'] < 1 else 'MISSED'}")
    for store, r in http.items():
        print(f"target HTTP p99 < 3 ms ({store}): {r['p99_ms']:.3f} ms -> {'met' if r['p99_ms'] < 3 else 'MISSED'}")
    result = {"n": args.n, "features": len(spec), "reps": args.reps, "lookups": lookups, "writes": writes,
              "seconds": elapsed}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
