"""The project is a `dg` project, and its asset graph is pinned by a committed snapshot.

`dg check defs` must load the code location, and what `dg list defs --json` reports (assets,
asset checks, jobs, schedules, sensors, resources), completed from the Definitions object
with what the listing leaves out (pools, op tags, partitions, freshness, check automation,
schedule and sensor targets), must equal `snapshots/defs.json`. A change to the graph then
shows up as a reviewed diff of that file instead of slipping through. After an intended change:

    HYBRID_UPDATE_SNAPSHOT=1 .venv/bin/python -m pytest hybrid_pipeline_tests/test_dg_project.py
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

PROJECT = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "defs.json"
UPDATE_VAR = "HYBRID_UPDATE_SNAPSHOT"
# Read once at collection: the fixtures below clear HYBRID_* settings from the environment.
UPDATE_SNAPSHOT = os.environ.get(UPDATE_VAR) == "1"
UPDATE_COMMAND = f"{UPDATE_VAR}=1 .venv/bin/python -m pytest hybrid_pipeline_tests/test_dg_project.py"
DG = Path(sys.executable).parent / "dg"
DG_TIMEOUT_S = 300

Json = dict[str, Any]


def _project_env(root: Path) -> dict[str, str]:
    """The environment `dg` and the definitions see: every setting pinned to a temp dir or its
    default, so the snapshot never depends on the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_") and k != "DAGSTER_HOME"}
    (root / "dagster_home").mkdir(parents=True, exist_ok=True)
    env.update(
        DAGSTER_HOME=str(root / "dagster_home"),
        HYBRID_LANDING_DIR=str(root / "landing"),
        HYBRID_LAKEHOUSE_ROOT=str(root / "lakehouse"),
        HYBRID_FEATURE_REPO=str(root / "feature_repo"),
        HYBRID_START_DATE="2024-01-01",
        HYBRID_ENGINE="polars",
        HYBRID_ONLINE_STORE="sqlite",
        # `dg` warns when the active environment is not the project's .venv; the tests run in it.
        VIRTUAL_ENV=sys.prefix,
    )
    return env


def _dg(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    assert DG.exists(), f"{DG} not found: dagster-dg-cli is a dependency (pip install -e '.[dev]')"
    return subprocess.run(
        [str(DG), *args], cwd=PROJECT, env=dict(env), capture_output=True, text=True, timeout=DG_TIMEOUT_S
    )


# ---- normalising what `dg list defs --json` reports ------------------------------------------


def _sorted_tags(tags: list[Json] | None) -> list[Json]:
    return sorted(tags or [], key=lambda t: (t["key"], t.get("value", "")))


def _listed_asset(asset: Json) -> Json:
    return {
        **asset,
        "kinds": sorted(asset.get("kinds", [])),
        "dependency_keys": sorted(asset.get("dependency_keys", [])),
        "owners": sorted(asset.get("owners", []), key=json.dumps),
        "tags": _sorted_tags(asset.get("tags")),
    }


def _listed_check(check: Json) -> Json:
    return {**check, "additional_deps": sorted(check.get("additional_deps", []))}


# ---- what the listing leaves out, read from the Definitions object ---------------------------


def _timedelta(value: Any) -> str | None:
    """Freshness windows are stored as serialisable timedeltas; `str(timedelta)` reads best."""
    if value is None:
        return None
    return str(timedelta(days=value.days, seconds=value.seconds, microseconds=value.microseconds))


def _freshness(policy: Any) -> Json | None:
    if policy is None:
        return None
    name = type(policy).__name__
    if name == "TimeWindowFreshnessPolicy":
        return {"type": name, "fail_window": _timedelta(policy.fail_window), "warn_window": _timedelta(policy.warn_window)}
    if name == "CronFreshnessPolicy":
        return {
            "type": name,
            "deadline_cron": policy.deadline_cron,
            "lower_bound_delta": str(policy.lower_bound_delta),
            "timezone": policy.timezone,
        }
    return {"type": name, "repr": repr(policy)}


def _partitions(partitions_def: dg.PartitionsDefinition | None) -> Json | None:
    if partitions_def is None:
        return None
    name = type(partitions_def).__name__
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        return {
            "type": name,
            "cron_schedule": partitions_def.cron_schedule,
            "start": partitions_def.start.isoformat(),
            "end": partitions_def.end.isoformat() if partitions_def.end else None,
            "end_offset": partitions_def.end_offset,
            "fmt": partitions_def.fmt,
            "timezone": partitions_def.timezone,
        }
    if isinstance(partitions_def, dg.StaticPartitionsDefinition):
        return {"type": name, "keys": list(partitions_def.get_partition_keys())}
    return {"type": name, "repr": repr(partitions_def)}


def _expanded_label(condition: dg.AutomationCondition, use_label: bool = False) -> list[str]:
    """The same rendering `dg list defs` gives an asset's automation condition, for checks."""
    label = condition.get_label()
    if use_label and label is not None:
        return [label]
    text = condition.name or condition.description
    children = [f"({' '.join(_expanded_label(c, use_label=True))})" for c in condition.children]
    if not children:
        return [text]
    if len(children) == 1:
        return [text, children[0]]
    rendered: list[str] = []
    for child in children:
        rendered += [child, text]
    return rendered[:-1]


def _automation(condition: dg.AutomationCondition | None) -> Json | None:
    if condition is None:
        return None
    return {"label": condition.get_label(), "expanded_label": _expanded_label(condition)}


def _compute(node_def: dg.OpDefinition | dg.GraphDefinition) -> Json:
    """Where a step runs: its pool (one step at a time per pool) and op tags (k8s GPU requests)."""
    pool = node_def.pool if isinstance(node_def, dg.OpDefinition) else None
    return {"pool": pool, "op_tags": dict(sorted(node_def.tags.items()))}


def _resolved(selection: dg.AssetSelection, graph: Any) -> Json:
    """Sorted asset and check keys: a selection's own text can list keys in set (hash) order."""
    return {
        "assets": sorted(key.to_user_string() for key in selection.resolve(graph)),
        "asset_checks": sorted(key.to_user_string() for key in selection.resolve_checks(graph)),
    }


def _in_process(defs: dg.Definitions) -> dict[str, dict[str, Json]]:
    """Per section and name, the fields `dg list defs --json` does not report."""
    assets: dict[str, Json] = {}
    checks: dict[str, Json] = {}
    for spec in defs.resolve_all_asset_specs():
        assets[spec.key.to_user_string()] = {
            "partitions": _partitions(spec.partitions_def),
            "freshness_policy": _freshness(spec.freshness_policy),
            "pool": None,
            "op_tags": {},
        }
    for assets_def in [*(defs.assets or []), *(defs.asset_checks or [])]:
        if not isinstance(assets_def, dg.AssetsDefinition):
            continue  # an AssetSpec: nothing executes it
        compute = _compute(assets_def.node_def)
        for key in assets_def.keys:
            assets[key.to_user_string()].update(compute)
        for check in assets_def.check_specs:
            checks[check.key.to_user_string()] = {
                "blocking": check.blocking,
                "automation_condition": _automation(check.automation_condition),
                "partitions": _partitions(check.partitions_def),
                **compute,
            }
    graph = defs.resolve_asset_graph()
    jobs = {
        # An op job (maintenance) selects no assets; an asset job is what its selection resolves to.
        job.name: {"selects": None if isinstance(job, dg.JobDefinition) else _resolved(job.selection, graph)}
        for job in defs.jobs or []
    }
    schedules = {
        schedule.name: {
            "job_name": schedule.job_name,
            "execution_timezone": schedule.execution_timezone,
            "default_status": schedule.default_status.value,
        }
        for schedule in defs.schedules or []
    }
    sensors = {
        sensor.name: {
            "type": type(sensor).__name__,
            "default_status": sensor.default_status.value,
            "minimum_interval_seconds": sensor.minimum_interval_seconds,
            "job_names": sorted(job.name for job in sensor.jobs) if sensor.has_jobs else [],
            "selects": _resolved(sensor.asset_selection, graph) if sensor.asset_selection is not None else None,
        }
        for sensor in defs.sensors or []
    }
    return {"assets": assets, "asset_checks": checks, "jobs": jobs, "schedules": schedules, "sensors": sensors}


# The sections of `dg list defs --json` and the field that names an entry in each.
ID_FIELDS = {
    "assets": "asset_key",
    "asset_checks": "key",
    "jobs": "name",
    "schedules": "name",
    "sensors": "name",
    "resources": "name",
}


def build_snapshot(listed: Json, defs: dg.Definitions) -> Json:
    """`dg list defs --json`, normalised and sorted, each entry completed from ``defs``."""
    extra = _in_process(defs)
    normalisers: dict[str, Any] = {"assets": _listed_asset, "asset_checks": _listed_check}
    snapshot: Json = {}
    for section, id_field in ID_FIELDS.items():
        normalise = normalisers.get(section, dict)
        entries = sorted((normalise(e) for e in listed.get(section, [])), key=lambda e: e[id_field])
        in_process = extra.get(section)
        if in_process is not None:
            names = [e[id_field] for e in entries]
            assert sorted(in_process) == names, f"{section}: dg lists {names}, the Definitions hold {sorted(in_process)}"
            entries = [{**e, **in_process[e[id_field]]} for e in entries]
        snapshot[section] = entries
    return snapshot


def snapshot_text(snapshot: Json) -> str:
    return json.dumps(snapshot, indent=2, sort_keys=True) + "\n"


def changed_entries(expected: Json, actual: Json) -> list[str]:
    """One line per added, removed or changed entry: the diff's hunks rarely show the entry's name."""
    lines = []
    for section, id_field in ID_FIELDS.items():
        old = {e[id_field]: e for e in expected.get(section, [])}
        new = {e[id_field]: e for e in actual.get(section, [])}
        for name in sorted(old.keys() | new.keys()):
            if old.get(name) != new.get(name):
                state = "added" if name not in old else "removed" if name not in new else "changed"
                lines.append(f"  {section}: {name} ({state})")
    return lines


def snapshot_mismatch(expected: str, actual: str) -> str | None:
    """``None`` when equal, else what changed and a unified diff, ending with how to accept it."""
    if expected == actual:
        return None
    summary = "\n".join(changed_entries(json.loads(expected), json.loads(actual)))
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True), actual.splitlines(keepends=True), "committed snapshot", "current graph"
        )
    )
    return (
        f"The asset graph differs from {SNAPSHOT.relative_to(PROJECT)}:\n{summary}\n{diff}\n"
        f"If the change is intended, rewrite the snapshot and commit it:\n    {UPDATE_COMMAND}"
    )


# ---- the specification ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _project_env(tmp_path_factory.mktemp("dg_project"))


@pytest.fixture(scope="module")
def current_snapshot(project_env: dict[str, str]) -> Iterator[Json]:
    listing = _dg(project_env, "list", "defs", "--json")
    assert listing.returncode == 0, f"dg list defs --json failed:\n{listing.stderr[-4000:]}"
    listed = json.loads(listing.stdout)
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if k.startswith("HYBRID_")]:
            mp.delenv(name)
        for name, value in project_env.items():
            mp.setenv(name, value)
        from hybrid_pipeline.definitions import defs

        yield build_snapshot(listed, defs())


def test_dg_check_defs_loads_the_code_location(project_env: dict[str, str]) -> None:
    result = _dg(project_env, "check", "defs")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def test_settings_are_read_when_dg_loads_the_location_not_at_import(project_env: dict[str, str]) -> None:
    env = {**project_env, "HYBRID_START_DATE": "not-a-date"}
    imported = subprocess.run(
        [sys.executable, "-c", "import hybrid_pipeline.definitions"],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=DG_TIMEOUT_S,
    )
    assert imported.returncode == 0, imported.stderr[-4000:]
    loaded = _dg(env, "check", "defs")
    assert loaded.returncode != 0
    assert "HYBRID_START_DATE must be YYYY-MM-DD" in loaded.stdout + loaded.stderr


def test_the_asset_graph_matches_the_committed_snapshot(current_snapshot: Json) -> None:
    actual = snapshot_text(current_snapshot)
    if UPDATE_SNAPSHOT:
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(actual)
        return
    assert SNAPSHOT.exists(), f"{SNAPSHOT.relative_to(PROJECT)} is missing; create it with:\n    {UPDATE_COMMAND}"
    mismatch = snapshot_mismatch(SNAPSHOT.read_text(), actual)
    assert mismatch is None, mismatch


def test_the_snapshot_records_what_dg_does_not_list(current_snapshot: Json) -> None:
    assets = {a["asset_key"]: a for a in current_snapshot["assets"]}
    checks = {c["key"]: c for c in current_snapshot["asset_checks"]}
    silver = assets["silver/events"]
    assert silver["partitions"]["start"].startswith("2024-01-01")
    assert silver["partitions"]["cron_schedule"] == "0 0 * * *"
    assert silver["freshness_policy"]["fail_window"] == "1 day, 2:00:00"
    assert assets["models/purchase_model"]["pool"] == "gpu"
    assert assets["models/purchase_model"]["automation_condition"]["label"]
    assert checks["silver/events:row_conservation"]["blocking"] is True
    assert checks["gold/user_features:feature_drift"]["automation_condition"]["expanded_label"]
    assert {s["name"]: s["default_status"] for s in current_snapshot["sensors"]}["models_automation_sensor"] == "RUNNING"


def test_a_changed_graph_fails_with_a_diff_and_the_update_command() -> None:
    committed = snapshot_text({"assets": [{"asset_key": "silver/events", "pool": "silver_writer"}]})
    changed = snapshot_text({"assets": [{"asset_key": "silver/events", "pool": None}]})
    assert snapshot_mismatch(committed, committed) is None
    message = snapshot_mismatch(committed, changed)
    assert message is not None
    assert "  assets: silver/events (changed)" in message
    assert '-      "pool": "silver_writer"' in message
    assert '+      "pool": null' in message
    assert message.rstrip().endswith(UPDATE_COMMAND)
