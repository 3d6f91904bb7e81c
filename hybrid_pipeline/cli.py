"""``hybrid-pipeline``: generate demo landings and materialize the lakehouse from a shell."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TypeVar

from hybrid_pipeline.instance import InstanceConfigError, ensure_dagster_home, ensure_pools, open_instance, pools_of

RunResultT = TypeVar("RunResultT")


def _cmd_generate(args: argparse.Namespace) -> int:
    from hybrid_pipeline.settings import Settings
    from hybrid_pipeline.sources.generator import GeneratorConfig, generate

    settings = Settings.from_env()
    start = date.fromisoformat(args.start_date) if args.start_date else date.today() - timedelta(days=args.days)
    config = GeneratorConfig(
        days=args.days, events_per_day=args.events_per_day, seed=args.seed, dirty_rate=args.dirty_rate, start_date=start
    )
    began = time.perf_counter()
    totals = generate(config, settings.landing_dir)
    if args.media:
        from hybrid_pipeline.media.demo import write_demo_media

        media = write_demo_media(settings.landing_dir / "media", seed=args.seed)
        print(f"generated demo media: {media} into {settings.landing_dir}/media")
    print(
        f"generated {totals['records']:,} event records ({totals['dirty']:,} dirty, {totals['duplicates']:,} duplicates) "
        f"in {totals['files']} files over {totals['days']} days from {start} into {settings.landing_dir}/events "
        f"({time.perf_counter() - began:.1f}s)"
    )
    return 0


@dataclass
class RunSummary:
    partition: str
    success: bool
    seconds: float
    rows: dict[str, int] = field(default_factory=dict)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # (name, passed, severity)
    failed_steps: list[str] = field(default_factory=list)
    drift: dict[str, int] = field(default_factory=dict)  # unknown field -> records carrying it (silver metadata)
    skipped: dict[str, str] = field(default_factory=dict)  # asset -> why it materialized nothing (the asset's own verdict)

    @property
    def error_checks(self) -> list[str]:
        return [n for n, passed, sev in self.checks if not passed and sev == "ERROR"]

    @property
    def ok(self) -> bool:
        return self.success and not self.error_checks


_QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def materialize(  # noqa: ANN001
    partitions: Sequence[str],
    select: str | None = None,
    instance=None,
    daily_only: bool = False,
    models: bool = True,
    on_run: Callable[[RunSummary, int, int], None] | None = None,
) -> list[RunSummary]:
    """Run the pipeline in-process against the DAGSTER_HOME instance.

    Media first (when media landed) with its embeddings, then each landing day, then the feature store and the
    newest day's online features, then the model jobs: purchase model training (gate and
    promotion included), the newest day's predictions and the digit classifier
    (``models=False`` leaves them out). Whether a model trains is the graph's decision (too few
    rows: the asset records why and materializes nothing); the summary reports it as a skip.
    ``select`` or ``daily_only`` run just the landing days. Every run is tagged with this
    process, so that a later CLI can release it if this process dies
    (:mod:`hybrid_pipeline.runs_recovery`). ``on_run(summary, done, planned)`` is called as each
    run finishes (the CLI prints progress with it).
    """
    import dagster as dg

    from hybrid_pipeline.definitions import (
        FEATURES_JOB,
        MEDIA_JOB,
        ONLINE_JOB,
        PIPELINE_JOB,
        build_definitions,
        daily_partitions,
    )
    from hybrid_pipeline.defs.models.names import DIGIT_TRAINING_JOB, PREDICTIONS_JOB, PURCHASE_TRAINING_JOB, SKIPPED
    from hybrid_pipeline.runs_recovery import process_tags
    from hybrid_pipeline.settings import Settings

    settings = Settings.from_env()
    defs = build_definitions(settings)
    job_name = PIPELINE_JOB
    if select:
        job_name = "materialize_selection"
        defs = dg.Definitions.merge(
            defs,
            dg.Definitions(
                jobs=[
                    dg.define_asset_job(
                        # a multi-asset (bronze/events + its ledger) runs whole, so part of one can be named
                        job_name, selection=dg.AssetSelection.from_string(select).required_multi_asset_neighbors()
                    )
                ]
            ),
        )
    job = defs.resolve_job_def(job_name)
    instance = instance or dg.DagsterInstance.get()
    ensure_pools(instance, pools_of(defs))
    valid = set(daily_partitions(settings).get_partition_keys())
    unknown = [p for p in partitions if p not in valid]
    if unknown:
        raise SystemExit(
            f"not a daily partition: {', '.join(unknown)} (partitions run from HYBRID_START_DATE="
            f"{settings.start_date} to today)"
        )
    runs: list[tuple[str, dg.JobDefinition, str | None]] = []
    extras = not select and not daily_only
    if extras and (settings.landing_dir / "media").is_dir():
        runs.append(("media", defs.resolve_job_def(MEDIA_JOB), None))
        from hybrid_pipeline.defs.embeddings.assets import EMBEDDINGS_JOB  # chunks, embeddings, indexes, near-duplicates

        runs.append(("embeddings", defs.resolve_job_def(EMBEDDINGS_JOB), None))
    runs += [(key, job, key) for key in partitions]
    if extras and partitions:
        # Unpartitioned feature store work once, then the newest day's features go online
        # (every user with features inside the 30-day TTL has a row on the newest day).
        runs.append(("features", defs.resolve_job_def(FEATURES_JOB), None))
        runs.append((f"online {max(partitions)}", defs.resolve_job_def(ONLINE_JOB), max(partitions)))
        if models:
            # Unpartitioned training, then the newest day's scores: one partition per run, so two runs.
            runs.append(("purchase model", defs.resolve_job_def(PURCHASE_TRAINING_JOB), None))
            runs.append((f"predictions {max(partitions)}", defs.resolve_job_def(PREDICTIONS_JOB), max(partitions)))
            runs.append(("digit classifier", defs.resolve_job_def(DIGIT_TRAINING_JOB), None))
    summaries = []
    for label, run_job, key in runs:
        began = time.perf_counter()
        result = run_job.execute_in_process(
            partition_key=key, instance=instance, raise_on_error=False, run_config=_QUIET_LOGS, tags=process_tags()
        )
        summary = RunSummary(label, result.success, time.perf_counter() - began)
        for event in result.all_events:
            if event.is_step_materialization:
                mat = event.event_specific_data.materialization
                rows = mat.metadata.get("dagster/row_count")
                summary.rows[mat.asset_key.to_user_string()] = int(rows.value) if rows is not None else 0
                drift = mat.metadata.get("schema_drift")
                for name, count in (drift.value if drift is not None else {}).items():
                    summary.drift[name] = summary.drift.get(name, 0) + int(count)
            elif event.event_type_value == "ASSET_OBSERVATION":
                observation = event.event_specific_data.asset_observation
                reason = observation.metadata.get(SKIPPED)
                if reason is not None:
                    summary.skipped[observation.asset_key.to_user_string()] = str(reason.value)
            elif event.event_type_value == "ASSET_CHECK_EVALUATION":
                ev = event.event_specific_data
                summary.checks.append(
                    (f"{ev.asset_key.to_user_string()}:{ev.check_name}", ev.passed, ev.severity.value)
                )
            elif event.is_step_failure:
                summary.failed_steps.append(event.step_key or "?")
        summaries.append(summary)
        if on_run is not None:
            on_run(summary, len(summaries), len(runs))
    return summaries


def print_progress(summary: RunSummary, done: int, planned: int) -> None:
    """One line per finished run (to stderr, so the summary on stdout stays clean)."""
    passed = sum(1 for _, ok, _ in summary.checks if ok)
    rows = sum(summary.rows.values())
    status = "ok" if summary.ok else "FAILED"
    print(
        f"[{done}/{planned}] {summary.partition:<22} {status:<6} {summary.seconds:6.1f}s  "
        f"{len(summary.rows)} assets, {rows:,} rows, checks {passed}/{len(summary.checks)}",
        file=sys.stderr,
        flush=True,
    )


def print_summary(summaries: Sequence[RunSummary]) -> None:
    for s in summaries:
        status = "ok" if s.ok else "FAILED"
        passed = sum(1 for _, p, _ in s.checks if p)
        print(f"\n{s.partition}  {status}  ({s.seconds:.1f}s, checks {passed}/{len(s.checks)} passed)")
        for asset, rows in sorted(s.rows.items()):
            print(f"  {asset:<28} {rows:>12,} rows")
        for asset, reason in sorted(s.skipped.items()):
            print(f"  {asset}: skipped, {reason}")
        for name, ok, severity in s.checks:
            if not ok:
                print(f"  check {name}: failed ({severity})")
        for step in s.failed_steps:
            print(f"  step failed: {step}")
    drift: dict[str, int] = {}
    for s in summaries:
        for name, count in s.drift.items():
            drift[name] = drift.get(name, 0) + count
    if drift:
        fields = ", ".join(f"{name} ({count:,} records)" for name, count in sorted(drift.items()))
        print(f"\nschema drift: fields outside the event contract, kept in bronze: {fields}")


class Stopped(Exception):
    """SIGTERM or SIGINT reached the CLI."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


def run_stoppable(work: Callable[[], RunResultT], on_stop: Callable[[Stopped], None]) -> RunResultT:
    """Run ``work`` in a worker thread so that SIGTERM and Ctrl-C stop the CLI even while a step waits.

    While Dagster executes a run in the main thread it defers SIGINT/SIGTERM and acts on them only
    inside a step's compute; a step waiting for a concurrency-pool slot never sees them, so the
    process spins until SIGKILL (which leaves one more claim behind). Off the main thread Dagster
    leaves signal handlers alone, so here the main thread gets them, ``on_stop`` records the stop
    (runs failed, slots freed) and the process exits at once: the worker cannot be stopped
    otherwise. For the data that is a crash, which a rerun repairs (every lakehouse write is one
    atomic Delta commit, bronze ingests a file once).
    """
    if threading.current_thread() is not threading.main_thread():
        return work()  # signal handlers can only be set from the main thread
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            outcome["error"] = exc

    previous = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGTERM, signal.SIGINT)}
    worker = threading.Thread(target=target, name="materialize", daemon=True)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
    except Stopped as stop:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)  # a second signal must not interrupt the clean-up
        on_stop(stop)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + stop.signum)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _cmd_materialize(args: argparse.Namespace) -> int:
    import dagster as dg

    from hybrid_pipeline.runs_recovery import (
        HOST_TAG,
        PID_TAG,
        fail_runs_of_this_process,
        held_pools,
        release_dead_runs,
    )
    from hybrid_pipeline.settings import Settings
    from hybrid_pipeline.sources.landing import landed_dates

    partitions = list(args.partition or [])
    if args.all_landed:
        partitions += [d for d in landed_dates(Settings.from_env().landing_dir) if d not in partitions]
    if not partitions:
        print("nothing to materialize: give --partition YYYY-MM-DD or --all-landed", file=sys.stderr)
        return 2
    instance = open_instance()
    for run in release_dead_runs(instance):
        print(
            f"released run {run.run_id} ({run.job_name} {run.tags.get('dagster/partition', '')}): its process "
            f"{run.tags.get(PID_TAG)} is gone; marked failed, pool slots freed",
            file=sys.stderr,
        )
    for pool, run in held_pools(instance):
        owner = f"process {run.tags[PID_TAG]} on {run.tags[HOST_TAG]}" if PID_TAG in run.tags else "no process tags"
        print(f"pool {pool} is held by run {run.run_id} ({run.status.value}, {owner}): its steps wait", file=sys.stderr)

    def stop(signal_: Stopped) -> None:
        runs = fail_runs_of_this_process(instance, f"hybrid-pipeline stopped by {signal_}")
        done = f"run {', '.join(r.run_id for r in runs)} marked failed, pool slots freed" if runs else "no run in progress"
        print(f"stopped by {signal_}: {done}", file=sys.stderr)

    summaries = run_stoppable(
        lambda: materialize(sorted(partitions), args.select, instance=instance, on_run=print_progress), stop
    )
    print_summary(summaries)
    failed = [s.partition for s in summaries if not s.ok]
    print(f"\n{len(summaries) - len(failed)}/{len(summaries)} runs succeeded" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


STREAM = "events"
STREAM_GROUP = "bronze"


def _cmd_produce(args: argparse.Namespace) -> int:
    from hybrid_pipeline.settings import Settings
    from hybrid_pipeline.sources.generator import EventGenerator, GeneratorConfig
    from hybrid_pipeline.sources.stream import produce

    settings = Settings.from_env()
    start = date.fromisoformat(args.start_date) if args.start_date else date.today()
    gen = EventGenerator(GeneratorConfig(days=1, events_per_day=args.events, seed=args.seed, dirty_rate=0.0, start_date=start))
    events = next(gen.days()).events.to_dicts()
    began = time.perf_counter()
    sent = produce(settings.redis_url, args.stream, events, rate=args.rate or None)
    print(f"published {sent:,} events to {settings.redis_url} stream {args.stream!r} in {time.perf_counter() - began:.1f}s")
    return 0


def _cmd_stream(args: argparse.Namespace) -> int:
    import dagster as dg

    from hybrid_pipeline.defs.streaming.sensors import ActivityReporter, BronzeStreamReporter, OnlinePush
    from hybrid_pipeline.lakehouse import Lakehouse
    from hybrid_pipeline.settings import Settings
    from hybrid_pipeline.sources.stream import StreamConsumer, app_id_of

    settings = Settings.from_env()
    lakehouse = Lakehouse(settings.lakehouse_root)
    instance = open_instance()
    # Every commit is recorded as a bronze/events materialization, online push or not.
    bronze = BronzeStreamReporter(instance, lakehouse.uri("bronze/events"), app_id_of(args.stream, args.group, args.consumer))
    on_batch = reporter = push = None  # replaced below unless --no-online
    if not args.no_online:
        reporter = ActivityReporter(instance)
        push = OnlinePush(settings)

        def on_batch(rows):  # noqa: ANN001, ANN202
            users = push(rows)
            reporter.batch(rows, users)
            return users

    consumer = StreamConsumer(
        settings.redis_url, args.stream, args.group, args.consumer, lakehouse,
        batch_size=args.batch_size, block_ms=args.block_ms, on_batch=on_batch, on_commit=bronze.commit,
    )
    try:
        with consumer:
            stats = consumer.run(max_batches=args.max_batches, max_idle_polls=args.max_idle_polls)
    finally:
        bronze.flush()
        if reporter is not None:
            reporter.flush()
        if push is not None:
            push.close()
    print(f"consumed {stats.rows:,} events in {stats.commits} commits ({stats.skipped_committed} already committed)")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    # Neither Dagster nor Feast: the online store is read directly (see hybrid_pipeline.serving.server).
    from hybrid_pipeline.serving.server import pipeline_app, run_server
    from hybrid_pipeline.settings import Settings

    settings = Settings.from_env()
    api_key = os.environ.get("HYBRID_SERVING_API_KEY") or None
    app = pipeline_app(settings, api_key=api_key, predictor=_production_predictor(settings))
    from hybrid_pipeline.serving.search import install_search  # POST /search over the embedding indexes
    from hybrid_pipeline.vectors import Searcher

    install_search(app, Searcher.from_settings(settings))
    key = "required" if api_key else "off"
    print(f"serving {settings.online_store} on http://{args.host}:{args.port} (API key {key})")
    run_server(app, host=args.host, port=args.port)
    return 0


def _production_predictor(settings):  # noqa: ANN001, ANN202 - None until a model is in production
    uri = settings.model_registry_uri
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        print("no model registry yet: POST /predict is off")  # and neither MLflow nor Dagster is imported
        return None
    from hybrid_pipeline.ml.predictor import purchase_predictor  # no Dagster import

    try:
        return purchase_predictor(uri, version="production")
    except Exception as exc:  # noqa: BLE001 - no production model yet: serve features only
        print(f"no production model ({exc.__class__.__name__}): POST /predict is off")
        return None


def _cmd_metrics(args: argparse.Namespace) -> int:
    from hybrid_pipeline.monitoring.exporter import serve
    from hybrid_pipeline.settings import Settings

    return serve(Settings.from_env(), open_instance, host=args.host, port=args.port, cache_seconds=args.cache_seconds)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import json

    from hybrid_pipeline.ml.reproduce import ReproduceError, reproduce
    from hybrid_pipeline.settings import Settings

    settings = Settings.from_env()
    tracking_uri = args.tracking_uri or settings.model_registry_uri
    try:
        report = reproduce(args.model, args.version, settings.lakehouse_root, tracking_uri, device=args.device,
                           num_threads=args.threads, retrain=not args.no_retrain, tolerance=args.tolerance)
    except ReproduceError as exc:
        print(f"cannot reproduce {args.model} {args.version}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else report.summary())
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybrid-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write synthetic event landings into $HYBRID_LANDING_DIR")
    gen.add_argument("--days", type=int, default=7)
    gen.add_argument("--events-per-day", type=int, default=200_000)
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--dirty-rate", type=float, default=0.02)
    gen.add_argument("--start-date", help="first landing day (default: DAYS days before today)")
    gen.add_argument("--media", action=argparse.BooleanOptionalAction, default=True,
                     help="also land the demo media (scikit-learn digits as PNG, generated PDF/TXT documents)")
    gen.set_defaults(func=_cmd_generate)

    mat = sub.add_parser("materialize", help="materialize landing days in-process (exit 1 on failure)")
    mat.add_argument("--partition", action="append", help="landing day YYYY-MM-DD (repeatable)")
    mat.add_argument("--all-landed", action="store_true", help="every landing day found in the landing zone")
    mat.add_argument("--select", help="Dagster asset selection, e.g. 'key:silver/events+' (default: the daily pipeline)")
    mat.set_defaults(func=_cmd_materialize)

    rep = sub.add_parser("reproduce", help="rebuild a registered model version's training set by Delta time travel, "
                         "check its content hash and retrain it with the recorded seed and hyperparameters")
    rep.add_argument("--model", default="purchase_model")
    rep.add_argument("--version", default="production", help="version number or alias (default: production)")
    rep.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<lakehouse parent>/mlflow/mlflow.db)")
    rep.add_argument("--device", default="cpu", help="cpu (bit-identical retrain) or cuda")
    rep.add_argument("--threads", type=int, help="CPU threads (default: the thread count the run recorded)")
    rep.add_argument("--tolerance", type=float, help="max |metric delta| (default 1e-6 CPU vs CPU, 0.02 across devices)")
    rep.add_argument("--no-retrain", action="store_true", help="only rebuild the training set and compare its hash")
    rep.add_argument("--json", action="store_true", help="print the report as JSON")
    rep.set_defaults(func=_cmd_reproduce)

    srv = sub.add_parser("serve", help="serve online features (and predictions) over HTTP")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.set_defaults(func=_cmd_serve)

    met = sub.add_parser("metrics", help="serve Prometheus metrics of the instance, lakehouse and models on /metrics")
    met.add_argument("--host", default="127.0.0.1")
    met.add_argument("--port", type=int, default=9464)
    met.add_argument("--cache-seconds", type=float, default=10.0, help="re-read the sources at most this often")
    met.set_defaults(func=_cmd_metrics)

    prod = sub.add_parser("produce", help="replay generated events into the Redis stream at a rate")
    prod.add_argument("--rate", type=float, default=1000.0, help="events per second (0 = as fast as possible)")
    prod.add_argument("--events", type=int, default=10_000)
    prod.add_argument("--seed", type=int, default=7)
    prod.add_argument("--start-date", help="event day (default: today)")
    prod.add_argument("--stream", default=STREAM)
    prod.set_defaults(func=_cmd_produce)

    st = sub.add_parser("stream", help="consume the Redis stream into bronze/events exactly once")
    st.add_argument("--stream", default=STREAM)
    st.add_argument("--group", default=STREAM_GROUP)
    st.add_argument("--consumer", default="consumer-1")
    st.add_argument("--batch-size", type=int, default=1000)
    st.add_argument("--block-ms", type=int, default=500)
    st.add_argument("--max-batches", type=int, help="stop after this many micro-batches")
    st.add_argument("--max-idle-polls", type=int, help="stop after this many empty reads in a row")
    st.add_argument("--no-online", action="store_true", help="do not push streaming features to the online store")
    st.set_defaults(func=_cmd_stream)

    from hybrid_pipeline.ui import add_ui_parser  # `ui mlflow`, `ui feast`

    add_ui_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Dagster flags APIs this project relies on as "preview"; that is for developers, not for
    # someone running the pipeline from a shell.
    warnings.filterwarnings("ignore", message=r".*(is currently in preview|is currently in beta).*")
    # MLflow's SQLAlchemy store announces its schema set-up and a deprecation of its own;
    # neither is something the person running the pipeline can act on.
    warnings.filterwarnings("ignore", message=r".*noload.*loader strategy is deprecated.*")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except InstanceConfigError as exc:
        print(f"hybrid-pipeline: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
