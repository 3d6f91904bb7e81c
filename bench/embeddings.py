"""Embedding throughput and vector search latency.

* Embedding throughput on both cores (torch intra-op threads = ``--threads``):
  - chunks/s: the path ``gold/document_embeddings`` runs (:func:`embed_incrementally` with the
    token counts and the batching of the asset) against the same sentence-transformers model
    called directly in a bare loop (``model.encode(texts, batch_size=64)``: the floor);
  - images/s: the path ``gold/image_embeddings`` runs (file read, decode, embed, rows) against
    a bare loop of PIL decode + resize + numpy normalisation on the same files.
* Search, k=10, over ``--vectors`` stored 384-dimensional unit vectors (random, like the index
  the asset writes, with items): p50/p99 in process (``VectorIndex.search``; ``Searcher.search_item``
  with its filter and row assembly; with a type filter) and over HTTP (the serving app under
  uvicorn in a subprocess, ``POST /search`` by item id and by a text query, keep-alive client).
* recall@10 of the index against an exact float64 brute-force cosine ranking of the same vectors.

    python bench/embeddings.py                          # 512 chunks, 1797 images, 100k vectors
    python bench/embeddings.py --chunks 128 --vectors 20000 --queries 100

Figures are medians over ``--reps`` rounds. The machine has 2 cores and may be shared: the
load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hybrid_pipeline.media.chunking import chunk_documents  # noqa: E402
from hybrid_pipeline.media.demo import write_demo_media  # noqa: E402
from hybrid_pipeline.ml.embeddings import PixelEmbedder, TextEmbedder, default_text_model_dir  # noqa: E402
from hybrid_pipeline.ml.training import torch_threads  # noqa: E402
from hybrid_pipeline.vectors import Searcher, VectorIndex, exact_top_k  # noqa: E402
from hybrid_pipeline.vectors.build import embed_incrementally  # noqa: E402
from hybrid_pipeline.vectors.index import ITEM_COLUMNS  # noqa: E402
from hybrid_pipeline.lakehouse import catalog  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def texts_for(n: int, workdir: Path) -> list[str]:
    counts = write_demo_media(workdir / "media", seed=7, n_docs=max(40, n // 4), max_images=0)
    docs = [(p.name, p.read_text(encoding="utf-8")) for p in sorted((workdir / "media" / "docs").glob("*.txt"))]
    chunks, _ = chunk_documents(docs)
    texts = chunks["text"].to_list()
    while len(texts) < n:
        texts += [f"{t} ({len(texts)})" for t in texts[: n - len(texts)]]
    print(f"documents: {counts}", file=sys.stderr)
    return texts[:n]


def bench_text(n: int, reps: int, threads: int, workdir: Path) -> dict:
    texts = texts_for(n, workdir)
    model = TextEmbedder(default_text_model_dir(), batch_size=64)
    schema = catalog.GOLD_DOCUMENT_EMBEDDINGS.schema
    current = pl.DataFrame({"chunk_id": [f"c{i:06d}" for i in range(n)], "sha256": ["s"] * n,
                            "content_sha256": [f"h{i}" for i in range(n)], "text": texts})

    def embed(batch: pl.DataFrame):  # the asset's function
        t = batch["text"].to_list()
        tokens = model.token_counts(t)
        return model.embed(t), {"token_count": pl.Series(tokens, dtype=pl.Int64()),
                                "truncated": pl.Series([x > model.window for x in tokens])}

    pipeline, floor = [], []
    with torch_threads(threads):
        model.embed(texts[:64])  # warm-up
        for _ in range(reps):
            t0 = time.perf_counter()
            model.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                               show_progress_bar=False)
            floor.append(n / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            out, _ = embed_incrementally(current, pl.DataFrame(schema=schema), "chunk_id", model.identity, embed,
                                         schema, batch_size=256)
            pipeline.append(n / (time.perf_counter() - t0))
            assert out.height == n
    tokens = model.token_counts(texts)
    return {"chunks": n, "mean_tokens": round(float(np.mean(tokens)), 1), "pipeline_chunks_per_s": statistics.median(pipeline),
            "floor_chunks_per_s": statistics.median(floor), "ratio": statistics.median(pipeline) / statistics.median(floor),
            "runs_pipeline": pipeline, "runs_floor": floor}


def bench_images(reps: int, threads: int, workdir: Path) -> dict:
    from PIL import Image, ImageOps

    write_demo_media(workdir / "img", seed=7, n_docs=0)
    paths = sorted((workdir / "img" / "images").glob("*.png"))
    model = PixelEmbedder(16)
    schema = catalog.GOLD_IMAGE_EMBEDDINGS.schema
    current = pl.DataFrame({"sha256": [p.stem for p in paths], "content_sha256": [p.stem for p in paths],
                            "bronze_path": [str(p) for p in paths]})

    def embed(batch: pl.DataFrame):  # the asset's function, less the store-path check
        return model.embed_arrays(np.stack([model.load(p) for p in batch["bronze_path"].to_list()])), {}

    def bare() -> np.ndarray:
        out = np.empty((len(paths), 256), dtype=np.float32)
        for i, p in enumerate(paths):
            with Image.open(p) as img:
                img = ImageOps.exif_transpose(img).convert("L").resize((16, 16), Image.Resampling.BILINEAR)
                x = np.asarray(img, dtype=np.float32).ravel()
            x -= x.mean()
            out[i] = x / (np.linalg.norm(x) or 1.0)
        return out

    pipeline, floor = [], []
    with torch_threads(threads):
        for _ in range(reps):
            t0 = time.perf_counter()
            bare()
            floor.append(len(paths) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            out, _ = embed_incrementally(current, pl.DataFrame(schema=schema), "sha256", model.identity, embed, schema,
                                         batch_size=1024)
            pipeline.append(len(paths) / (time.perf_counter() - t0))
            assert out.height == len(paths)
    return {"images": len(paths), "pipeline_images_per_s": statistics.median(pipeline),
            "floor_images_per_s": statistics.median(floor), "ratio": statistics.median(pipeline) / statistics.median(floor),
            "runs_pipeline": pipeline, "runs_floor": floor}


def vector_index(n: int, dim: int, model_id: str) -> VectorIndex:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    items = pl.DataFrame({
        "id": [f"c{i:07d}" for i in range(n)], "sha256": [f"{i:064x}" for i in range(n)],
        "bronze_path": [f"{i % 256:02x}/{i:064x}.txt" for i in range(n)],
        "detected_type": ["pdf" if i % 2 else "txt" for i in range(n)],
        "landing_date": [date(2024, 1, 1) + timedelta(days=i % 60) for i in range(n)],
        "original_name": [f"doc{i}.txt" for i in range(n)], "text": [f"chunk {i}" for i in range(n)]}, schema=ITEM_COLUMNS)
    return VectorIndex("documents", model_id, v, items)


def timed(fn, queries) -> list[float]:  # noqa: ANN001
    out = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q)
        out.append(time.perf_counter() - t0)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVER = """
import sys
from hybrid_pipeline.online import OnlineReader
from hybrid_pipeline.serving.app import create_app
from hybrid_pipeline.serving.server import run_server
from hybrid_pipeline.vectors import Searcher
index_dir, db, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
searcher = Searcher(index_dir)
searcher.index("documents"); searcher.text_embedder()  # loaded before the first request, as in a warm server
run_server(create_app(OnlineReader.from_url("sqlite://" + db, "bench"), "user_features", searcher=searcher), port=port)
"""


def bench_search(n: int, queries: int, reps: int, threads: int, workdir: Path) -> dict:
    import httpx

    from hybrid_pipeline.ml.embeddings import text_model_identity

    model_id = text_model_identity(default_text_model_dir()).id
    index = vector_index(n, 384, model_id)
    index_dir = workdir / "vector_index"
    index.save(index_dir / "documents")
    searcher = Searcher(index_dir)
    rng = np.random.default_rng(1)
    qs = [rng.normal(size=384).astype(np.float32) for _ in range(queries)]
    ids = [f"c{int(i):07d}" for i in rng.integers(0, n, queries)]
    mask = index.mask(frozenset({"txt"}), date(2024, 1, 10), date(2024, 2, 10))
    res: dict = {"vectors": n, "dim": 384, "k": 10, "queries": queries}
    with torch_threads(threads):
        for name, fn, arg in (("in_process_index", lambda q: index.search(q, 10), qs),
                              ("in_process_index_filtered", lambda q: index.search(q, 10, mask), qs),
                              ("in_process_api_by_item", lambda i: searcher.search_item(i, k=10), ids)):
            rounds = [timed(fn, arg) for _ in range(reps)]
            res[name] = {"p50_ms": statistics.median(pct(r, 50) for r in rounds),
                         "p99_ms": statistics.median(pct(r, 99) for r in rounds)}
        hits = 0
        for q in qs[:100]:
            got, _ = index.search(q, 10)
            ref, _ = exact_top_k(index.vectors, q, 10)
            hits += len(set(got.tolist()) & set(ref.tolist()))
        res["recall_at_10"] = hits / (10 * min(100, len(qs)))

    db = workdir / "online.db"
    from hybrid_pipeline.online import OnlineWriter

    with OnlineWriter.from_url(f"sqlite://{db}", "bench") as w:  # an empty store: /search needs none of it
        w.write_records("user_features", [])
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(index_dir), str(db), str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(600):
                try:
                    if client.get("/health").status_code in (200, 503):
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            words = ["waterproof", "kettle", "boots", "cotton", "steel", "hiking", "warranty", "size", "battery"]
            texts = [" ".join(rng.choice(words, 6)) for _ in range(queries)]
            for name, make in (("http_by_item", lambda i: {"item_id": i, "k": 10}),
                               ("http_text_query", lambda t: {"query": t, "k": 10})):
                arg = ids if name == "http_by_item" else texts[:50]  # a forward pass each: 50 are enough for p99
                for a in arg[:20]:
                    assert client.post("/search", json=make(a)).status_code == 200
                rounds = [timed(lambda a: client.post("/search", json=make(a)).raise_for_status(), arg) for _ in range(reps)]
                res[name] = {"p50_ms": statistics.median(pct(r, 50) for r in rounds),
                             "p99_ms": statistics.median(pct(r, 99) for r in rounds)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=512)
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-embedding", action="store_true")
    args = ap.parse_args()
    result: dict = {"load_before": load(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_embedding:
            result["text"] = bench_text(args.chunks, args.reps, args.threads, work)
            result["images"] = bench_images(args.reps, args.threads, work)
        result["search"] = bench_search(args.vectors, args.queries, args.reps, args.threads, work)
    result["load_after"] = load()
    print(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
