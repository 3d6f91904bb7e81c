"""A killed `hybrid-pipeline materialize` blocks nothing: the next one fails its dead run and frees
its pool slots before launching, and a CLI waiting for a slot stops cleanly on SIGTERM or Ctrl-C.

Each CLI runs as a subprocess in its own process group, against a DAGSTER_HOME holding the
project's dagster.yaml. To stop a CLI exactly inside a pooled step, the instance of the run to
crash gets one more logging handler (``python_logs``): it holds the step once the materialization
of the asset is in the event log, and the test, which polls that event log, then kills the group.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.sources.generator import GeneratorConfig, generate
from hybrid_pipeline_tests.conftest import env_vars

pytestmark = pytest.mark.integration

PROJECT_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"
DAYS = ["2024-01-01", "2024-01-02"]
CRASH_DAY = DAYS[0]
RUN_LIMIT_S = 180  # a CLI of two small days takes well under a minute on two cores
WALL_CLOCK_COLUMNS = {"ingested_at"}  # when a row was ingested: differs between any two runs


class HoldAfterMaterialization(logging.Handler):
    """Holds the step that logged a materialization of ``asset_key`` (a ``python_logs`` handler of
    the instance, which Dagster calls after the event log stored the event)."""

    def __init__(self, asset_key: str) -> None:
        super().__init__()
        self.asset_key = dg.AssetKey.from_user_string(asset_key)

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "dagster_meta", {}).get("dagster_event")
        if event is None or event.event_type_value != "ASSET_MATERIALIZATION":
            return
        if event.asset_key == self.asset_key:
            time.sleep(RUN_LIMIT_S)


@dataclass
class Home:
    root: Path
    env: dict[str, str]

    @property
    def dagster_home(self) -> Path:
        return Path(self.env["DAGSTER_HOME"])

    @property
    def lakehouse(self) -> Lakehouse:
        return Lakehouse(self.env["HYBRID_LAKEHOUSE_ROOT"])

    def configure(self, hold_after: str | None = None) -> None:
        """The project's dagster.yaml, plus the holding handler when ``hold_after`` names an asset."""
        text = PROJECT_YAML.read_text()
        if hold_after:
            text += (
                "\npython_logs:\n  dagster_handler_config:\n    handlers:\n      hold:\n"
                f"        class: {__name__}.HoldAfterMaterialization\n        asset_key: {hold_after}\n"
            )
        (self.dagster_home / "dagster.yaml").write_text(text)

    def start(self, *partitions: str) -> subprocess.Popen:
        args = [arg for p in partitions for arg in ("--partition", p)]
        return subprocess.Popen(
            [sys.executable, "-m", "hybrid_pipeline.cli", "materialize", *args],
            cwd=self.root, env=self.env, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def materialize(self, *partitions: str) -> subprocess.CompletedProcess:
        proc = self.start(*partitions)
        try:
            out, err = proc.communicate(timeout=RUN_LIMIT_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            pytest.fail(f"materialize {partitions} did not finish within {RUN_LIMIT_S}s (waiting for a pool slot?)")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def instance(self) -> dg.DagsterInstance:
        """The CLI's instance, as this test process sees it (the ``home`` fixture points DAGSTER_HOME at it)."""
        assert os.environ["DAGSTER_HOME"] == self.env["DAGSTER_HOME"]
        return dg.DagsterInstance.get()

    def snapshot(self) -> dict[str, pl.DataFrame]:
        """Every Delta table of the lakehouse, wall-clock columns dropped, rows in a canonical order."""
        lh, root = self.lakehouse, Path(self.env["HYBRID_LAKEHOUSE_ROOT"])
        names = (f"{p.parent.name}/{p.name}" for p in root.glob("*/*"))
        tables = sorted(name for name in names if lh.exists(name))
        out = {}
        for table in tables:
            df = lh.read(table).drop(WALL_CLOCK_COLUMNS, strict=False)
            out[table] = df.sort(df.columns)
        return out


def _make_home(root: Path) -> Home:
    env = {**os.environ, **env_vars(root)}
    (root / "dagster_home").mkdir(parents=True)
    config = GeneratorConfig(days=len(DAYS), events_per_day=300, seed=11, start_date=date(2024, 1, 1))
    generate(config, root / "landing")
    home = Home(root, env)
    home.configure()
    return home


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the CLI and everything it started (its own process group), and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is gone already
    if proc.returncode is None:
        proc.communicate(timeout=30)


def _wait_for(what: str, predicate, limit_s: float = RUN_LIMIT_S):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"gave up after {limit_s}s waiting for {what}")


def _holders(instance: dg.DagsterInstance, pool: str) -> tuple[set[str], set[str]]:
    """Run ids holding a slot of ``pool`` and run ids waiting for one."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    claimed = {s.run_id for s in info.claimed_slots}
    return claimed, {s.run_id for s in info.pending_steps} - claimed


def _crash_inside(home: Home, asset: str, pool: str) -> str:
    """Start a CLI for CRASH_DAY, SIGKILL its process group once ``asset``'s materialization is in the
    event log (its pooled step still running); returns the dead run's id."""
    home.configure(hold_after=asset)
    proc = home.start(CRASH_DAY)
    try:
        with home.instance() as instance:
            key = dg.AssetKey.from_user_string(asset)

            def materialized_run() -> str | None:
                records = instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=key, asset_partitions=[CRASH_DAY]), limit=1
                ).records
                assert proc.poll() is None, proc.communicate()
                return records[0].run_id if records else None

            run_id = _wait_for(f"{asset} to be materialized", materialized_run)
            _kill_group(proc)
            # The wedge as it was found: the dead run still STARTED, holding its pool's slot.
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
            assert run_id in _holders(instance, pool)[0]
    finally:
        _kill_group(proc)
        home.configure()
    return run_id


@pytest.fixture(scope="module")
def clean_tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pl.DataFrame]:
    """The lakehouse as one uninterrupted CLI run of both days leaves it."""
    home = _make_home(tmp_path_factory.mktemp("clean"))
    done = home.materialize(*DAYS)
    assert done.returncode == 0, done.stdout + done.stderr
    return home.snapshot()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    made = _make_home(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", made.env["DAGSTER_HOME"])
    with made.instance():
        pass  # creates the storage here, before two processes race to create it
    yield made


@pytest.mark.parametrize(
    ("asset", "pool"), [("bronze/events", "bronze_writer"), ("silver/events", "silver_writer")]
)
def test_a_rerun_after_a_kill_inside_a_pooled_step_finishes_with_the_clean_runs_tables(
    home, clean_tables, asset, pool
):
    dead_run = _crash_inside(home, asset, pool)

    # Both days: the crashed one and one the dead run never touched.
    rerun = home.materialize(*DAYS)

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"released run {dead_run}" in rerun.stderr
    with home.instance() as instance:
        assert instance.get_run_by_id(dead_run).status == dg.DagsterRunStatus.FAILURE
        assert _holders(instance, pool) == (set(), set())
    tables = home.snapshot()
    assert tables.keys() == clean_tables.keys()
    for table, clean in clean_tables.items():
        assert tables[table].equals(clean), table


@pytest.mark.parametrize(
    "signum", [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="ctrl-c")]
)
def test_a_cli_waiting_for_a_pool_slot_stops_cleanly_on_sigterm_or_ctrl_c(home, signum):
    # A live CLI holds bronze_writer (held inside its bronze step), so the second one has to wait.
    home.configure(hold_after="bronze/events")
    holder = home.start(CRASH_DAY)
    waiter = None
    try:
        with home.instance() as instance:
            [holding_run] = _wait_for(
                "the first CLI to hold bronze_writer", lambda: _holders(instance, "bronze_writer")[0]
            )
            home.configure()
            waiter = home.start(DAYS[1])
            [waiting_run] = _wait_for(
                "the second CLI to wait for bronze_writer", lambda: _holders(instance, "bronze_writer")[1]
            )
            assert holder.poll() is None and waiter.poll() is None

            waiter.send_signal(signum)
            began = time.monotonic()
            out, err = waiter.communicate(timeout=15)

            assert time.monotonic() - began < 10
            assert waiter.returncode == 128 + signum
            assert [line for line in err.splitlines() if line.startswith("stopped by")] == [
                f"stopped by {signal.Signals(signum).name}: run {waiting_run} marked failed, pool slots freed"
            ]
            assert f"pool bronze_writer is held by run {holding_run} (STARTED, process {holder.pid} on" in err
            assert instance.get_run_by_id(waiting_run).status == dg.DagsterRunStatus.FAILURE
            assert waiting_run not in set.union(*_holders(instance, "bronze_writer"))
            assert holder.poll() is None  # the holder was not disturbed
    finally:
        _kill_group(holder)
        if waiter is not None:
            _kill_group(waiter)


def test_project_instance_turns_on_run_monitoring_and_frees_slots_of_finished_runs(tmp_path, monkeypatch):
    shutil.copy(PROJECT_YAML, tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
