"""Every package the code imports is declared in pyproject.toml, not installed by luck as
another dependency's dependency (a transitive package can vanish with any upgrade)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(package_dir: Path) -> set[str]:
    modules: set[str] = set()
    for path in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"hybrid_pipeline", "hybrid_pipeline_tests"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(*extras: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    return {_normalise(re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0]) for spec in specs}


def _undeclared(package_dir: Path, declared: set[str]) -> dict[str, list[str]]:
    distributions = md.packages_distributions()
    missing = {}
    for module in sorted(_imported_modules(package_dir)):
        dists = [_normalise(d) for d in distributions.get(module, [])]
        if not dists or not declared.intersection(dists):
            missing[module] = dists
    return missing


def test_every_package_the_code_imports_is_declared():
    assert _undeclared(ROOT / "hybrid_pipeline", _declared("spark", "redis", "postgres", "ui")) == {}


def test_every_package_the_tests_import_is_declared_with_the_dev_extra():
    assert _undeclared(ROOT / "hybrid_pipeline_tests", _declared("dev", "spark", "redis", "postgres", "ui")) == {}


@pytest.mark.parametrize("module", ["narwhals", "yaml", "starlette"])
def test_the_check_sees_imports_only_other_packages_pull_in(module, tmp_path):
    (tmp_path / "mod.py").write_text(f"import {module}\n")
    assert module in _undeclared(tmp_path, {"polars"})
