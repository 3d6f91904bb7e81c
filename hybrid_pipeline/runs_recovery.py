"""Runs of ``hybrid-pipeline materialize`` whose process is gone, and the pool slots they hold.

The CLI executes runs in its own process (``execute_in_process``), so no run launcher and no
daemon watches that process: a CLI killed inside a pool-limited step leaves its run STARTED
and its concurrency slot claimed, and every later step of that pool waits for ever. Each run
the CLI starts is therefore tagged with its process (host, pid, start time). Before launching,
the CLI reports the runs of this host whose process no longer exists as failed and frees the
slots still held by finished CLI runs, through the instance's run and event-log storage (the
calls behind ``dagster instance concurrency`` and run monitoring's slot freeing).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

import dagster as dg
import psutil

PID_TAG = "hybrid_pipeline/pid"
HOST_TAG = "hybrid_pipeline/host"
PROCESS_STARTED_TAG = "hybrid_pipeline/process_started"  # tells a reused pid apart

UNFINISHED = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def process_tags() -> dict[str, str]:
    """Run tags naming this process, so that a later CLI can tell whether it still exists."""
    me = psutil.Process()
    return {PID_TAG: str(me.pid), HOST_TAG: socket.gethostname(), PROCESS_STARTED_TAG: f"{me.create_time():.2f}"}


def process_is_gone(tags: Mapping[str, str]) -> bool:
    """Whether the process a run's tags name has exited (its pid unused, reused or a zombie)."""
    try:
        proc = psutil.Process(int(tags[PID_TAG]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        started = tags.get(PROCESS_STARTED_TAG)
        return started is not None and abs(proc.create_time() - float(started)) > 1.0
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False  # it exists, under another user


def release_dead_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Report this host's CLI runs whose process is gone as failed, then free finished CLI runs' slots.

    Runs of other hosts are left alone: their process cannot be checked from here.
    """
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=UNFINISHED, tags={HOST_TAG: socket.gethostname()})
    )
    dead = [r.dagster_run for r in records if PID_TAG in r.dagster_run.tags and process_is_gone(r.dagster_run.tags)]
    for run in dead:
        instance.report_run_failed(
            run,
            message=f"hybrid-pipeline process {run.tags[PID_TAG]} on {run.tags[HOST_TAG]} ended without finishing "
            "this run (killed or crashed); marked failed so that its pool slots can be freed.",
        )
    free_slots_of_finished_runs(instance)
    return dead


def fail_runs_of_this_process(instance: dg.DagsterInstance, message: str) -> list[dg.DagsterRun]:
    """Report this process's unfinished runs as failed and free their slots (the process is about to exit)."""
    tags = process_tags()
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=UNFINISHED, tags={PID_TAG: tags[PID_TAG], HOST_TAG: tags[HOST_TAG]})
    )
    runs = [r.dagster_run for r in records]
    for run in runs:
        instance.report_run_failed(run, message=message)
    free_slots(instance, [run.run_id for run in runs])
    return runs


def free_slots(instance: dg.DagsterInstance, run_ids: list[str]) -> None:
    """Free every pool slot (claimed or pending) the runs hold."""
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        for run_id in run_ids:
            storage.free_concurrency_slots_for_run(run_id)


def free_slots_of_finished_runs(instance: dg.DagsterInstance) -> list[str]:
    """Free the slots (claimed or pending) that finished CLI runs still hold; returns their run ids.

    Run monitoring's ``free_slots_after_run_end_seconds`` does the same for every run, but only
    while the daemon runs; a shell-only user has no daemon.
    """
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    holders = storage.get_concurrency_run_ids()
    if not holders:
        return []
    records = instance.get_run_records(filters=dg.RunsFilter(run_ids=sorted(holders)))
    finished = sorted(
        r.dagster_run.run_id for r in records if r.dagster_run.is_finished and PID_TAG in r.dagster_run.tags
    )
    free_slots(instance, finished)
    return finished


def held_pools(instance: dg.DagsterInstance) -> list[tuple[str, dg.DagsterRun]]:
    """``(pool, run)`` for every pool slot an unfinished run holds: steps of that pool wait for it.

    Run after :func:`release_dead_runs`, these are live runs, runs of another host, or runs that
    carry no process tags (launched by the daemon, or by a CLI older than these tags), which
    only their owner, the UI ("Free concurrency slots") or run monitoring can release.
    """
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    claims = [(pool, slot.run_id) for pool in sorted(storage.get_concurrency_keys())
              for slot in storage.get_concurrency_info(pool).claimed_slots]
    if not claims:
        return []
    records = instance.get_run_records(filters=dg.RunsFilter(run_ids=sorted({run_id for _, run_id in claims})))
    runs = {r.dagster_run.run_id: r.dagster_run for r in records if not r.dagster_run.is_finished}
    return [(pool, runs[run_id]) for pool, run_id in claims if run_id in runs]
