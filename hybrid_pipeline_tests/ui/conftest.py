"""The UIs over a real small run: one `hybrid-pipeline generate` + `materialize --all-landed` per
test session (events, features, the purchase model trained, gated and promoted), servers started
as a person starts them (`hybrid-pipeline ui ...`, `dagster dev`), and Debian's Chromium driven
headless through Playwright's library (no browser download)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from hybrid_pipeline.settings import Settings
from hybrid_pipeline_tests.conftest import env_vars

PROJECT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("HYBRID_CHROMIUM", "/usr/bin/chromium")
# What a closed network needs: no sandbox (containers), no GPU, and nothing that phones home.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
SCREENSHOT_ENV = "HYBRID_SCREENSHOT_DIR"
"""When set, the screenshots the README shows are also written there (docs/screenshots)."""
DAYS = 14
EVENTS_PER_DAY = 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A server process started in its own session, so that stopping it stops every child it forked."""

    proc: subprocess.Popen
    log: Path
    base: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
            time.sleep(1)
        raise TimeoutError(f"{what} not ready after {timeout:.0f}s:\n{self.output()[-4000:]}")

    def stop(self) -> None:
        """SIGTERM to the whole session, then SIGKILL for whatever of it still runs after a grace period."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # children (workers, code servers) may outlive the leader
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


def _default_signals() -> None:
    # A server must stop on SIGTERM even when the test runner was started with it ignored.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)


def start_server(command: Sequence[str], env: dict[str, str], log: Path, base: str) -> Server:
    handle = open(log, "w")
    try:
        proc = subprocess.Popen(
            list(command), cwd=PROJECT, env=env, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_default_signals,
        )
    finally:
        handle.close()
    return Server(proc, log, base)


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """``hybrid-pipeline <args>`` as a person runs it, from the project root."""
    return subprocess.run(
        [sys.executable, "-m", "hybrid_pipeline.cli", *args], cwd=PROJECT, env=env,
        capture_output=True, text=True, timeout=timeout,
    )


@dataclass
class DemoRun:
    """A lakehouse, Dagster instance, MLflow store and Feast repo after `make run`'s two commands."""

    root: Path
    env: dict[str, str]
    settings: Settings
    days: list[str]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """Two weeks ending yesterday (inside the launch dialog's default 90-day window), 1,000 events a
    day, no media: enough labelled users for the purchase model to pass its gate and be promoted."""
    root = tmp_path_factory.mktemp("ui_demo")
    env = {**os.environ, **env_vars(root)}
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")  # the instance `make dev` uses
    start = date.today() - timedelta(days=DAYS)
    generated = cli("generate", "--days", str(DAYS), "--events-per-day", str(EVENTS_PER_DAY), "--seed", "5",
                    "--start-date", start.isoformat(), "--no-media", env=env)
    assert generated.returncode == 0, generated.stderr
    run = cli("materialize", "--all-landed", env=env, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "models/production_purchase_model" in run.stdout, run.stdout[-3000:]
    return DemoRun(root, env, Settings.from_env(env), [(start + timedelta(days=i)).isoformat() for i in range(DAYS)])


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, through Playwright's library."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (as .ci/run does), set HYBRID_CHROMIUM, "
                    "or deselect these tests with -m 'not browser'")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests keep their screenshots (test artifacts)."""
    return tmp_path_factory.mktemp("screenshots")


def save_screenshot(page: Any, folder: Path, name: str, publish: bool = False) -> Path:
    """Screenshot ``page`` into ``folder``; with ``publish``, also into ``$HYBRID_SCREENSHOT_DIR``
    as a palette PNG (the README's pictures, kept small)."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    target = os.environ.get(SCREENSHOT_ENV)
    if publish and target:
        from PIL import Image

        Path(target).mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image.convert("RGB").quantize(colors=128).save(Path(target) / f"{name}.png", optimize=True)
    return path
