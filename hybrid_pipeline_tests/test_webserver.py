"""The UI: `dagster-webserver -w workspace.yaml` serves the whole graph and launches runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest
import requests

from hybrid_pipeline.sources.generator import GeneratorConfig, generate

pytestmark = [pytest.mark.integration, pytest.mark.webserver]

PROJECT = Path(__file__).resolve().parents[1]
EXPECTED_ASSETS = {
    "bronze/events",
    "bronze/landed_files",
    "silver/events",
    "silver/events_quarantine",
    "silver/events_duplicates",
    "gold/daily_metrics",
    "gold/fact_events",
    "gold/user_landing_summary",
    "gold/dim_user",
    "gold/dim_date",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gql(url: str, query: str, variables: dict | None = None) -> dict:
    resp = requests.post(url, json={"query": query, "variables": variables or {}}, timeout=60)
    resp.raise_for_status()
    body = resp.json()
    assert "errors" not in body, body
    return body["data"]


@pytest.fixture
def webserver(pipeline_env):
    # The run coordinator here launches immediately (no daemon in the test); the project's
    # dagster.yaml with the queued coordinator is checked in test_instance_config.
    home = pipeline_env.root / "dagster_home"
    (home / "dagster.yaml").write_text(
        "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: DefaultRunCoordinator\n"
        "telemetry:\n  enabled: false\n"
    )
    generate(GeneratorConfig(days=1, events_per_day=500, seed=1, start_date=date(2024, 1, 1)), pipeline_env.landing)
    port = _free_port()
    log = open(pipeline_env.root / "webserver.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-w", str(PROJECT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT,
        env={**os.environ},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if requests.get(f"{base}/server_info", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None:
                raise RuntimeError((pipeline_env.root / "webserver.log").read_text())
            time.sleep(1)
        else:
            raise TimeoutError("webserver did not start")
        yield f"{base}/graphql", pipeline_env
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_webserver_lists_every_asset_and_launches_a_partitioned_materialization(webserver):
    url, env = webserver
    nodes = _gql(url, "{ assetNodes { assetKey { path } groupName } }")["assetNodes"]
    listed = {"/".join(n["assetKey"]["path"]) for n in nodes}
    assert EXPECTED_ASSETS <= listed

    launched = _gql(
        url,
        """
        mutation Launch($params: ExecutionParams!) {
          launchRun(executionParams: $params) {
            __typename
            ... on LaunchRunSuccess { run { runId } }
            ... on PythonError { message }
            ... on RunConfigValidationInvalid { errors { message } }
          }
        }
        """,
        {
            "params": {
                "selector": {
                    "repositoryLocationName": "hybrid_pipeline",
                    "repositoryName": "__repository__",
                    "jobName": "daily_pipeline",
                    "assetSelection": [{"path": ["bronze", "events"]}, {"path": ["bronze", "landed_files"]}],
                },
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "2024-01-01"}]},
            }
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    status = None
    deadline = time.time() + 120
    while time.time() < deadline:
        run = _gql(url, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})
        status = run["runOrError"]["status"]
        if status in {"SUCCESS", "FAILURE", "CANCELED"}:
            break
        time.sleep(2)
    assert status == "SUCCESS"
    landed = (env.landing / "events" / "2024-01-01" / "events-0000.jsonl").read_text().count("\n")
    assert env.lakehouse.read("bronze/events").height == landed
