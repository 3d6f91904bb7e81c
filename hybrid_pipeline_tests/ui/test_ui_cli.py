"""`hybrid-pipeline ui mlflow|feast` refuses what it cannot serve in one line, with a non-zero exit
and no stack trace: no store yet, a port in use, a setting it cannot parse."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from hybrid_pipeline_tests.conftest import env_vars

from .conftest import cli, free_port


@pytest.fixture
def empty_env(tmp_path: Path) -> dict[str, str]:
    """Settings of a project where `make run` never ran."""
    return {**os.environ, **env_vars(tmp_path)}


def refused(result, *phrases: str) -> str:
    """The one line the command printed; it exited 2 with no traceback and said each phrase."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def test_mlflow_ui_without_a_store_says_to_run_the_pipeline_first(empty_env, tmp_path):
    line = refused(cli("ui", "mlflow", "--port", str(free_port()), env=empty_env), "no MLflow store", "make run")
    assert str(tmp_path / "mlflow" / "mlflow.db") in line  # the store the settings name
    assert not (tmp_path / "mlflow").exists()  # looking created nothing


def test_feast_ui_without_a_repo_says_to_run_the_pipeline_first(empty_env, tmp_path):
    line = refused(cli("ui", "feast", "--port", str(free_port()), env=empty_env), "no Feast repo", "make run")
    assert str(tmp_path / "feature_repo") in line


def test_feast_ui_over_a_repo_never_applied_names_the_missing_registry(empty_env, tmp_path):
    repo = tmp_path / "feature_repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text("project: hybrid_pipeline\nregistry: data/registry.db\nprovider: local\n")
    refused(cli("ui", "feast", "--port", str(free_port()), env=empty_env),
            "has no registry yet", str(repo / "data" / "registry.db"), "make run")


def test_a_port_in_use_is_refused_before_anything_starts(empty_env, tmp_path):
    repo = tmp_path / "feature_repo"
    (repo / "data").mkdir(parents=True)
    (repo / "feature_store.yaml").write_text("project: hybrid_pipeline\nregistry: data/registry.db\nprovider: local\n")
    (repo / "data" / "registry.db").write_bytes(b"\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused(cli("ui", "feast", "--port", str(port), env=empty_env), f"port {port}", "in use", "--port")


def test_a_bad_port_or_setting_is_one_line_too(empty_env):
    refused(cli("ui", "mlflow", "--port", "70000", env=empty_env), "--port 70000")
    refused(cli("ui", "feast", env={**empty_env, "HYBRID_ENGINE": "duckdb"}), "HYBRID_ENGINE")
