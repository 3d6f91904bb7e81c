"""`hybrid-pipeline serve`: the app it builds serves batch and streaming features with an honest event time,
from the online store the settings name, without importing Dagster or Feast."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import hybrid_pipeline.serving as serving
import hybrid_pipeline.serving.server as server
from hybrid_pipeline.cli import main
from hybrid_pipeline.features.catalog import PROJECT
from hybrid_pipeline.features.streaming import VIEW as STREAMING_VIEW
from hybrid_pipeline.features.streaming import merge_window
from hybrid_pipeline.online import OnlineWriter

from .conftest import TestClient

BATCH_TS = datetime(2024, 3, 1, tzinfo=timezone.utc)
STREAM_TS = BATCH_TS + timedelta(days=1, minutes=30)  # streaming counts pushed a day after the batch features
OLD_STREAM_TS = BATCH_TS - timedelta(hours=5)  # counts last pushed before the batch features were written


def streaming_record(now: datetime, events: int, revenue: float) -> dict:
    """An online streaming record as the stream's push writes it."""
    return merge_window(None, {int(now.timestamp() // 60): (events, revenue)}, now, batch_id="b" * 64)


@pytest.fixture
def served_app(pipeline_env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The app `hybrid-pipeline serve` builds over the pipeline's SQLite online store, not started."""
    settings = pipeline_env.settings
    with OnlineWriter.from_url(settings.online_store.url, PROJECT) as writer:
        writer.write_records("user_features", [
            ("both", {"clicks": 4}, BATCH_TS, None),
            ("stale_stream", {"clicks": 2}, BATCH_TS, None),
            ("batch_only", {"clicks": 1}, BATCH_TS, None),
        ])
        writer.write_records(STREAMING_VIEW, [
            ("both", streaming_record(STREAM_TS, 3, 5.0), STREAM_TS, None),
            ("stale_stream", streaming_record(OLD_STREAM_TS, 7, 0.0), OLD_STREAM_TS, None),
            ("stream_only", streaming_record(STREAM_TS, 1, 0.0), STREAM_TS, None),
        ])
    built: dict[str, Any] = {}
    for module in (serving, server):  # the command gets the app ready, then would serve it forever
        monkeypatch.setattr(module, "run_server", lambda app, **kwargs: built.setdefault("app", app))
    monkeypatch.delenv("HYBRID_SERVING_API_KEY", raising=False)
    assert main(["serve", "--port", "0"]) == 0
    yield built["app"]
    built["app"].state.reader.close()


def test_serve_answers_the_oldest_event_time_of_the_features_it_merges(served_app):
    with TestClient(served_app) as client:
        both = client.get("/features/both").json()
        assert both["features"] == {"clicks": 4, "events_1h": 3, "revenue_1h": 5.0}
        # The batch features are a day older than the streaming counts: the record is as stale as its batch part.
        assert both["event_timestamp"] == BATCH_TS.isoformat()
        # Counts not pushed for hours are as old as their last push, even next to newer batch features.
        assert client.get("/features/stale_stream").json()["event_timestamp"] == OLD_STREAM_TS.isoformat()
        assert client.get("/features/batch_only").json()["event_timestamp"] == BATCH_TS.isoformat()
        assert client.get("/features/stream_only").json()["event_timestamp"] == STREAM_TS.isoformat()


def test_serve_batch_lookups_carry_the_same_event_times(served_app):
    with TestClient(served_app) as client:
        body = client.post("/features", json={"user_ids": ["both", "stream_only", "nobody"]}).json()
    assert [(r["user_id"], r["event_timestamp"]) for r in body["results"]] == [
        ("both", BATCH_TS.isoformat()), ("stream_only", STREAM_TS.isoformat()), ("nobody", None),
    ]


def test_serve_reads_the_online_store_the_settings_name(served_app, pipeline_env):
    assert served_app.state.reader.reader.backend.path == str(pipeline_env.settings.online_store.sqlite_path)


BUILD_THE_SERVE_APP = """
import sys
import hybrid_pipeline.serving.server as server
built = {}
server.run_server = lambda app, **kwargs: built.setdefault("app", app)  # build it, do not serve it
from hybrid_pipeline.cli import main
assert main(["serve", "--port", "0"]) == 0 and "app" in built
from prometheus_client import values
print(sorted(m for m in ("dagster", "feast") if m in sys.modules), values.ValueClass is values.MutexValue)
"""


def test_serve_imports_neither_dagster_nor_feast(pipeline_env):
    """No Dagster or Feast import in the serving process (seconds at start-up; and ``import feast`` would switch
    prometheus-client to multiprocess mode, where metric values are per process and name, not per app)."""
    # pipeline_env's environment, less the multiprocess directory an ``import feast`` in this test process sets
    multiprocess = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")
    env = {k: v for k, v in os.environ.items() if k.upper() not in multiprocess}
    proc = subprocess.run([sys.executable, "-c", BUILD_THE_SERVE_APP], cwd=Path(__file__).resolve().parents[2],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[] True", proc.stdout


def test_python_m_serving_defaults_to_the_online_store_the_settings_name(pipeline_env, monkeypatch):
    built: dict[str, Any] = {}
    monkeypatch.setattr(server, "run_server", lambda app, *args, **kwargs: built.setdefault("app", app))
    server.main(["--project", PROJECT, "--view", "user_features"])
    reader = built["app"].state.reader
    try:
        assert reader.backend.path == str(pipeline_env.settings.online_store.sqlite_path)
    finally:
        reader.close()
