"""Loading the code location imports no heavy ML or Spark library.

``build_definitions`` runs once per ``hybrid-pipeline materialize``, run worker and code server;
torch, pyspark and sentence-transformers cost seconds of CPU to import, so only the steps that
use them may import them. Each engine's definitions are built in a fresh interpreter (this test
process has imported them already) and the test reads that interpreter's ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid_pipeline_tests.conftest import env_vars

HEAVY = ("torch", "pyspark", "sentence_transformers", "transformers")

PROBE = """
import json, sys
from hybrid_pipeline.definitions import build_definitions
from hybrid_pipeline.settings import Settings
defs = build_definitions(Settings.from_env())
assert defs.resolve_asset_graph().get_all_asset_keys(), "no assets loaded"
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)))
"""

# pandera (0.35) imports pyspark.pandas whenever pyspark is installed (pandera/external_config.py,
# run by any ``import pandera...``), and the event contract imports pandera when the silver and
# gold modules load (transforms/contract.py, transforms/silver.py). Until that import is deferred,
# pyspark stays loaded; strict, so this marker has to go once it no longer is.
PANDERA_LOADS_PYSPARK = pytest.mark.xfail(
    strict=True, reason="pandera imports pyspark.pandas at import; the event contract imports pandera"
)


@pytest.fixture(scope="module", params=["polars", "spark"])
def loaded_modules(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The heavy modules a fresh interpreter holds after building the definitions for one engine."""
    root: Path = tmp_path_factory.mktemp(f"defs_{request.param}")
    (root / "dagster_home").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_")}
    env |= env_vars(root) | {"HYBRID_ENGINE": request.param}
    code = f"HEAVY = {HEAVY!r}\n{PROBE}"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "module",
    ["torch", "sentence_transformers", "transformers", pytest.param("pyspark", marks=PANDERA_LOADS_PYSPARK)],
)
def test_loading_definitions_does_not_import(loaded_modules: set[str], module: str) -> None:
    imported = sorted(m for m in loaded_modules if m == module or m.startswith(module + "."))
    assert not imported, f"building the definitions imported {module}: {imported[:10]}"


def test_dagster_pyspark_is_not_imported_by_the_engine_resource() -> None:
    """The engine resource builds dagster-pyspark's session resource on first use only (it imports pyspark)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, hybrid_pipeline.dagster_support.engine as e; "
         "e.engine_resource('spark'); print('dagster_pyspark' in sys.modules)"],
        capture_output=True, text=True, timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-4000:]
    assert probe.stdout.strip().splitlines()[-1] == "False"
