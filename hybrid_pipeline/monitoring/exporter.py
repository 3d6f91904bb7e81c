"""Prometheus exporter: ``hybrid-pipeline metrics --port PORT`` serves ``/metrics``.

What on-call watches, in one scrape: pipeline health (runs and their duration per job, freshness
lag per asset), data quality (rows, bytes and files per table and partition, quarantine rate,
check outcomes, drift PSI per feature) and model health (AUC of the production and newest
versions). Serving latency is not here: ``hybrid-pipeline serve`` exposes its own
``hybrid_serving_*`` metrics and Prometheus scrapes both (``deploy/prometheus/prometheus.yml``).

:class:`PipelineCollector` is a prometheus-client custom collector that reads at scrape time:
the Dagster instance (runs, asset materializations, check evaluations: documented
``DagsterInstance`` methods only), the lakehouse's Delta logs (every table of the catalog) and
the MLflow registry (the models' source of truth: which version is ``production`` and the metrics
its run logged). Reads are incremental where the instance allows (runs by update time, events by
storage id) and the result is cached for ``cache_seconds``, so a scrape is cheap and two scrapers
do not double the load. A source that fails (say, an unreachable object store) sets
``hybrid_exporter_source_up{source=...}`` to 0 and the others are still served; an empty instance
or lakehouse gives zeros or no series, never an error.
"""

from __future__ import annotations

import errno
import math
import sys
import threading
import time
import traceback
import warnings
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from hybrid_pipeline.lakehouse import Lakehouse, catalog
from hybrid_pipeline.monitoring.lakehouse_stats import TableStats, quarantine_ratios, table_stats
from hybrid_pipeline.monitoring.runs import FINISHED
from hybrid_pipeline.settings import Settings

DEFAULT_PORT = 9464
DEFAULT_CACHE_SECONDS = 10.0
SUCCESS_WINDOW = timedelta(hours=24)
DRIFT_ASSET = dg.AssetKey(["gold", "user_features"])
DRIFT_CHECK = "feature_drift"  # hybrid_pipeline.defs.models.names.DRIFT_CHECK (not imported: it pulls in the model code)
PRODUCTION_ALIAS = "production"
_OVERLAP = timedelta(seconds=2)  # re-read runs updated this close to the last one seen (clock granularity)


def _asset(key: dg.AssetKey) -> str:
    return key.to_user_string()


# --------------------------------------------------------------------------- runs


@dataclass
class _Run:
    job: str
    status: str
    start: float | None
    end: float | None


class RunsSource:
    """Every run of the instance, read incrementally by update time (a run's record changes as it moves)."""

    name = "runs"

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.runs: dict[str, _Run] = {}
        self.updated_after: datetime | None = None

    def refresh(self) -> None:
        while True:
            records = self.instance.get_run_records(
                filters=dg.RunsFilter(updated_after=self.updated_after) if self.updated_after else None,
                order_by="update_timestamp",
                ascending=True,
                limit=1000,
            )
            for r in records:
                run = r.dagster_run
                self.runs[run.run_id] = _Run(run.job_name, run.status.value, r.start_time, r.end_time)
            newest = max((r.update_timestamp for r in records), default=None)
            if newest is None:
                return
            newest = newest if newest.tzinfo else newest.replace(tzinfo=timezone.utc)
            advanced = self.updated_after is None or newest - _OVERLAP > self.updated_after
            self.updated_after = newest - _OVERLAP
            if len(records) < 1000 or not advanced:
                return

    def metrics(self, now: float) -> Iterator[Metric]:
        finished = CounterMetricFamily(
            "hybrid_job_runs", "Finished runs per job and final status (success, failure, canceled).", labels=["dagster_job", "status"]
        )
        active = GaugeMetricFamily(
            "hybrid_job_runs_active", "Runs not finished yet, per job and status (queued, starting, started...).",
            labels=["dagster_job", "status"],
        )
        duration = SummaryMetricFamily(
            "hybrid_job_run_duration_seconds", "Wall time of finished runs (start to end) per job.", labels=["dagster_job"]
        )
        last_duration = GaugeMetricFamily(
            "hybrid_job_last_run_duration_seconds", "Wall time of the job's most recent finished run.", labels=["dagster_job"]
        )
        last_success = GaugeMetricFamily(
            "hybrid_job_last_run_success", "1 when the job's most recent finished run succeeded, else 0.", labels=["dagster_job"]
        )
        last_end = GaugeMetricFamily(
            "hybrid_job_last_run_end_timestamp_seconds", "When the job's most recent finished run ended (Unix time).",
            labels=["dagster_job"],
        )
        last_ok = GaugeMetricFamily(
            "hybrid_job_last_success_timestamp_seconds", "When the job's most recent successful run ended (Unix time).",
            labels=["dagster_job"],
        )
        ratio = GaugeMetricFamily(
            "hybrid_job_success_ratio_24h", "Share of the job's runs finished in the last 24 hours that succeeded.",
            labels=["dagster_job"],
        )
        counts: Tally[tuple[str, str]] = Tally()
        active_counts: Tally[tuple[str, str]] = Tally()
        durations: dict[str, list[float]] = {}
        latest: dict[str, _Run] = {}
        latest_ok: dict[str, float] = {}
        window: dict[str, list[bool]] = {}
        since = now - SUCCESS_WINDOW.total_seconds()
        for run in self.runs.values():
            if run.status not in FINISHED:
                active_counts[(run.job, run.status.lower())] += 1
                continue
            counts[(run.job, run.status.lower())] += 1
            if run.start is not None and run.end is not None:
                durations.setdefault(run.job, []).append(max(0.0, run.end - run.start))
            if run.end is None:
                continue
            if run.job not in latest or (latest[run.job].end or 0) < run.end:
                latest[run.job] = run
            if run.status == "SUCCESS":
                latest_ok[run.job] = max(latest_ok.get(run.job, 0.0), run.end)
            if run.end >= since:
                window.setdefault(run.job, []).append(run.status == "SUCCESS")
        for (job, status), n in sorted(counts.items()):
            finished.add_metric([job, status], n)
        for (job, status), n in sorted(active_counts.items()):
            active.add_metric([job, status], n)
        for job, values in sorted(durations.items()):
            duration.add_metric([job], count_value=len(values), sum_value=sum(values))
        for job, run in sorted(latest.items()):
            last_success.add_metric([job], 1.0 if run.status == "SUCCESS" else 0.0)
            last_end.add_metric([job], run.end or 0.0)
            if run.start is not None and run.end is not None:
                last_duration.add_metric([job], max(0.0, run.end - run.start))
        for job, ts in sorted(latest_ok.items()):
            last_ok.add_metric([job], ts)
        for job, outcomes in sorted(window.items()):
            ratio.add_metric([job], sum(outcomes) / len(outcomes))
        yield from (finished, active, duration, last_duration, last_success, last_end, last_ok, ratio)


# --------------------------------------------------------------------------- assets


@dataclass
class _AssetState:
    count: int = 0
    last_ts: float | None = None
    cursor: str | None = None
    last_id: int | None = None  # storage id of the newest materialization counted


def freshness_windows() -> dict[str, tuple[float, float]]:
    """``layer -> (warn, fail)`` seconds, from the one policy per layer that ``definitions.py`` applies."""
    from hybrid_pipeline.definitions import FRESHNESS_BY_LAYER

    out = {}
    for layer, policy in FRESHNESS_BY_LAYER.items():
        fail = getattr(policy, "fail_window", None)
        warn = getattr(policy, "warn_window", None)
        if fail is None:
            continue
        fail_s = fail.to_timedelta().total_seconds()
        out[layer] = (warn.to_timedelta().total_seconds() if warn is not None else fail_s, fail_s)
    return out


class AssetsSource:
    """Materializations per asset (count and the newest one), read per key from the last cursor on.

    ``get_asset_records`` says in one query which assets have a newer materialization than the last
    refresh counted; only those are read (``fetch_materializations`` from their cursor).
    """

    name = "assets"

    def __init__(self, instance: dg.DagsterInstance, windows: Callable[[], Mapping[str, tuple[float, float]]] = freshness_windows) -> None:
        self.instance = instance
        self.state: dict[dg.AssetKey, _AssetState] = {}
        self._windows_fn = windows
        self._windows: Mapping[str, tuple[float, float]] | None = None

    def refresh(self) -> None:
        if self._windows is None:
            self._windows = self._windows_fn()
        # One query for every asset's newest materialization; the events themselves are read (to
        # count them) only for the assets whose newest one moved since the last refresh.
        for record in self.instance.get_asset_records():
            entry = record.asset_entry
            newest = entry.last_materialization_record
            if newest is None:
                continue
            state = self.state.setdefault(entry.asset_key, _AssetState())
            if state.last_id == newest.storage_id:
                continue
            while True:
                result = self.instance.fetch_materializations(entry.asset_key, limit=1000, cursor=state.cursor, ascending=True)
                for rec in result.records:
                    state.count += 1
                    state.last_ts = max(state.last_ts or 0.0, rec.timestamp)
                if result.records:
                    state.cursor = result.cursor
                if not result.has_more:
                    break
            state.last_id = newest.storage_id

    def metrics(self, now: float) -> Iterator[Metric]:
        total = CounterMetricFamily("hybrid_asset_materializations", "Materializations per asset.", labels=["asset"])
        last = GaugeMetricFamily(
            "hybrid_asset_last_materialization_timestamp_seconds", "When the asset was last materialized (Unix time).",
            labels=["asset"],
        )
        lag = GaugeMetricFamily(
            "hybrid_asset_freshness_lag_seconds", "Seconds since the asset was last materialized (any partition).",
            labels=["asset"],
        )
        warn = GaugeMetricFamily(
            "hybrid_asset_freshness_warn_after_seconds", "The asset's freshness policy: lag that warns.", labels=["asset"]
        )
        fail = GaugeMetricFamily(
            "hybrid_asset_freshness_fail_after_seconds", "The asset's freshness policy: lag that fails.", labels=["asset"]
        )
        status = GaugeMetricFamily(
            "hybrid_asset_freshness_status", "Freshness against the asset's policy: 0 pass, 1 warn, 2 fail.",
            labels=["asset"],
        )
        windows = self._windows or {}
        for key, state in sorted(self.state.items(), key=lambda kv: _asset(kv[0])):
            if state.count == 0 or state.last_ts is None:
                continue
            name = _asset(key)
            age = max(0.0, now - state.last_ts)
            total.add_metric([name], state.count)
            last.add_metric([name], state.last_ts)
            lag.add_metric([name], age)
            window = windows.get(key.path[0])
            if window is not None:
                warn.add_metric([name], window[0])
                fail.add_metric([name], window[1])
                status.add_metric([name], 2.0 if age > window[1] else 1.0 if age > window[0] else 0.0)
        yield from (total, last, lag, warn, fail, status)


# --------------------------------------------------------------------------- checks


@dataclass
class _CheckState:
    severity: str = "ERROR"
    passed: bool = True
    last_ts: float = 0.0
    outcomes: Tally[tuple[str, str]] = field(default_factory=Tally)  # (outcome, severity) -> count
    by_partition: dict[str, tuple[bool, str, float]] = field(default_factory=dict)  # newest (passed, severity, ts)


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


class ChecksSource:
    """Check evaluations of the whole instance, read on from where the last refresh stopped.

    ``get_event_records`` is the documented (deprecated for 2.0, no replacement yet) instance
    method that lists check evaluations across runs. Its cursor is a ``RunShardedEventsCursor``:
    the default SQLite storage keeps one database per run, where storage ids are per run and only
    "runs updated after" narrows a read, while PostgreSQL filters on the storage id. Either way a
    re-read event is recognised by ``(run id, storage id)`` and counted once, and the newest
    verdict is the one with the newest timestamp. The newest ``feature_drift`` evaluation carrying
    PSI figures also gives the drift metrics.
    """

    name = "checks"

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.cursor: dg.RunShardedEventsCursor | None = None
        self.seen: set[tuple[str, int]] = set()
        self.checks: dict[tuple[str, str], _CheckState] = {}
        self.drift: dict[str, Any] | None = None
        self._drift_ts = 0.0

    def refresh(self) -> None:
        started = datetime.now(timezone.utc) - _OVERLAP
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            records = self.instance.get_event_records(
                dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=self.cursor),
                ascending=True,
            )
        top = self.cursor.id if self.cursor is not None else 0
        for record in records:
            entry = record.event_log_entry
            top = max(top, record.storage_id)
            if (entry.run_id, record.storage_id) in self.seen or entry.dagster_event is None:
                continue
            self.seen.add((entry.run_id, record.storage_id))
            self._add(entry.dagster_event, entry.timestamp)
        self.cursor = dg.RunShardedEventsCursor(id=top, run_updated_after=started)

    def _add(self, event: Any, ts: float) -> None:
        ev = event.event_specific_data
        severity = ev.severity.value
        state = self.checks.setdefault((_asset(ev.asset_key), ev.check_name), _CheckState())
        state.outcomes[("passed" if ev.passed else "failed", severity)] += 1
        partition = getattr(ev, "partition", None) or event.partition or ""
        newest = state.by_partition.get(partition)
        if newest is None or newest[2] <= ts:
            state.by_partition[partition] = (bool(ev.passed), severity, ts)
        if ts >= state.last_ts:
            state.severity, state.passed, state.last_ts = severity, bool(ev.passed), ts
        if ev.asset_key == DRIFT_ASSET and ev.check_name == DRIFT_CHECK and ts >= self._drift_ts:
            meta = {k: _plain(v) for k, v in ev.metadata.items()}
            if isinstance(meta.get("psi"), Mapping):
                self.drift = {**meta, "partition": meta.get("partition") or partition}
                self._drift_ts = ts

    def metrics(self, now: float) -> Iterator[Metric]:
        total = CounterMetricFamily(
            "hybrid_check_evaluations", "Asset check evaluations by outcome (passed, failed) and severity.",
            labels=["asset", "check", "outcome", "severity"],
        )
        passed = GaugeMetricFamily(
            "hybrid_check_passed", "1 when the check's newest evaluation passed, else 0.", labels=["asset", "check", "severity"]
        )
        last = GaugeMetricFamily(
            "hybrid_check_last_evaluation_timestamp_seconds", "When the check was last evaluated (Unix time).",
            labels=["asset", "check"],
        )
        failing = GaugeMetricFamily(
            "hybrid_check_failing_partitions",
            "Partitions (1 for an unpartitioned check) whose newest evaluation of the check failed.",
            labels=["asset", "check", "severity"],
        )
        for (asset, check), state in sorted(self.checks.items()):
            for (outcome, severity), n in sorted(state.outcomes.items()):
                total.add_metric([asset, check, outcome, severity], n)
            passed.add_metric([asset, check, state.severity], 1.0 if state.passed else 0.0)
            last.add_metric([asset, check], state.last_ts)
            bad: Tally[str] = Tally(sev for ok, sev, _ in state.by_partition.values() if not ok)
            for severity in sorted(set(bad) | {state.severity}):
                failing.add_metric([asset, check, severity], bad.get(severity, 0))
        yield from (total, passed, last, failing)
        psi = GaugeMetricFamily(
            "hybrid_feature_drift_psi",
            "PSI per feature of the newest feature_drift evaluation: model inputs (kind=input, they decide the "
            "verdict) and lifetime aggregates (kind=lifetime, reported only).",
            labels=["feature", "kind", "partition"],
        )
        max_psi = GaugeMetricFamily(
            "hybrid_feature_drift_max_psi", "Largest model-input PSI of the newest feature_drift evaluation.",
            labels=["partition"],
        )
        if self.drift is not None:
            part = str(self.drift.get("partition", ""))
            for kind, key in (("input", "psi"), ("lifetime", "lifetime_psi")):
                values = self.drift.get(key)
                for feature, value in sorted((values or {}).items()) if isinstance(values, Mapping) else ():
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        psi.add_metric([feature, kind, part], float(value))
            top = self.drift.get("max_psi")
            if isinstance(top, (int, float)) and math.isfinite(top):
                max_psi.add_metric([part], float(top))
        yield from (psi, max_psi)


# --------------------------------------------------------------------------- lakehouse


class LakehouseSource:
    """Stats of every catalog table from its Delta log; a table whose version did not move is not re-read."""

    name = "lakehouse"

    def __init__(self, root: str) -> None:
        self.root = root
        self.stats: dict[str, TableStats] = {}
        self._lakehouse: Lakehouse | None = None

    def lakehouse(self) -> Lakehouse | None:
        """None while a local root does not exist: the exporter does not create an empty lakehouse."""
        if self._lakehouse is None and ("://" in self.root or Path(self.root).is_dir()):
            self._lakehouse = Lakehouse(self.root)
        return self._lakehouse

    def refresh(self) -> None:
        lh = self.lakehouse()
        if lh is None:
            return
        fresh: dict[str, TableStats] = {}
        for table in catalog.TABLES:
            stats = table_stats(lh, table, self.stats.get(table.name))
            if stats is not None:
                fresh[table.name] = stats
        self.stats = fresh

    def metrics(self, now: float) -> Iterator[Metric]:
        labels = ["table", "layer"]
        rows = GaugeMetricFamily("hybrid_table_rows", "Rows of the table's current Delta version.", labels=labels)
        size = GaugeMetricFamily("hybrid_table_bytes", "Bytes of the data files of the current version.", labels=labels)
        files = GaugeMetricFamily("hybrid_table_files", "Data files of the current version.", labels=labels)
        version = GaugeMetricFamily("hybrid_table_version", "The table's current Delta version.", labels=labels)
        commit = GaugeMetricFamily(
            "hybrid_table_last_commit_timestamp_seconds", "When the table's newest Delta commit was made (Unix time).",
            labels=labels,
        )
        p_rows = GaugeMetricFamily(
            "hybrid_table_partition_rows", "Rows per partition of a partitioned table.", labels=[*labels, "partition"]
        )
        p_bytes = GaugeMetricFamily(
            "hybrid_table_partition_bytes", "Data file bytes per partition of a partitioned table.",
            labels=[*labels, "partition"],
        )
        for name, st in sorted(self.stats.items()):
            lv = [name, st.table.layer]
            rows.add_metric(lv, st.rows)
            size.add_metric(lv, st.bytes)
            files.add_metric(lv, st.files)
            version.add_metric(lv, st.version)
            if st.last_commit_ms is not None:
                commit.add_metric(lv, st.last_commit_ms / 1000)
            for part, ps in sorted(st.partitions.items()):
                p_rows.add_metric([*lv, part], ps.rows)
                p_bytes.add_metric([*lv, part], ps.bytes)
        yield from (rows, size, files, version, commit, p_rows, p_bytes)
        ratio = GaugeMetricFamily(
            "hybrid_quarantine_ratio",
            "Share of records set aside: events = quarantined / bronze records, media = quarantined / (described + "
            "quarantined) files; partition=\"\" is the whole table, otherwise one landing day.",
            labels=["source", "partition"],
        )
        for (source, part), value in sorted(quarantine_ratios(self.stats).items()):
            ratio.add_metric([source, part], value)
        yield ratio


# --------------------------------------------------------------------------- models


class ModelsSource:
    """Registered models from MLflow: the ``production`` and newest versions and the metrics their runs logged.

    MLflow is imported only once its store exists (a local SQLite file), so an exporter started
    before any training stays light.
    """

    name = "models"

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.rows: list[tuple[str, str, int, dict[str, float]]] = []  # (model, stage, version, metrics)
        self._runs: dict[str, dict[str, float]] = {}

    def store_exists(self) -> bool:
        if self.tracking_uri.startswith("sqlite:///"):
            return Path(self.tracking_uri[len("sqlite:///"):]).exists()
        return True

    def refresh(self) -> None:
        if not self.store_exists():
            self.rows = []
            return
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        rows = []
        for model in client.search_registered_models():
            versions = {}
            newest = client.search_model_versions(f"name='{model.name}'", order_by=["version_number DESC"], max_results=1)
            if newest:
                versions["latest"] = newest[0]
            try:
                versions[PRODUCTION_ALIAS] = client.get_model_version_by_alias(model.name, PRODUCTION_ALIAS)
            except MlflowException:
                pass  # no version holds the alias yet
            for stage, mv in versions.items():
                metrics = self._run_metrics(client, mv.run_id) if mv.run_id else {}
                rows.append((model.name, stage, int(mv.version), metrics))
        self.rows = rows

    def _run_metrics(self, client: Any, run_id: str) -> dict[str, float]:
        if run_id not in self._runs:  # a finished run's metrics do not change
            self._runs[run_id] = {k: float(v) for k, v in client.get_run(run_id).data.metrics.items()}
        return self._runs[run_id]

    def metrics(self, now: float) -> Iterator[Metric]:
        version = GaugeMetricFamily(
            "hybrid_model_version", "Registered version number of the model's production (alias) and newest versions.",
            labels=["model", "stage"],
        )
        auc = GaugeMetricFamily(
            "hybrid_model_auc", "AUC the version's training run logged, per split (test, valid).",
            labels=["model", "stage", "version", "split"],
        )
        metric = GaugeMetricFamily(
            "hybrid_model_metric", "Every final metric the version's training run logged (accuracy, log loss, ...).",
            labels=["model", "stage", "version", "metric"],
        )
        for model, stage, number, values in self.rows:
            version.add_metric([model, stage], number)
            for name, value in sorted(values.items()):
                if not math.isfinite(value):
                    continue
                metric.add_metric([model, stage, str(number), name], value)
                if name.endswith("_auc"):
                    auc.add_metric([model, stage, str(number), name.removesuffix("_auc")], value)
        yield from (version, auc, metric)


# --------------------------------------------------------------------------- the collector


class PipelineCollector(Collector):
    """Reads every source at scrape time, at most once per ``cache_seconds``; serves the cached families otherwise."""

    def __init__(
        self,
        sources: Iterable[Any],
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.time,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.sources = list(sources)
        self.cache_seconds = cache_seconds
        self.clock = clock
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._lock = threading.Lock()
        self._families: list[Metric] = []
        self._built_at: float | None = None
        self._errors: dict[str, str] = {}

    def describe(self) -> list[Metric]:
        return []  # no reads when the collector is registered

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = self.clock()
            if self._built_at is None or now - self._built_at >= self.cache_seconds:
                self._families = self._build(now)
                self._built_at = self.clock()  # a slow read does not leave the next scrape a stale cache
            families = list(self._families)
        return iter(families)

    def _build(self, now: float) -> list[Metric]:
        up = GaugeMetricFamily("hybrid_exporter_source_up", "1 when the source was read on the last refresh.", labels=["source"])
        took = GaugeMetricFamily(
            "hybrid_exporter_refresh_seconds", "Time the last refresh of the source took.", labels=["source"]
        )
        out: list[Metric] = []
        for source in self.sources:
            began = time.perf_counter()
            try:
                source.refresh()
                families = list(source.metrics(now))
            except Exception as exc:  # noqa: BLE001 - one failing source must not take the others down
                message = f"{exc.__class__.__name__}: {exc}".splitlines()[0][:300] or exc.__class__.__name__
                frames = traceback.extract_tb(exc.__traceback__)
                if frames:
                    message += f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})"
                if self._errors.get(source.name) != message:
                    self.log(f"metrics: cannot read {source.name}: {message}")
                self._errors[source.name] = message
                up.add_metric([source.name], 0.0)
            else:
                if self._errors.pop(source.name, None) is not None:
                    self.log(f"metrics: {source.name} readable again")
                out += families
                up.add_metric([source.name], 1.0)
            took.add_metric([source.name], time.perf_counter() - began)
        stamp = GaugeMetricFamily("hybrid_exporter_last_refresh_timestamp_seconds", "When the sources were last read.")
        stamp.add_metric([], now)
        return [*out, up, took, stamp]


def build_collector(settings: Settings, instance: dg.DagsterInstance, cache_seconds: float = DEFAULT_CACHE_SECONDS) -> PipelineCollector:
    """The collector over ``instance``, the lakehouse and the model registry that ``settings`` name."""
    return PipelineCollector(
        [
            RunsSource(instance),
            AssetsSource(instance),
            ChecksSource(instance),
            LakehouseSource(settings.lakehouse_root),
            ModelsSource(settings.model_registry_uri),
        ],
        cache_seconds=cache_seconds,
    )


def serve(
    settings: Settings,
    instance_factory: Callable[[], dg.DagsterInstance],
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    cache_seconds: float = DEFAULT_CACHE_SECONDS,
    ready: Callable[[str], None] | None = None,
) -> int:
    """Serve ``/metrics`` until interrupted; 2 (one line on stderr) when the address cannot be bound.

    The port is bound before the instance is opened, so a port in use fails at once. The first
    refresh runs before the address is announced, so the first scrape is as cheap as the next.
    """
    registry = CollectorRegistry(auto_describe=False)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        reason = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        print(f"metrics: cannot listen on {host}:{port}: {reason}", file=sys.stderr)
        return 2
    try:
        collector = build_collector(settings, instance_factory(), cache_seconds)
        registry.register(collector)  # describe() reads nothing; a scrape during the warm-up waits for it
        collector.collect()  # warm: imports and the first full read happen now, not in the first scrape
        line = (f"metrics on http://{host}:{port}/metrics (Dagster instance {settings.dagster_home}, "
                f"lakehouse {settings.lakehouse_root}, cache {cache_seconds:g}s)")
        print(line, flush=True)
        if ready is not None:
            ready(line)
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    return 0
