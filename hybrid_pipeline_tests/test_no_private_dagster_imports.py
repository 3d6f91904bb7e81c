"""The code location uses Dagster's public API only: private modules and members change without
notice between releases, and one of them breaking would take the whole code location down.

Every .py file under hybrid_pipeline/ is parsed; a private name is one whose dotted path, under
``dagster`` or a ``dagster_*`` package, has a component starting with ``_`` (dunders such as
``__version__`` are public). Internal constructors (``dagster_internal_init``) count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hybrid_pipeline"
INTERNAL_MEMBERS = {"dagster_internal_init"}


def _is_dagster(dotted: str) -> bool:
    top = dotted.split(".")[0]
    return top == "dagster" or top.startswith("dagster_")


def _is_private(dotted: str) -> bool:
    return any(part.startswith("_") and not (part.startswith("__") and part.endswith("__")) for part in dotted.split("."))


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of names and attributes; None for anything else (calls, subscripts)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def private_dagster_uses(source: str, filename: str = "<source>") -> list[str]:
    """``file:line: what`` for every private Dagster import or attribute use in ``source``."""
    tree = ast.parse(source, filename=filename)
    bound: dict[str, str] = {}  # local name -> the dagster path it stands for
    found: list[str] = []

    def report(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{node.lineno}: {what}")  # type: ignore[attr-defined]

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_dagster(alias.name):
                    if _is_private(alias.name):
                        report(node, f"import {alias.name}")
                    local = alias.asname or alias.name.split(".")[0]
                    bound[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _is_dagster(node.module):
            for alias in node.names:
                path = f"{node.module}.{alias.name}"
                if _is_private(path):
                    report(node, f"from {node.module} import {alias.name}")
                bound[alias.asname or alias.name] = path
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if node.attr in INTERNAL_MEMBERS:
                report(node, f"internal member .{node.attr}")
                continue
            dotted = _dotted(node)
            if dotted is None:
                continue
            root, _, rest = dotted.partition(".")
            if root in bound and _is_private(rest):
                report(node, f"{dotted} ({bound[root]}.{rest})")
    return sorted(set(found))


def test_no_module_of_the_package_uses_private_dagster_names() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50  # the walk found the package
    found = [use for path in files for use in private_dagster_uses(path.read_text(), str(path.relative_to(PACKAGE.parent)))]
    assert found == []


@pytest.mark.parametrize(
    "source",
    [
        "from dagster._core.x import y\n",
        "import dagster._utils\n",
        "import dagster._core.definitions as defs_mod\n",
        "from dagster import _check\n",
        "from dagster_k8s._internal import z\n",
        "import dagster as dg\ndg._core.definitions\n",
        "import dagster\nx = dagster._utils.hash\n",
        "from dagster import AssetsDefinition\nAssetsDefinition._private_thing\n",
        "import dagster as dg\ndg.AssetsDefinition.dagster_internal_init(node_def=None)\n",
    ],
)
def test_the_checker_reports_private_dagster_names(tmp_path: Path, source: str) -> None:
    module = tmp_path / "module.py"
    module.write_text(source)
    assert private_dagster_uses(module.read_text(), str(module)) != []


@pytest.mark.parametrize(
    "source",
    [
        "import dagster as dg\ndg.asset\nprint(dg.__version__)\n",
        "from dagster import AssetSpec\nAssetSpec.replace_attributes\n",
        "from mylib._private import x\nimport os\nos._exit\n",
        "class A:\n    def f(self):\n        return self._x\n",
        "from . import _sibling\n",
    ],
)
def test_the_checker_lets_public_and_non_dagster_names_pass(source: str) -> None:
    assert private_dagster_uses(source) == []
