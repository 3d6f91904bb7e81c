"""The landing-zone watcher: new contents trigger runs once, by landing day, with bounded work."""

from __future__ import annotations

import json
import os
import shutil

from hybrid_pipeline.sources.landing_watch import plan_landing_runs


def _land(root, day, name, text):
    d = root / "events" / day
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text)
    return d / name


def test_new_files_produce_one_run_per_landing_day(tmp_path):
    _land(tmp_path, "2024-01-01", "a.jsonl", "{}\n")
    _land(tmp_path, "2024-01-01", "b.jsonl", "{\"x\":1}\n")
    _land(tmp_path, "2024-01-02", "c.jsonl", "{\"x\":2}\n")
    runs, _ = plan_landing_runs(tmp_path, None)
    assert [(r.landing_date, sorted(r.files)) for r in runs] == [
        ("2024-01-01", ["2024-01-01/a.jsonl", "2024-01-01/b.jsonl"]),
        ("2024-01-02", ["2024-01-02/c.jsonl"]),
    ]
    assert len({r.run_key for r in runs}) == 2


def test_the_same_file_again_or_a_renamed_copy_triggers_nothing(tmp_path):
    path = _land(tmp_path, "2024-01-01", "a.jsonl", "{}\n")
    _, cursor = plan_landing_runs(tmp_path, None)
    assert plan_landing_runs(tmp_path, cursor)[0] == []
    shutil.copy(path, tmp_path / "events" / "2024-01-01" / "renamed.jsonl")
    os.makedirs(tmp_path / "events" / "2024-01-03")
    shutil.copy(path, tmp_path / "events" / "2024-01-03" / "again.jsonl")
    assert plan_landing_runs(tmp_path, cursor)[0] == []


def test_a_changed_file_is_new_content(tmp_path):
    path = _land(tmp_path, "2024-01-01", "a.jsonl", "{}\n")
    _, cursor = plan_landing_runs(tmp_path, None)
    path.write_text("{\"changed\":true}\n")
    os.utime(path, ns=(1, 1))
    runs, _ = plan_landing_runs(tmp_path, cursor)
    assert [r.landing_date for r in runs] == ["2024-01-01"]


def test_work_per_tick_is_bounded_and_the_cursor_resumes(tmp_path):
    for i in range(5):
        _land(tmp_path, "2024-01-01", f"f{i}.jsonl", f"{{\"i\":{i}}}\n")
    runs1, cursor = plan_landing_runs(tmp_path, None, max_files=2)
    runs2, cursor = plan_landing_runs(tmp_path, cursor, max_files=2)
    runs3, cursor = plan_landing_runs(tmp_path, cursor, max_files=2)
    runs4, _ = plan_landing_runs(tmp_path, cursor, max_files=2)
    assert [len(r.files) for r in runs1 + runs2 + runs3] == [2, 2, 1]
    assert runs4 == []
    assert len(json.loads(cursor)["files"]) == 5


def test_contents_already_ingested_trigger_nothing_even_without_a_cursor(tmp_path):
    """Bronze's ledger knows contents this watcher never saw (ingested from the shell)."""
    from hybrid_pipeline.sources.landing import file_sha256

    ingested = _land(tmp_path, "2024-01-01", "a.jsonl", "{}\n")
    _land(tmp_path, "2024-01-02", "b.jsonl", "{\"x\":1}\n")
    runs, cursor = plan_landing_runs(tmp_path, None, ingested={file_sha256(ingested)})
    assert [(r.landing_date, r.files) for r in runs] == [("2024-01-02", ("2024-01-02/b.jsonl",))]
    assert plan_landing_runs(tmp_path, cursor, ingested=set())[0] == []
