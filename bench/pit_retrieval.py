"""Point-in-time retrieval benchmark: our Delta offline store vs Feast's stock stores.

    python bench/pit_retrieval.py --entities 100000 --feature-rows 1000000

Generates N entity rows and a feature table of M rows x F float features (default 20),
written once as a Delta table and once as plain parquet files. Then, for every engine,
runs ``FeatureStore.get_historical_features(entity_df, features).to_df()`` in a fresh
subprocess, ``--runs`` times:

* ``delta``  - hybrid_pipeline.features.delta_offline_store (delta-rs + polars) on the Delta table,
  with the table version's key index keeping the features (built once during data
  preparation, as the feature-view asset builds it after each write; its build time and
  size are reported)
* ``delta-keys`` - the same store with a key index of keys only (``key_index_features:
  false``): the winners' features are read from the table's files
* ``delta-scan`` - the same store with key indexes off: keys and timestamps scanned and sorted
* ``file``   - Feast's dask/file store on the parquet copy
* ``duckdb`` - Feast's duckdb (ibis) store on the parquet copy, if ibis/duckdb import
* ``import`` - no retrieval at all: the RSS of importing Feast and opening the store
* ``<engine>-known`` (``delta-known``, ``delta-known-keys``, ``delta-known-scan``, ``duckdb-known``,
  ``file-known``) - the same store retrieving as known at each entity row
  (``get_historical_features(..., filter_by_created_timestamp=True)``, Feast 0.67): feature rows
  created after the entity timestamp are not candidates (the generated rows are created up to
  an hour after their event timestamp). Compared with ``delta-known``; Feast's stock duckdb
  and dask stores both support the flag.

Each run goes through a small wrapper process that starts the worker and reads its peak
RSS with ``resource.getrusage(RUSAGE_CHILDREN)``, so every figure belongs to one run.
Reported: median wall time of the retrieval call (Feast import excluded), max peak RSS
over the runs, the 1-minute load average before each run (the machine may be shared), and
whether every engine returned the same rows as ``delta`` (compared after sorting by
user_id, event_timestamp; the stock stores do not keep entity order and the dask store
drops duplicate entity rows, so entity rows are generated unique).

Figures are kept in ``<workdir>/results.json``: with ``--reuse`` an invocation for some
engines adds to (or replaces) the figures of earlier ones on the same data, and the table
covers every engine measured on it, e.g. the slow stock stores once, ours after each change:

    python bench/pit_retrieval.py --engines duckdb,file --runs 3
    python bench/pit_retrieval.py --engines delta --runs 3 --reuse

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("delta", "delta-keys", "delta-scan", "file", "duckdb",
           "delta-known", "delta-known-keys", "delta-known-scan", "duckdb-known", "file-known")
INDEXED = ("delta", "delta-keys")  # engines whose key index is built during data preparation
KNOWN = "-known"  # suffix: the same store with filter_by_created_timestamp=True


def base_engine(engine: str) -> str:
    """The store an engine name runs: ``delta-known-keys`` -> ``delta-keys``."""
    return engine.replace(KNOWN, "")


def reference_of(engine: str) -> str:
    """What an engine's rows are compared with: ``delta``, or ``delta-known`` for as-known-at runs."""
    return f"delta{KNOWN}" if KNOWN in engine else "delta"
VIEW = "user_stats"
START_US = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z in microseconds
SPAN_US = 30 * 24 * 3600 * 1_000_000  # 30 days


def feature_names(n: int) -> list[str]:
    return [f"f{i:02d}" for i in range(n)]


# --------------------------------------------------------------------------- data


def generate(work: Path, n_entities: int, n_rows: int, n_features: int, n_users: int, seed: int, chunk: int) -> None:
    import numpy as np
    import polars as pl
    from deltalake import write_deltalake

    rng = np.random.default_rng(seed)
    delta_uri, parquet_dir = work / "delta" / VIEW, work / "parquet" / VIEW
    parquet_dir.mkdir(parents=True, exist_ok=True)
    names = feature_names(n_features)
    written = 0
    part = 0
    while written < n_rows:
        size = min(chunk, n_rows - written)
        ts = START_US + rng.integers(0, SPAN_US, size)
        frame = pl.DataFrame(
            {
                "user_id": rng.integers(0, n_users, size, dtype=np.int64),
                "event_timestamp": pl.Series(ts, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
                "created": pl.Series(ts + rng.integers(0, 3_600_000_000, size), dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
                **{name: rng.standard_normal(size) for name in names},
            }
        )
        table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
        write_deltalake(str(delta_uri), table, mode="append")
        import pyarrow.parquet as pq

        pq.write_table(table, parquet_dir / f"part-{part:05d}.parquet")
        written += size
        part += 1

    # entity rows: unique (user_id, event_timestamp) pairs, some users unknown to the table
    users = rng.integers(0, int(n_users * 1.05) + 1, n_entities, dtype=np.int64)
    ts = START_US + rng.integers(0, SPAN_US + 86_400_000_000, n_entities)
    entities = (
        pl.DataFrame({"user_id": users, "event_timestamp": pl.Series(ts, dtype=pl.Int64).cast(pl.Datetime("us", "UTC"))})
        .unique(["user_id", "event_timestamp"], maintain_order=True)
        .with_columns(pl.int_range(pl.len()).alias("request_id"))
    )
    entities.to_pandas().to_parquet(work / "entities.parquet")


def write_repos(work: Path, n_features: int, ttl_hours: float) -> None:
    sys.path.insert(0, str(PROJECT_ROOT))
    from datetime import timedelta

    from hybrid_pipeline.features.repo import FeatureTableSpec, write_feature_repo

    names = feature_names(n_features)
    write_feature_repo(
        work / "repo_delta",
        "bench",
        [
            FeatureTableSpec(
                name=VIEW,
                delta_uri=str(work / "delta" / VIEW),
                entity_key="user_id",
                entity_value_type="int64",
                timestamp_field="event_timestamp",
                created_timestamp_field="created",
                features={n: "Float64" for n in names},
                ttl=timedelta(hours=ttl_hours),
            )
        ],
        {"type": "sqlite", "path": str(work / "online_delta.db")},
    )
    # the same repo with a key index of keys only, and with key indexes off
    import shutil

    import yaml

    for variant, setting in (("delta-keys", "key_index_features"), ("delta-scan", "key_index")):
        repo = work / f"repo_{variant}"
        shutil.rmtree(repo, ignore_errors=True)
        shutil.copytree(work / "repo_delta", repo, ignore=shutil.ignore_patterns("data"))
        (repo / "data").mkdir()
        config = yaml.safe_load((repo / "feature_store.yaml").read_text())
        config["registry"] = str(repo / "data" / "registry.db")
        config["offline_store"][setting] = False
        (repo / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for engine, path in (("file", str(work / "parquet" / VIEW)), ("duckdb", str(work / "parquet" / VIEW / "*.parquet"))):
        repo = work / f"repo_{engine}"
        (repo / "data").mkdir(parents=True, exist_ok=True)
        (repo / "feature_store.yaml").write_text(
            json.dumps(
                {
                    "project": "bench",
                    "provider": "local",
                    "registry": str(repo / "data" / "registry.db"),
                    "offline_store": {"type": engine},
                    "online_store": {"type": "sqlite", "path": str(work / f"online_{engine}.db")},
                    "entity_key_serialization_version": 3,
                },
                indent=2,
            )
        )
        fields = "\n".join(f"        Field(name={n!r}, dtype=Float64)," for n in names)
        (repo / "feature_definitions.py").write_text(
            f"""from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float64

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
source = FileSource(name="{VIEW}_source", path={path!r}, file_format=ParquetFormat(),
                    timestamp_field="event_timestamp", created_timestamp_column="created")
{VIEW} = FeatureView(
    name={VIEW!r},
    entities=[user],
    ttl=timedelta(hours={ttl_hours!r}),
    schema=[
{fields}
    ],
    source=source,
)
"""
        )


def apply_repos(work: Path, engines: list[str]) -> None:
    """Register every repo once (in a subprocess each: Feast imports repo files by module name)."""
    env = _env()
    for engine in engines:
        repo = work / f"repo_{engine}"
        script = (
            "import importlib.util, sys\n"
            "from feast import FeatureStore, Entity, FeatureView\n"
            f"spec = importlib.util.spec_from_file_location('defs', {str(repo / 'feature_definitions.py')!r})\n"
            "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
            "objs = [o for o in vars(mod).values() if isinstance(o, (Entity, FeatureView))]\n"
            f"FeatureStore(repo_path={str(repo)!r}).apply(objs)\n"
        )
        subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=repo, capture_output=True)


def build_index(work: Path, engine: str) -> dict:
    """Build the key index of the Delta table's version for ``engine``'s repo (in a
    subprocess, like every run)."""
    script = (
        "import json\n"
        "from feast import FeatureStore\n"
        "from hybrid_pipeline.features.delta_offline_store import DeltaOfflineStore\n"
        f"store = FeatureStore(repo_path={str(work / f'repo_{engine}')!r})\n"
        f"print(json.dumps(DeltaOfflineStore.build_key_index(store.config, store.get_feature_view({VIEW!r}))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], check=True, env=_env(), capture_output=True, text=True)
    built = json.loads(proc.stdout.strip().splitlines()[-1])
    os.sync()  # the index files written: their writeback must not land inside a timed run
    print(f"{engine} key index: {built['rows']:,} rows of version {built['version']}, "
          f"{len(built['features_kept'])} features kept, {built['bytes'] / 2**20:,.0f} MiB, built in {built['seconds']:.2f}s")
    return built


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


# --------------------------------------------------------------------------- processes


def worker(engine: str, work: Path, out: Path | None, n_features: int, repeat: int = 1) -> None:
    """One retrieval (runs in its own process)."""
    import pandas as pd
    from feast import FeatureStore

    repo = work / f"repo_{'delta' if engine == 'import' else base_engine(engine)}"
    store = FeatureStore(repo_path=str(repo))
    entity_df = pd.read_parquet(work / "entities.parquet")
    refs = [f"{VIEW}:{n}" for n in feature_names(n_features)]
    known_at = {"filter_by_created_timestamp": True} if KNOWN in engine else {}
    seconds = 0.0
    rows = 0
    again: list[float] = []
    if engine != "import":
        t0 = time.perf_counter()
        df = store.get_historical_features(entity_df=entity_df, features=refs, **known_at).to_df()
        seconds = time.perf_counter() - t0
        rows = len(df)
        if out is not None:
            df.to_parquet(out)
        del df
        for _ in range(repeat - 1):  # the same retrieval again in this (now warm) process
            t0 = time.perf_counter()
            store.get_historical_features(entity_df=entity_df, features=refs, **known_at).to_df()
            again.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": seconds, "rows": rows, "again_s": again}))


def measured(engine: str, work: Path, out: Path | None, n_features: int, timeout: float, repeat: int = 1) -> None:
    """Wrapper process: runs one worker and reports its peak RSS (RUSAGE_CHILDREN)."""
    cmd = [sys.executable, __file__, "--worker", engine, "--workdir", str(work), "--features", str(n_features),
           "--repeat", str(repeat)]
    if out is not None:
        cmd += ["--out", str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        print(json.dumps({"error": f"timeout after {timeout:.0f}s"}))
        return
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    if proc.returncode != 0:
        # a worker killed from outside (e.g. by a memory watchdog) leaves no output: say how it ended
        ended = f"exit status {proc.returncode}" if proc.returncode > 0 else f"killed by signal {-proc.returncode}"
        print(json.dumps({"error": (proc.stderr or proc.stdout)[-2000:] or ended, "peak_rss_mib": peak_kib / 1024}))
        return
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["peak_rss_mib"] = peak_kib / 1024
    print(json.dumps(result))


def run_once(engine: str, work: Path, out: Path | None, n_features: int, timeout: float, repeat: int = 1) -> dict:
    cmd = [sys.executable, __file__, "--measure", engine, "--workdir", str(work), "--features", str(n_features),
           "--timeout", str(timeout), "--repeat", str(repeat)]
    if out is not None:
        cmd += ["--out", str(out)]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_before"] = round(load, 2)
    result["load_after"] = round(os.getloadavg()[0], 2)
    return result


def compare(reference: Path, other: Path, n_features: int) -> str:
    import polars as pl

    cols = ["user_id", "event_timestamp", *feature_names(n_features)]

    def norm(path: Path) -> pl.DataFrame:
        df = pl.read_parquet(path).select(cols)
        ts = df.schema["event_timestamp"]
        df = df.with_columns(
            pl.col("event_timestamp").dt.convert_time_zone("UTC") if ts.time_zone else pl.col("event_timestamp").dt.replace_time_zone("UTC")
        ).with_columns(pl.col("event_timestamp").dt.cast_time_unit("us"), pl.col("user_id").cast(pl.Int64))
        return df.with_columns(pl.col(feature_names(n_features)).fill_nan(None)).sort("user_id", "event_timestamp")

    a, b = norm(reference), norm(other)
    if a.equals(b):
        return f"identical ({a.height} rows, {a['f00'].null_count()} without features)"
    keys = ["user_id", "event_timestamp"]
    missing = a.join(b.select(keys), on=keys, how="anti")
    extra = b.join(a.select(keys), on=keys, how="anti")
    common = a.join(b.select(keys), on=keys, how="semi")
    same = common.equals(b.join(a.select(keys), on=keys, how="semi"))
    note = f"{a.height} vs {b.height} rows"
    if missing.height:
        nulls = missing["f00"].null_count()
        note += f"; {missing.height} entity rows dropped ({nulls} of them have no feature value in the reference)"
    if extra.height:
        note += f"; {extra.height} extra rows"
    return f"{'DIFFERENT' if not same else 'same values on common rows'}: {note}"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entities", type=int, default=1_000_000)
    p.add_argument("--feature-rows", type=int, default=10_000_000)
    p.add_argument("--features", type=int, default=20)
    p.add_argument("--users", type=int, default=None, help="distinct user ids (default: entities // 10)")
    p.add_argument("--ttl-hours", type=float, default=72.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/pit_bench"))
    p.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    p.add_argument("--chunk", type=int, default=1_000_000, help="rows per generated file")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--reuse", action="store_true", help="reuse data already in --workdir")
    p.add_argument("--repeat", type=int, default=1,
                   help="retrievals per process: the first is the figure, later ones are reported as 'again' (warm process)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        worker(args.worker, args.workdir, args.out, args.features, args.repeat)
        return 0
    if args.measure:
        measured(args.measure, args.workdir, args.out, args.features, args.timeout, args.repeat)
        return 0

    engines = [e for e in args.engines.split(",") if e]
    if any(base_engine(e) == "duckdb" for e in engines):
        try:
            import duckdb  # noqa: F401
            import ibis  # noqa: F401
        except ImportError:
            print("duckdb/ibis not installed: skipping the duckdb store")
            engines = [e for e in engines if base_engine(e) != "duckdb"]
    work: Path = args.workdir
    users = args.users or max(1, args.entities // 10)
    if not (args.reuse and (work / "entities.parquet").exists()):
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        t0 = time.perf_counter()
        generate(work, args.entities, args.feature_rows, args.features, users, args.seed, args.chunk)
        print(f"generated {args.entities:,} entity rows x {args.feature_rows:,} feature rows x {args.features} features "
              f"({users:,} users) in {time.perf_counter() - t0:.1f}s")
    write_repos(work, args.features, args.ttl_hours)
    stores = {base_engine(e) for e in engines}
    apply_repos(work, [e for e in ENGINES if e in stores or e == "delta"])
    index_builds = {e: build_index(work, e) for e in INDEXED if e in stores}

    results_file = work / "results.json"
    results: dict[str, dict] = json.loads(results_file.read_text()) if results_file.exists() else {}
    for engine in ["import", *engines]:
        runs = []
        for i in range(1 if engine == "import" else args.runs):
            out = work / f"result_{engine}.parquet" if engine != "import" and i == 0 else None
            r = run_once(engine, work, out, args.features, args.timeout, 1 if engine == "import" else args.repeat)
            runs.append(r)
            if "error" in r:
                print(f"{engine}: run {i + 1} failed: {r['error'][-500:]}")
                break
        ok = [r for r in runs if "error" not in r]
        results[engine] = {
            "median_s": statistics.median(r["seconds"] for r in ok) if ok else None,
            "runs_s": [round(r["seconds"], 3) for r in ok],
            "again_s": [round(x, 3) for r in ok for x in r.get("again_s", [])],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs if "peak_rss_mib" in r) if runs else None,
            "rows": ok[0]["rows"] if ok else None,
            "failed": len(ok) < len(runs),
            "errors": [r["error"][-300:] for r in runs if "error" in r],
            "load_1min": [r["load_before"] for r in runs],
            "runs": args.runs if engine != "import" else 1,
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if base_engine(engine) in index_builds:
            results[engine]["key_index_build_s"] = index_builds[base_engine(engine)]["seconds"]
            results[engine]["key_index_mib"] = round(index_builds[base_engine(engine)]["bytes"] / 2**20, 1)
        print(f"{engine:>7}: {json.dumps(results[engine])}", flush=True)
        results_file.write_text(json.dumps(results, indent=2))

    print()
    print("| engine | median retrieval s | runs (s) | again in the same process: median s | peak RSS MiB | load avg (1 min) before each run | result vs delta (as-known-at: vs delta-known) |")
    print("|---|---|---|---|---|---|---|")
    for engine, r in results.items():
        if engine == "import":
            verdict = "(Feast import + store open only)"
        elif engine == reference_of(engine):
            verdict = "reference"
            if engine != "delta" and (work / "result_delta.parquet").exists() and (work / f"result_{engine}.parquet").exists():
                verdict += f"; vs plain delta: {compare(work / 'result_delta.parquet', work / f'result_{engine}.parquet', args.features)}"
        elif r["failed"] or not (work / f"result_{engine}.parquet").exists():
            verdict = "failed"
        else:
            verdict = compare(work / f"result_{reference_of(engine)}.parquet", work / f"result_{engine}.parquet", args.features)
        median = "-" if r["median_s"] is None else f"{r['median_s']:.2f}"
        rss = "-" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}"
        runs_s = ", ".join(f"{x:.2f}" for x in r["runs_s"]) or "-"
        loads = ", ".join(f"{x:.1f}" for x in r.get("load_1min", [])) or "-"
        again = f"{statistics.median(r['again_s']):.2f}" if r.get("again_s") else "-"
        if r.get("errors"):
            verdict += f" (error: {r['errors'][0][-120:]!r})"
        print(f"| {engine} | {median} | {runs_s} | {again} | {rss} | {loads} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
