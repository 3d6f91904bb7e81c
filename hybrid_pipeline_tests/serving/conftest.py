"""Fixtures: a SQLite online store with a few users, and serving apps over it."""

from __future__ import annotations

import warnings
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prometheus_client import values

from hybrid_pipeline.online import OnlineReader, OnlineWriter
from hybrid_pipeline.serving import create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette: "use httpx2" deprecation
    from fastapi.testclient import TestClient

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
VIEW = "user_features"
API_KEY = "s3cret-key"
USERS = {
    "u1": {"clicks": 10, "revenue": 12.5, "segment": "power", "recent": ["p1", "p2"]},
    "u2": {"clicks": 0, "revenue": None, "segment": "new", "recent": []},
    "odd.id:with-all_chars": {"clicks": 3, "revenue": float("nan"), "segment": "casual", "recent": ["p9"]},
}


@pytest.fixture(autouse=True)
def in_memory_metric_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Metric values in memory, as in the ``serve`` process (which imports no Feast).

    ``import feast`` sets ``PROMETHEUS_MULTIPROC_DIR``; when that happens before prometheus-client is
    first imported, as in a full test run, every metric value of the process lives in a file keyed by
    metric name and labels, and apps built one after another would start from each other's counts.
    prometheus-client looks ``values.ValueClass`` up when a labelled child is created, so tests can swap it.
    """
    monkeypatch.setattr(values, "ValueClass", values.MutexValue)


@pytest.fixture
def reader(tmp_path: Path):
    url = f"sqlite://{tmp_path / 'online.db'}"
    with OnlineWriter.from_url(url, "proj") as writer:
        writer.write_records(VIEW, [(u, f, T0, None) for u, f in USERS.items()])
    r = OnlineReader.from_url(url, "proj")
    yield r
    r.close()


def mean_clicks_predictor(rows: list[dict]) -> list[float]:
    return [row["clicks"] / 10 for row in rows]


@pytest.fixture
def client(reader):
    """No API key, with a predictor."""
    with TestClient(create_app(reader, VIEW, predictor=mean_clicks_predictor), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def keyed_client(reader):
    with TestClient(create_app(reader, VIEW, api_key=API_KEY), raise_server_exceptions=False) as c:
        yield c
