"""Run outcomes are counted per job, failures include cancellations, unfinished runs are ignored."""

from hybrid_pipeline.monitoring.runs import run_outcomes


def test_outcomes_are_counted_per_job_and_overall():
    runs = [("daily", "SUCCESS"), ("daily", "SUCCESS"), ("daily", "FAILURE"), ("models", "CANCELED"), ("models", "STARTED")]

    out = run_outcomes(runs)

    assert out == {
        "daily/succeeded": 2,
        "daily/failed": 1,
        "models/succeeded": 0,
        "models/failed": 1,
        "all/succeeded": 2,
        "all/failed": 2,
        "all/success_rate": 0.5,
    }


def test_no_finished_run_means_nothing_failed():
    assert run_outcomes([("daily", "QUEUED")]) == {"all/succeeded": 0, "all/failed": 0, "all/success_rate": 1.0}
