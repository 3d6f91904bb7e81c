"""The `hybrid-pipeline` command: generate landings, materialize them, exit codes that CI can trust."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybrid_pipeline.cli import main

pytestmark = pytest.mark.integration


def test_generate_writes_the_requested_days_in_their_formats(pipeline_env, capsys):
    assert main(["generate", "--days", "7", "--events-per-day", "300", "--seed", "5", "--start-date", "2024-02-01", "--no-media"]) == 0
    days = sorted(p.name for p in (pipeline_env.landing / "events").iterdir())
    assert days == [f"2024-02-0{i}" for i in range(1, 8)]
    suffixes = [next((pipeline_env.landing / "events" / d).iterdir()).suffix for d in days]
    assert suffixes == [".jsonl"] * 5 + [".csv", ".parquet"]
    assert "generated" in capsys.readouterr().out


def test_materialize_prints_a_summary_and_exits_zero_when_all_is_well(pipeline_env, capsys):
    main(["generate", "--days", "1", "--events-per-day", "400", "--start-date", "2024-02-01", "--no-media"])
    assert main(["materialize", "--all-landed"]) == 0
    out = capsys.readouterr().out
    assert "2024-02-01  ok" in out and "silver/events" in out
    # The landing day, then the feature store, then the newest day's online features, then the model jobs.
    assert "features  ok" in out and "online 2024-02-01  ok" in out and "6/6 runs succeeded" in out


def test_materialize_launches_the_models_and_prints_why_the_graph_trained_nothing(pipeline_env, capsys):
    """One landed day has no label with a complete 7-day horizon: the model assets decide not to train."""
    main(["generate", "--days", "1", "--events-per-day", "400", "--start-date", "2024-02-01", "--no-media"])
    assert main(["materialize", "--all-landed"]) == 0
    out = capsys.readouterr().out
    assert "purchase model  ok" in out and "  models/purchase_model: skipped, 0 labelled rows < 100" in out
    assert "predictions 2024-02-01  ok" in out and "  gold/predictions: skipped, no production purchase model yet" in out
    assert "digit classifier  ok" in out and "  models/digit_classifier: skipped, 0 manifest images < 100" in out
    # The same outcome as a materialization in the UI: no version, no promotion, no scores.
    assert not pipeline_env.lakehouse.exists("gold/predictions")
    assert not Path(pipeline_env.settings.model_registry_uri.removeprefix("sqlite:///")).exists()


def test_materialize_shows_one_progress_line_per_run_and_reports_schema_drift_once(pipeline_env, capsys):
    main(["generate", "--days", "2", "--events-per-day", "2000", "--dirty-rate", "0.05",
          "--start-date", "2024-02-01", "--no-media"])
    capsys.readouterr()
    assert main(["materialize", "--all-landed"]) == 0
    captured = capsys.readouterr()
    progress = [line for line in captured.err.splitlines() if line.startswith("[")]
    assert [line.split()[0] for line in progress] == [f"[{i}/7]" for i in range(1, 8)]
    assert progress[0].split()[1:3] == ["2024-02-01", "ok"] and "rows" in progress[0]
    # The generated dirt carries a field outside the contract: one finding in the summary,
    # not a warning per landing day.
    assert captured.out.count("schema drift:") == 1 and "campaign" in captured.out
    warnings = [line for line in (captured.err + captured.out).splitlines() if " WARNING " in line]
    assert not [line for line in warnings if "drift" in line]


def test_materialize_exits_non_zero_when_an_error_check_fails(pipeline_env, capsys):
    day = pipeline_env.landing / "events" / "2024-02-02"
    day.mkdir(parents=True)
    good = '{"event_id":"e%d","user_id":"u1","session_id":"s1","event_type":"view","timestamp":"2024-02-02T10:00:00Z","product_id":"p1","session_duration":1.0,"revenue":null,"user_segment":"new","email":"a@b.c"}'
    lines = [good % i for i in range(40)] + ["{not json"] * 60  # 60% quarantined: above the ERROR threshold
    (day / "events.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["materialize", "--partition", "2024-02-02"]) == 1
    out = capsys.readouterr().out
    assert "check silver/events:quarantine_rate: failed (ERROR)" in out
    assert "FAILED" in out
    # The blocking check stopped gold: nothing downstream was written.
    assert not pipeline_env.lakehouse.exists("gold/daily_metrics")


def test_materialize_without_partitions_or_with_an_unknown_one_is_an_error(pipeline_env):
    assert main(["materialize"]) == 2
    with pytest.raises(SystemExit, match="not a daily partition"):
        main(["materialize", "--partition", "1999-01-01"])


def test_materialize_select_limits_the_run_to_the_selection(pipeline_env):
    main(["generate", "--days", "1", "--events-per-day", "200", "--start-date", "2024-02-01", "--no-media"])
    assert main(["materialize", "--partition", "2024-02-01", "--select", "key:bronze/*"]) == 0
    assert pipeline_env.lakehouse.exists("bronze/events")
    assert not pipeline_env.lakehouse.exists("silver/events")
