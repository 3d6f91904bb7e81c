"""``POST /predict`` latency with and without on-demand (request-time) features.

Populates a SQLite online store the way the pipeline does (``user_features`` records with the real
feature columns, ``user_activity`` with each user's newest event time, streaming records for 10%
of the users), serves it with the app ``hybrid-pipeline serve`` runs (a ``CombinedReader`` over
the online store) under uvicorn in a subprocess, with a purchase MLP (the project's
``PurchaseMLP``, default sizes, seeded weights) whose input includes the on-demand features, scored
through ``ml.predictor.score``. An httpx client with keep-alive sends sequential requests:

* ``POST /predict {"user_ids": [...]}``: stored features only (the baseline);
* ``POST /predict {"user_ids": [...], "request": {"amount": ...}}``: plus the two extra lookups
  (``user_activity``, the streaming record) and ``on_demand.compute_rows``.

for 1 and 100 entities per request; and, in process (no HTTP, no model), the work a ``"request"``
adds: the two extra lookups through the ``CombinedReader`` and ``compute_rows``. Each figure is the median over ``--reps`` rounds of the
round's p50/p99 (after a warm-up and ``gc.freeze()``); the two variants' rounds alternate.

    python bench/on_demand_predict.py                    # 100k users
    python bench/on_demand_predict.py --n 20000 --reps 3
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
PROJECT = "hybrid_pipeline"
REQUEST_INPUTS = ["seconds_since_last_event", "request_hour", "amount_vs_avg_order"]


def populate(url: str, n: int, seed: int = 3) -> list[str]:
    """``n`` users' records in the three views the on-demand path reads."""
    from hybrid_pipeline.features.on_demand import ACTIVITY_VIEW, STREAMING_VIEW
    from hybrid_pipeline.online import OnlineWriter

    rng = random.Random(seed)
    users = [f"u{i:07d}" for i in range(n)]
    types = ["view", "click", "add_to_cart", "purchase"]

    def features() -> dict[str, Any]:
        purchases = rng.choice([0, 0, 1, 2, 3])
        return {"total_events": rng.randrange(1, 500), "events_1d": rng.randrange(20), "events_7d": rng.randrange(80),
                "events_30d": rng.randrange(300), "revenue_1d": rng.random() * 50, "revenue_7d": rng.random() * 200,
                "revenue_30d": rng.random() * 500 if purchases else 0.0, "purchases_30d": purchases,
                "add_to_carts_7d": rng.randrange(10), "avg_session_duration": rng.random() * 600,
                "days_since_last_purchase": rng.randrange(30) if purchases else None,
                "recent_event_types": ",".join(rng.choice(types) for _ in range(5)),
                "user_segment": rng.choice(["new", "casual", "regular", "loyal"])}

    with OnlineWriter.from_url(url, PROJECT) as writer:
        writer.write_records("user_features", [(u, features(), T0, None) for u in users])
        seen = [T0 - timedelta(seconds=rng.randrange(86_400 * 20)) for _ in users]
        writer.write_records(ACTIVITY_VIEW, [(u, {"last_event_at": t}, t, None) for u, t in zip(users, seen)])
        writer.write_records(STREAMING_VIEW, [(u, {"events_1h": 3, "revenue_1h": 0.0}, T0 + timedelta(minutes=5), None)
                                              for u in users[: n // 10]])
    return users


def serve(url: str, port: int) -> None:
    """The server process: ``pipeline_app``'s reader, a purchase MLP over the stored + on-demand features."""
    import polars as pl
    import torch

    from hybrid_pipeline.features.streaming import CombinedReader
    from hybrid_pipeline.ml import reproduce as recipe
    from hybrid_pipeline.ml.predictor import score
    from hybrid_pipeline.ml.purchase_model import PurchaseMLP
    from hybrid_pipeline.online import OnlineReader
    from hybrid_pipeline.serving import create_app
    from hybrid_pipeline.serving.server import run_server

    torch.manual_seed(0)
    spec = recipe.encoding_spec()
    spec = {**spec, "numeric": [*spec["numeric"], *REQUEST_INPUTS]}
    columns = recipe.encoded_columns(spec)
    model = PurchaseMLP(len(columns), feature_names=columns).eval()

    def predictor(rows: list[dict]) -> list[float]:
        frame = pl.DataFrame(rows, infer_schema_length=None)
        missing = [c for c in REQUEST_INPUTS if c not in frame.columns]  # no request: the model sees nulls
        frame = frame.with_columns(pl.lit(None, pl.Float64).alias(c) for c in missing)
        return score(model, spec, frame, device="cpu").tolist()

    reader = CombinedReader(OnlineReader.from_url(url, PROJECT))
    run_server(create_app(reader, "user_features", predictor=predictor), "127.0.0.1", port)


def percentile(sorted_values: list[float], q: float) -> float:
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def measure(calls: dict[str, Callable[[list[str]], Any]], users: list[str], k: int, queries: int, reps: int,
            warmup: int = 50, seed: int = 7) -> dict[str, dict[str, float]]:
    """Median over ``reps`` rounds of each call's per-round p50/p99 (ms); the calls' rounds alternate, so a
    change of load on a shared machine falls on both alike."""
    rng = random.Random(seed)
    batches = [[rng.choice(users) for _ in range(k)] for _ in range(queries)]
    for call in calls.values():
        for ids in batches[:warmup]:
            call(ids)
    gc.collect()
    gc.freeze()
    p50s: dict[str, list[float]] = {name: [] for name in calls}
    p99s: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(reps):
        for name, call in calls.items():
            samples = []
            for ids in batches:
                start = time.perf_counter_ns()
                call(ids)
                samples.append((time.perf_counter_ns() - start) / 1e6)
            samples.sort()
            p50s[name].append(percentile(samples, 0.50))
            p99s[name].append(percentile(samples, 0.99))
    return {name: {"p50_ms": statistics.median(p50s[name]), "p99_ms": statistics.median(p99s[name]),
                   "queries": queries, "reps": reps} for name in calls}


def in_process_cost(url: str, users: list[str], queries: int, reps: int) -> list[dict[str, Any]]:
    """What a ``"request"`` object adds per call, in process: the serving path's extra lookups and compute."""
    from hybrid_pipeline.features import on_demand
    from hybrid_pipeline.features.streaming import CombinedReader
    from hybrid_pipeline.online import OnlineReader

    spec = on_demand.USER_REQUEST_FEATURES
    reader = CombinedReader(OnlineReader.from_url(url, PROJECT))
    request = {"request_time": T0 + timedelta(hours=1), "amount": 42.5}

    def extra(ids: list[str]) -> Any:  # as the app does: the served view merged, the inputs read underneath
        base = reader.get_records("user_features", ids)
        activity = reader.reader.get_records(on_demand.ACTIVITY_VIEW, ids)
        stream = reader.reader.get_records(on_demand.STREAMING_VIEW, ids)
        rows = [on_demand.serving_row(spec, request, {
            "user_features": None if b is None else b.features, on_demand.ACTIVITY_VIEW: None if a is None else a.features},
            None if s is None else s.event_ts) for b, a, s in zip(base, activity, stream)]
        return on_demand.compute_rows(rows, spec)

    def lookup_only(ids: list[str]) -> Any:
        return reader.get_records("user_features", ids)

    out = []
    for k in (1, 100):
        q = queries if k == 1 else max(50, queries // 5)
        for label, m in measure({"stored lookup only": lookup_only, "lookup + on-demand": extra},
                                users, k, q, reps).items():
            out.append({"k": k, "path": f"in-process {label}", **m})
            print(f"in-process k={k:<3} {label:<20} p50 {m['p50_ms']:.3f} ms  p99 {m['p99_ms']:.3f} ms", flush=True)
    reader.close()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="users in the online store")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--queries", type=int, default=1000, help="requests per round (1 entity; 100 entities: /5)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-http", action="store_true", help="only the in-process cost")
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return {}

    import httpx

    work = Path(tempfile.mkdtemp(prefix="hp-bench-odfv-"))
    url = f"sqlite://{work / 'online.db'}"
    t = time.perf_counter()
    users = populate(url, args.n)
    print(f"populated {args.n:,} users x 3 views in {time.perf_counter() - t:.1f} s", flush=True)
    in_process = in_process_cost(url, users, args.queries, args.reps)
    if args.no_http:
        return {"n": args.n, "in_process": in_process}
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", url, "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    results: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)

        def caller(with_request: bool) -> Callable[[list[str]], Any]:
            def call(ids: list[str]) -> Any:
                body: dict[str, Any] = {"user_ids": ids}
                if with_request:
                    body["request"] = {"amount": 42.5}
                r = client.post("/predict", json=body)
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                return r
            return call

        labels = {"stored features only": False, "with request (on-demand)": True}
        for k in (1, 100):
            queries = args.queries if k == 1 else max(50, args.queries // 5)
            figures = measure({label: caller(flag) for label, flag in labels.items()}, users, k, queries, args.reps)
            for label, m in figures.items():
                results.append({"k": k, "on_demand": labels[label], **m})
                print(f"POST /predict k={k:<3} {label:<26} p50 {m['p50_ms']:.3f} ms  p99 {m['p99_ms']:.3f} ms",
                      flush=True)
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
    out = {"n": args.n, "cpu_count": os.cpu_count(), "results": results, "in_process": in_process}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
