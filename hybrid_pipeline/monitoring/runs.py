"""Run outcomes per job over a trailing window: the figures the run monitor plots over time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


def run_outcomes(runs: Iterable[tuple[str, str]]) -> dict[str, float | int]:
    """``(job_name, status)`` of finished runs -> flat, plottable counts.

    Keys are ``<job>/succeeded``, ``<job>/failed`` (failed or canceled) per job, plus
    ``all/succeeded``, ``all/failed`` and ``all/success_rate`` (1.0 when nothing ran: no
    run failed).
    """
    counts: Counter[tuple[str, str]] = Counter()
    for job, status in runs:
        if status not in FINISHED:
            continue
        outcome = "succeeded" if status == "SUCCESS" else "failed"
        counts[(job, outcome)] += 1
        counts[("all", outcome)] += 1
    jobs = sorted({job for job, _ in counts} - {"all"}) + ["all"]
    out: dict[str, float | int] = {}
    for job in jobs:
        out[f"{job}/succeeded"] = counts[(job, "succeeded")]
        out[f"{job}/failed"] = counts[(job, "failed")]
    finished = out["all/succeeded"] + out["all/failed"]
    out["all/success_rate"] = round(out["all/succeeded"] / finished, 4) if finished else 1.0
    return out
