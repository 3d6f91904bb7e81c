"""The Dagster instance on PostgreSQL (``deploy/dagster.postgres.yaml``) against the machine's real
server, and the one-line errors for a bad ``DAGSTER_PG_URL``.

Each module run creates its own database on the server (127.0.0.1:5432, trust auth; override with
HYBRID_TEST_PG_SERVER) and drops it afterwards. Without a server the PostgreSQL tests are skipped,
except in CI, where a missing server is a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml

from hybrid_pipeline.instance import InstanceConfigError, check_instance_config, check_postgres_url
from hybrid_pipeline.sources.generator import GeneratorConfig, generate
from hybrid_pipeline_tests.conftest import env_vars, fresh_pg_database

ROOT = Path(__file__).resolve().parents[1]
PG_YAML = ROOT / "deploy" / "dagster.postgres.yaml"
DAYS = ["2024-01-01", "2024-01-02", "2024-01-03"]
LIMIT_S = 300


# -- the configuration file ------------------------------------------------------------------
def test_the_postgres_instance_differs_from_the_default_only_in_its_storage():
    default = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    postgres = yaml.safe_load(PG_YAML.read_text())
    assert postgres.pop("storage") == {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}}
    assert "storage" not in default
    assert postgres == default


# -- bad settings: one line naming DAGSTER_PG_URL ----------------------------------------------
def _pg_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(PG_YAML.read_text())
    return home


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (None, "DAGSTER_PG_URL is not set"),
        ("", "DAGSTER_PG_URL is not set"),
        ("mysql://root@127.0.0.1/dagster", "DAGSTER_PG_URL is not a PostgreSQL URL"),
        ("postgresql://postgres@127.0.0.1:5432", "DAGSTER_PG_URL is not a PostgreSQL URL"),
        ("postgresql://postgres@127.0.0.1:1/dagster", "DAGSTER_PG_URL: cannot connect to PostgreSQL at 127.0.0.1:1/dagster"),
    ],
)
def test_a_bad_dagster_pg_url_is_refused_naming_the_setting(tmp_path, url, says):
    env = {} if url is None else {"DAGSTER_PG_URL": url}
    with pytest.raises(InstanceConfigError, match=says):
        check_instance_config(_pg_home(tmp_path), env)


def test_the_password_of_a_refused_url_is_not_echoed():
    with pytest.raises(InstanceConfigError) as err:
        check_postgres_url("postgresql://postgres:s3cret@127.0.0.1:1/dagster", "DAGSTER_PG_URL")
    assert "s3cret" not in str(err.value)


def test_the_default_sqlite_instance_needs_no_pg_url(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    check_instance_config(home, {})


def test_the_cli_stops_with_one_line_and_no_stack_trace(tmp_path):
    home = _pg_home(tmp_path)
    env = {**os.environ, **env_vars(tmp_path), "DAGSTER_HOME": str(home), "DAGSTER_PG_URL": "postgresql://postgres@127.0.0.1:1/nope"}
    (tmp_path / "landing").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "hybrid_pipeline.cli", "materialize", "--partition", DAYS[0]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("hybrid-pipeline: DAGSTER_PG_URL: cannot connect to PostgreSQL")


# -- the real server -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A fresh database for this module, dropped afterwards."""
    with fresh_pg_database("hybrid_test") as url:
        yield url


@pytest.fixture(scope="module")
def pg_home(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """Two small landing days and a DAGSTER_HOME holding deploy/dagster.postgres.yaml, nothing else."""
    root = tmp_path_factory.mktemp("pg")
    env = {**os.environ, **env_vars(root), "DAGSTER_PG_URL": pg_url}
    _pg_home(root)
    generate(GeneratorConfig(days=2, events_per_day=300, seed=5, start_date=date(2024, 1, 1)), root / "landing")
    previous = {k: os.environ.get(k) for k in ("DAGSTER_HOME", "DAGSTER_PG_URL")}
    os.environ.update(DAGSTER_HOME=env["DAGSTER_HOME"], DAGSTER_PG_URL=pg_url)
    try:
        yield root, env
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _start(cmd: list[str], root: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=root, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> str:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    out, _ = proc.communicate(timeout=60)
    return out or ""


def _step_spans(instance: dg.DagsterInstance, run_id: str, step: str) -> tuple[float, float]:
    """(start, end) of a step in a run, from the event log in PostgreSQL."""
    starts = [e.timestamp for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START) if e.step_key == step]
    ends = [e.timestamp for e in instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE})
            if e.step_key == step]
    assert starts and ends, f"{step} did not run in {run_id}"
    return min(starts), max(ends)


pg = pytest.mark.postgres


@pg
@pytest.mark.integration
def test_two_processes_launching_runs_at_once_share_the_pools(pg_home):
    """Two CLIs materialize two landing days at the same time against one PostgreSQL instance:
    both succeed, the pool-limited writer steps never overlap, and no slot stays claimed."""
    root, env = pg_home
    select = ["--select", 'key:"bronze/events" or key:"silver/events"']
    procs = [_start([sys.executable, "-m", "hybrid_pipeline.cli", "materialize", "--partition", day, *select], root, env)
             for day in DAYS[:2]]
    outs = []
    for proc in procs:
        try:
            outs.append(proc.communicate(timeout=LIMIT_S)[0])
        except subprocess.TimeoutExpired:
            pytest.fail(f"materialize did not finish within {LIMIT_S}s:\n{_stop(proc)}")
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)

    instance = dg.DagsterInstance.get()
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
    by_day = {r.tags.get("dagster/partition"): r for r in runs}
    assert set(DAYS[:2]) <= set(by_day)
    for step, pool in (("silver_events", "silver_writer"), ("bronze_events", "bronze_writer")):
        (a0, a1), (b0, b1) = sorted(_step_spans(instance, by_day[d].run_id, step) for d in DAYS[:2])
        assert a1 <= b0, f"{step} of both runs held pool {pool} at once"
        info = instance.event_log_storage.get_concurrency_info(pool)
        assert (info.slot_count, info.active_slot_count, info.pending_step_count) == (1, 0, 0)

    # What the runs wrote is in the server, visible to any other process.
    with psycopg2.connect(env["DAGSTER_PG_URL"]) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from runs where status = 'SUCCESS'")
        assert cur.fetchone()[0] >= 2


@pg
@pytest.mark.integration
def test_the_daemon_ticks_the_landing_sensor_and_a_restart_repeats_no_run_key(pg_home):
    """The daemon on PostgreSQL: a newly landed day gets one run (run key from its files) through
    the queued coordinator, and its pool-limited steps run; after a restart the same files launch
    nothing, because ticks, cursors and run keys live in the server."""
    root, env = pg_home
    generate(GeneratorConfig(days=1, events_per_day=300, seed=6, start_date=date.fromisoformat(DAYS[2])), root / "landing")
    instance = dg.DagsterInstance.get()

    def sensor_runs() -> list[dg.DagsterRun]:
        return instance.get_runs(filters=dg.RunsFilter(tags={"dagster/sensor_name": "landing_zone_sensor"}))

    before = {r.run_id for r in sensor_runs()}
    daemon_cmd = [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")]
    daemon = _start(daemon_cmd, root, env)
    try:
        deadline = time.monotonic() + LIMIT_S
        run = None
        while time.monotonic() < deadline:
            new = [r for r in sensor_runs() if r.run_id not in before]
            if new and new[0].is_finished:
                run = new[0]
                break
            assert daemon.poll() is None, f"the daemon exited:\n{_stop(daemon)}"
            time.sleep(2)
        if run is None:
            pytest.fail(f"no finished landing-sensor run within {LIMIT_S}s:\n{_stop(daemon, signal.SIGTERM)[-4000:]}")
        new = [r for r in sensor_runs() if r.run_id not in before]
        assert [r.tags["dagster/partition"] for r in new] == [DAYS[2]], "only the day nobody ingested yet gets a run"
        assert run.status == dg.DagsterRunStatus.SUCCESS, _stop(daemon, signal.SIGTERM)[-4000:]
        run_key = run.tags["dagster/run_key"]
        _step_spans(instance, run.run_id, "silver_events")  # the pool-limited step ran in the daemon's run
    finally:
        _stop(daemon, signal.SIGTERM)

    daemon = _start(daemon_cmd, root, env)
    try:
        time.sleep(45)  # the restarted daemon's first landing-sensor tick
        assert daemon.poll() is None, _stop(daemon)
    finally:
        _stop(daemon, signal.SIGTERM)
    assert [r.tags["dagster/run_key"] for r in sensor_runs() if r.run_id not in before] == [run_key]
