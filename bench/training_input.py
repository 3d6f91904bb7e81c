"""Benchmark: training input throughput, Delta -> float32 tensors, against the raw parquet floor.

Why: the training loop should be fed at close to the speed of reading the
bytes; this shows how close :func:`hybrid_pipeline.ml.tabular.iter_delta_batches`
(Delta snapshot at a pinned version -> pyarrow dataset -> record batches re-cut
to ``--batch-rows`` -> numpy -> torch) gets to the floor, which reads *the same
parquet files* with ``pyarrow.parquet.read_table`` and copies each column once
into a row-major float32 matrix wrapped by ``torch.from_numpy``. Target: the
Delta stream at >= 80% of the floor's rows/s.

    python bench/training_input.py                       # 2,000,000 rows x 20 features, 3 runs
    python bench/training_input.py --rows 200000 --epochs 1

Stages, each run ``--runs`` times interleaved (page cache warm for all; the
data were just written), median reported:
``floor`` = read_table(files) -> numpy -> torch (whole table, one copy);
``floor_stream`` = ParquetFile.iter_batches(``--batch-rows``) -> numpy -> torch, per chunk
(the same chunked shape as the Delta stream, without the Delta log or re-cutting);
``delta_stream`` = iter_delta_batches at the pinned version, every chunk materialised;
``delta_full`` = load_tensors (the small-table path, whole table at once).
Then the purchase MLP trains ``--epochs`` epochs from a DeltaTensorSource on
CPU (I/O included) and the seconds per epoch are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from deltalake import DeltaTable, write_deltalake  # noqa: E402

from hybrid_pipeline.ml.purchase_model import PurchaseTrainConfig, train_purchase_model  # noqa: E402
from hybrid_pipeline.ml.tabular import DeltaTensorSource, iter_delta_batches, load_tensors  # noqa: E402


def generate(uri: str, rows: int, features: int, seed: int = 0, chunk: int = 500_000) -> list[str]:
    """Write a Delta table of ``features`` float32 columns + a 0/1 label with a learnable signal."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=features) / np.sqrt(features)

    def batches():
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            X = rng.normal(size=(n, features)).astype(np.float32)
            p = 1.0 / (1.0 + np.exp(-(X @ weights * 2.0 - 0.5)))
            y = (rng.uniform(size=n) < p).astype(np.float32)
            cols = {f"f{j:02d}": X[:, j] for j in range(features)}
            cols["label"] = y
            yield pa.RecordBatch.from_pydict(cols)

    schema = pa.schema([(f"f{j:02d}", pa.float32()) for j in range(features)] + [("label", pa.float32())])
    write_deltalake(uri, pa.RecordBatchReader.from_batches(schema, batches()), mode="overwrite")
    return DeltaTable(uri).file_uris()


def floor_read(files: list[str], cols: list[str], label: str) -> tuple[torch.Tensor, torch.Tensor]:
    table = pq.read_table(files, columns=cols + [label])
    n = table.num_rows
    X = np.empty((n, len(cols)), dtype=np.float32)
    for j, c in enumerate(cols):
        start = 0
        for chunk in table.column(c).chunks:
            stop = start + len(chunk)
            X[start:stop, j] = chunk.to_numpy(zero_copy_only=False)
            start = stop
    y = np.empty(n, dtype=np.float32)
    y[:] = table.column(label).to_numpy()
    return torch.from_numpy(X), torch.from_numpy(y)


def floor_stream(files: list[str], cols: list[str], label: str, batch_rows: int) -> int:
    """The streaming floor: parquet record batches of ``batch_rows`` straight from the files -> torch."""
    rows = 0
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=cols + [label]):
            X = np.empty((batch.num_rows, len(cols)), dtype=np.float32)
            for j, c in enumerate(cols):
                X[:, j] = batch.column(c).to_numpy(zero_copy_only=False)
            y = np.empty(batch.num_rows, dtype=np.float32)
            y[:] = batch.column(label).to_numpy(zero_copy_only=False)
            Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
            assert Xt.shape[0] == yt.shape[0]
            rows += Xt.shape[0]
    return rows


def delta_stream(uri: str, version: int, cols: list[str], label: str, batch_rows: int) -> int:
    rows = 0
    for b in iter_delta_batches(uri, cols, label, version=version, batch_rows=batch_rows):
        rows += b.X.shape[0]
    return rows


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-rows", type=int, default=65_536)
    ap.add_argument("--epochs", type=int, default=2, help="MLP epochs to time (0 to skip)")
    ap.add_argument("--train-batch-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads for the MLP (default: torch's)")
    ap.add_argument("--dir", help="work folder (default: a temp folder, removed after)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-training-input-") as tmp:
        root = Path(args.dir) if args.dir else Path(tmp)
        uri = str(root / "delta" / "training")
        cols = [f"f{j:02d}" for j in range(args.features)]
        t_gen, files = timed(lambda: generate(uri, args.rows, args.features))
        version = DeltaTable(uri).version()
        size = sum(os.path.getsize(f) for f in files)
        print(f"table: {args.rows:,} rows x {args.features} float32 features + label, {len(files)} file(s), "
              f"{size / 2**20:.1f} MiB parquet, version {version} (written in {t_gen:.1f}s)")
        print(f"torch {torch.__version__} threads={torch.get_num_threads()}  pyarrow {pa.__version__}  "
              f"cpus={os.cpu_count()}")

        times: dict[str, list[float]] = {"floor": [], "floor_stream": [], "delta_stream": [], "delta_full": []}
        for run in range(args.runs):
            t, (X, _) = timed(lambda: floor_read(files, cols, "label"))
            assert X.shape == (args.rows, args.features)
            times["floor"].append(t)
            del X
            t, n = timed(lambda: floor_stream(files, cols, "label", args.batch_rows))
            assert n == args.rows
            times["floor_stream"].append(t)
            t, n = timed(lambda: delta_stream(uri, version, cols, "label", args.batch_rows))
            assert n == args.rows
            times["delta_stream"].append(t)
            t, tb = timed(lambda: load_tensors(uri, cols, "label", version=version))
            assert tb.X.shape == (args.rows, args.features)
            times["delta_full"].append(t)
            del tb
            print(f"  run {run + 1}: " + "  ".join(f"{k}={v[-1]:.3f}s" for k, v in times.items()))

        med = {k: statistics.median(v) for k, v in times.items()}
        rate = {k: args.rows / v for k, v in med.items()}
        print(f"\n{'stage':<14}{'median s':>10}{'rows/s':>14}{'MB/s (f32)':>12}{'vs floor':>10}")
        for k in times:
            mbs = args.rows * (args.features + 1) * 4 / med[k] / 1e6
            print(f"{k:<14}{med[k]:>10.3f}{rate[k]:>14,.0f}{mbs:>12.0f}{rate[k] / rate['floor']:>9.0%}")
        ratio = rate["delta_stream"] / rate["floor"]
        ratio_stream = rate["delta_stream"] / rate["floor_stream"]
        print(f"\ndelta_stream / floor = {ratio:.1%} (target >= 80%): {'OK' if ratio >= 0.8 else 'BELOW TARGET'}")
        print(f"delta_stream / floor_stream = {ratio_stream:.1%} (same chunking, no Delta log or re-cutting)")

        result: dict[str, object] = {
            "rows": args.rows, "features": args.features, "runs": args.runs, "batch_rows": args.batch_rows,
            "files": len(files), "parquet_mib": size / 2**20, "median_seconds": med, "rows_per_second": rate,
            "stream_vs_floor": ratio, "stream_vs_floor_stream": ratio_stream,
        }
        if args.epochs > 0:
            rng = np.random.default_rng(1)
            valid = load_tensors(uri, cols, "label", version=version)
            assert valid.y is not None
            idx = torch.from_numpy(rng.choice(args.rows, size=min(50_000, args.rows), replace=False))
            valid_xy = (valid.X[idx].clone(), valid.y[idx].clone())
            del valid
            source = DeltaTensorSource(uri, cols, "label", version=version, batch_rows=args.batch_rows)
            cfg = PurchaseTrainConfig(hidden_sizes=(64, 32), batch_size=args.train_batch_size,
                                      max_epochs=args.epochs, patience=args.epochs + 1, device="cpu",
                                      num_threads=args.threads)
            res = train_purchase_model(source, valid_xy, cfg)
            per_epoch = [e.seconds for e in res.loss_curve]
            io_share = med["delta_stream"] / statistics.median(per_epoch)
            print(f"\nMLP {cfg.hidden_sizes} batch {cfg.batch_size} on {res.device} "
                  f"({args.threads or torch.get_num_threads()} thread(s)): "
                  f"{statistics.median(per_epoch):.2f}s/epoch (median of {len(per_epoch)}: "
                  f"{', '.join(f'{s:.2f}' for s in per_epoch)}), "
                  f"{args.rows / statistics.median(per_epoch):,.0f} rows/s, input share ~{io_share:.0%}, "
                  f"standardisation pass {res.metrics['standardize_seconds']:.2f}s, "
                  f"AUC {res.metrics['valid_auc']:.3f} on 50k training rows (sanity only), {res.n_params} params")
            result["mlp"] = {"seconds_per_epoch": per_epoch, "device": res.device, "n_params": res.n_params,
                             "batch_size": cfg.batch_size, "valid_auc": res.metrics["valid_auc"],
                             "standardize_seconds": res.metrics["standardize_seconds"]}
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
