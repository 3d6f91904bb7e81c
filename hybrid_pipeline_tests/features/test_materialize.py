"""``feast apply`` + ``feast materialize`` through the CLI, then online reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from feast import FeatureStore

import hybrid_pipeline.features as features_pkg

from .data import USERS, hours

PROJECT_ROOT = Path(features_pkg.__file__).resolve().parents[2]


def feast_cli(repo: Path, *commands: list[str]) -> subprocess.CompletedProcess:
    """Run Feast CLI commands (``feast <command>``) in one fresh interpreter, cwd=repo.

    Each command goes through Feast's click entry point exactly as ``feast`` does; they
    share one process only to pay Feast's ~10 s import once.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    script = (
        "import sys\n"
        "from feast.cli.cli import cli\n"
        f"for args in {[list(c) for c in commands]!r}:\n"
        "    print('$ feast', *args, flush=True)\n"
        "    cli.main(args=args, prog_name='feast', standalone_mode=False)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"feast CLI failed:\n{result.stdout}\n{result.stderr}"
    return result


def latest(rows, start, end, tie_break=None):
    """Latest row per user with start <= ts <= end, ties broken by ``tie_break``."""
    best = {}
    for r in rows:
        if not start <= r["event_timestamp"] <= end:
            continue
        key = (r["event_timestamp"], r[tie_break] if tie_break else 0)
        if r["user_id"] not in best or key > best[r["user_id"]][0]:
            best[r["user_id"]] = (key, r)
    return {u: r for u, (_, r) in best.items()}


@pytest.mark.integration
def test_cli_apply_and_materialize_then_online_features_are_the_latest_values(feature_repo):
    registry = feature_repo.path / "data" / "registry.db"
    assert not registry.exists()
    start, end = hours(-24), hours(60)  # leaves the rows of hours 61..72 out of the online store
    out = feast_cli(feature_repo.path, ["apply"], ["materialize", start.isoformat(), end.isoformat()])
    assert registry.exists()
    assert "user_activity" in out.stdout and "user_profile" in out.stdout

    store = FeatureStore(repo_path=str(feature_repo.path))
    users = [*USERS, "ghost"]
    online = store.get_online_features(
        features=store.get_feature_service("user_model_v1"),
        entity_rows=[{"user_id": u} for u in users],
    ).to_dict()

    activity = latest(feature_repo.activity, start, end, tie_break="created")
    profile = latest(feature_repo.profile, start, end)
    assert online["user_id"] == users
    assert online["clicks_1h"] == [activity[u]["clicks_1h"] if u in activity else None for u in users]
    assert online["sessions_1h"] == [activity[u]["sessions_1h"] if u in activity else None for u in users]
    assert online["segment"] == [profile[u]["segment"] if u in profile else None for u in users]
    assert online["lifetime_value"] == [profile[u]["lifetime_value"] if u in profile else None for u in users]
    # the window matters: some user's overall latest activity lies after `end`
    overall = latest(feature_repo.activity, hours(-24), hours(1000), tie_break="created")
    assert any(overall[u]["clicks_1h"] != activity[u]["clicks_1h"] for u in activity)
    assert online["segment"].count(None) == 1 + sum(u not in profile for u in USERS)
