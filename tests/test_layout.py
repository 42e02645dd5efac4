"""The shape of the package, read from its source: layering, one home per vocabulary, sizes.

The data flow is the module layout, and these checks keep it so: imports only go
down the layers below (no circle), every first-party import is at the top of its
module, the MLflow client stays in the tracking layer, the trial states are
spelled once, and functions stay short enough to read.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ablation"
MODULES = {path.stem: ast.parse(path.read_text()) for path in sorted(PACKAGE.glob("*.py"))}

# Bottom to top: a module may import only modules on an earlier line.
LAYERS = [
    ["redaction"],
    ["errors"],
    ["factors"],
    ["config", "records"],
    ["space", "analysis", "cli", "layout", "cores"],
    ["arrays", "pipeline", "machine"],
    ["data", "plots"],
    ["models"],
    ["precision"],
    ["features", "plan", "feature_batch"],
    ["training"],
    ["lineage"],
    ["tracking", "storage"],
    ["trial", "importance", "figures"],
    ["isolation", "tables"],
    ["workers"],
    ["study", "report"],
    ["run", "best", "ui"],
    ["__init__"],
]
ENTRY_POINTS = {"main", "_main"}  # command lines: argument handling reads best in one place


def first_party_imports(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    """(module, node) of every ``ablation`` import in a module, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "ablation":
                found += [(alias.name, node) for alias in node.names]
            elif node.module.startswith("ablation."):
                found.append((node.module.split(".")[1], node))
        elif isinstance(node, ast.Import):
            found += [
                (alias.name.split(".")[1], node)
                for alias in node.names
                if alias.name.startswith("ablation.")
            ]
    return [(name, node) for name, node in found if name in MODULES]


def test_every_module_has_a_layer() -> None:
    placed = [name for layer in LAYERS for name in layer]
    assert sorted(placed) == sorted(MODULES)


def test_imports_only_go_down_the_layers() -> None:
    level = {name: index for index, layer in enumerate(LAYERS) for name in layer}
    upward = [
        f"{module} imports {imported}"
        for module, tree in MODULES.items()
        for imported, _ in first_party_imports(tree)
        if imported != module and level[imported] >= level[module] and module != "__init__"
    ]
    assert upward == []


def test_no_first_party_import_inside_a_function() -> None:
    inside = []
    for module, tree in MODULES.items():
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                body = ast.Module(body=function.body, type_ignores=[])
                inside += [f"{module}.{function.name}" for _ in first_party_imports(body)]
    assert inside == []


def test_the_mlflow_client_stays_in_the_tracking_layer() -> None:
    outside = [
        f"{module}:{node.lineno}"
        for module, tree in MODULES.items()
        if module != "tracking"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "client"
    ]
    assert outside == []


@pytest.mark.parametrize("state", ["COMPLETE", "PRUNED", "FAIL", "RUNNING"])
def test_trial_states_are_spelled_only_in_their_enum(state: str) -> None:
    spelled = [
        f"{module}:{node.lineno}"
        for module, tree in MODULES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value == state
    ]
    assert [where.split(":")[0] for where in spelled] == ["records"]


def test_functions_are_short_outside_the_command_lines() -> None:
    long = [
        f"{module}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for module, tree in MODULES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name not in ENTRY_POINTS
        and (node.end_lineno or 0) - node.lineno + 1 > 60
    ]
    assert long == []


def test_modules_are_small_enough_to_read_top_to_bottom() -> None:
    # Two modules tell one long story each: config.py is the sweep file's schema, section
    # by section; tracking.py is the one owner of the MLflow client, every write and read.
    sizes = {path.stem: len(path.read_text().splitlines()) for path in PACKAGE.glob("*.py")}
    long = {name: n for name, n in sizes.items() if n > 350}
    assert {name: n for name, n in long.items() if name not in ("config", "tracking")} == {}
    assert all(n <= 450 for n in long.values()), long
