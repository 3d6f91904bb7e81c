"""The ml package is a library: it never reaches into the Dagster layer, nor into another module's privates."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import hybrid_pipeline.ml

ML_DIR = Path(hybrid_pipeline.ml.__file__).parent


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import in the file, function-level (lazy) imports included."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def test_no_ml_module_imports_dagster_or_the_defs_package():
    offending = {
        f"{path.name}: {module}"
        for path in ML_DIR.glob("*.py")
        for module, _ in imports_of(path)
        if module.split(".")[0] == "dagster" or module.startswith(("hybrid_pipeline.defs", "hybrid_pipeline.dagster_support"))
    }
    assert not offending


def test_no_ml_module_imports_private_names_of_another_ml_module():
    offending = {
        f"{path.name}: {module}.{name}"
        for path in ML_DIR.glob("*.py")
        for module, names in imports_of(path)
        for name in names
        if module.startswith("hybrid_pipeline.ml.") and module != f"hybrid_pipeline.ml.{path.stem}"
        and name.startswith("_")
    }
    assert not offending


def test_importing_reproduce_and_hashing_a_training_set_loads_neither_dagster_nor_defs():
    code = (
        "import json, sys\n"
        "import polars as pl\n"
        "import hybrid_pipeline.ml.reproduce as r\n"
        "r.content_sha256(pl.DataFrame({'user_id': ['a'], 'event_timestamp': [1]}))\n"
        "loaded = [m for m in sys.modules if m == 'dagster' or m.startswith(('dagster.', 'hybrid_pipeline.defs'))]\n"
        "print(json.dumps(sorted(loaded)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_importing_the_serving_predictor_loads_neither_dagster_nor_defs():
    """``hybrid-pipeline serve`` loads the production model through it, without Dagster."""
    code = (
        "import json, sys\n"
        "from hybrid_pipeline.ml.predictor import PurchasePredictor, purchase_predictor\n"
        "import hybrid_pipeline.ml.gate, hybrid_pipeline.ml.purchase_drift\n"
        "loaded = [m for m in sys.modules if m == 'dagster' or m.startswith(('dagster.', 'hybrid_pipeline.defs',"
        " 'hybrid_pipeline.dagster_support'))]\n"
        "print(json.dumps(sorted(loaded)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
