"""The shape of the package, read from its source: layering, one home per vocabulary, sizes.

The data flow is the folder structure, and these checks keep it so: imports only go
down the layers below (no circle), the study side never imports the report side,
every first-party import is at the top of its module, nothing but the package's own
``__init__`` re-exports another module's names, the MLflow client stays in the
tracker, the trial states are spelled once, functions stay short enough to read, and
the README's architecture table is this file's list of layers.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "ablation"


def _name(path: Path) -> str:
    """``sweep.config`` for ``src/ablation/sweep/config.py``; ``sweep`` for its ``__init__``;
    ``__init__`` for the package's own."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


MODULES = {_name(path): ast.parse(path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))}
SUBPACKAGES = sorted(path.parent.name for path in PACKAGE.glob("*/__init__.py"))

# Bottom to top: a module may import only modules on an earlier line. The README's
# architecture table lists the same lines (test_the_readme_shows_these_layers).
LAYERS = [
    ["redaction", "chatter"],
    ["errors", "files"],
    ["sweep.backbones"],
    ["sweep.factors", "sweep.stores"],
    ["sweep.sections"],
    ["sweep.pretrained"],
    ["sweep.config"],
    ["sweep.space"],
    ["data.folders", "data.arrays", "data.pipeline"],
    ["data.sources"],
    ["data.images"],
    ["model.backbones"],
    ["model.builders"],
    ["model.features"],
    ["model.training"],
    ["autotune.cores"],
    ["autotune.gpus"],
    ["autotune.timings"],
    ["autotune.precision", "autotune.feature_batch"],
    ["tracking.records", "tracking.confusion", "tracking.predictions"],
    ["tracking.mlflow_objects", "tracking.figures", "tracking.system_metrics"],
    ["tracking.tracker"],
    ["effects.estimates"],
    ["effects.sequential"],
    ["study.storage", "study.plan", "study.fingerprint"],
    ["study.rounds"],
    ["study.trial"],
    ["study.process"],
    ["study.workers"],
    ["study.runner"],
    ["results.analysis", "results.importance"],
    ["results.tables", "results.adaptive"],
    ["results.figures", "results.html", "results.artifacts"],
    ["results.report"],
    ["cli"],
    ["run", "report", "best", "ui"],
    ["__init__"],
]
STUDY_SIDE = ("sweep", "data", "model", "autotune", "tracking", "study")
REPORT_SIDE = ("results",)
ENTRY_POINTS = {"main", "_main"}  # command lines: argument handling reads best in one place


def first_party_imports(tree: ast.Module | ast.stmt) -> list[tuple[str, ast.AST]]:
    """(module, node) of every ``ablation`` import in a tree, at any depth, each resolved
    to a module of :data:`MODULES` (``from ablation.sweep import space``: ``sweep.space``)."""
    found: list[tuple[str, ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module != "ablation" and not node.module.startswith("ablation."):
                continue
            base = node.module.removeprefix("ablation").removeprefix(".")
            for alias in node.names:
                inner = f"{base}.{alias.name}" if base else alias.name
                found.append((inner if inner in MODULES else base or "__init__", node))
        elif isinstance(node, ast.Import):
            found += [
                (alias.name.removeprefix("ablation."), node)
                for alias in node.names
                if alias.name.startswith("ablation.")
            ]
    return found


def test_every_module_has_a_layer() -> None:
    placed = [name for layer in LAYERS for name in layer]
    assert sorted(placed) == sorted(set(MODULES) - set(SUBPACKAGES))
    assert len(placed) == len(set(placed))


def test_imports_only_go_down_the_layers() -> None:
    level = {name: index for index, layer in enumerate(LAYERS) for name in layer}
    upward = [
        f"{module} imports {imported}"
        for module, tree in MODULES.items()
        if module not in SUBPACKAGES and module != "__init__"
        for imported, _ in first_party_imports(tree)
        if imported not in level or level[imported] >= level[module]
    ]
    assert upward == []


def test_the_study_side_never_imports_the_report_side() -> None:
    crossing = [
        f"{module} imports {imported}"
        for module, tree in MODULES.items()
        if module.split(".")[0] in STUDY_SIDE
        for imported, _ in first_party_imports(tree)
        if imported.split(".")[0] in REPORT_SIDE
    ]
    assert crossing == []


def test_no_first_party_import_inside_a_function() -> None:
    inside = []
    for module, tree in MODULES.items():
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                body = ast.Module(body=function.body, type_ignores=[])
                inside += [f"{module}.{function.name}" for _ in first_party_imports(body)]
    assert inside == []


def test_nothing_but_the_public_api_re_exports() -> None:
    """A sub-package's ``__init__`` says what it holds and imports nothing; no module lists
    another's names in ``__all__``. Each name has one import path (``ablation`` itself
    re-exports the public API)."""
    for name in SUBPACKAGES:
        tree = MODULES[name]
        assert ast.get_docstring(tree), f"{name}/__init__.py says what the sub-package is for"
        assert [node for node in tree.body if not isinstance(node, ast.Expr)] == [], name
    for module, tree in MODULES.items():
        if module == "__init__":
            continue
        assigned = [
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        ]
        assert "__all__" not in assigned, f"{module} re-exports through __all__"


def test_the_mlflow_client_stays_in_the_tracker() -> None:
    outside = [
        f"{module}:{node.lineno}"
        for module, tree in MODULES.items()
        if module not in ("tracking.tracker", "tracking.mlflow_objects")
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
    assert [where.split(":")[0] for where in spelled] == ["tracking.records"]


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
    # One module tells one long story: tracker.py is the one owner of the MLflow client,
    # every write and read.
    sizes = {_name(path): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    long = {name: n for name, n in sizes.items() if n > 350}
    assert {n: s for n, s in long.items() if n != "tracking.tracker"} == {}
    assert all(n <= 450 for n in long.values()), long


def readme_layers() -> list[list[str]]:
    """The modules of each row of the README's architecture table (bottom layer first):
    the names in backticks outside brackets."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`" in line]
    layers = []
    for row in rows:
        modules = row.split("|")[2]
        while re.search(r"\([^()]*\)", modules):  # what a module holds, in brackets
            modules = re.sub(r"\([^()]*\)", "", modules)
        layers.append(re.findall(r"`([\w.]+)`", modules))
    return layers


def test_the_readme_shows_these_layers() -> None:
    assert readme_layers() == LAYERS


def test_the_tests_mirror_the_package() -> None:
    """Each sub-package's tests live in a folder of its name (the commands' in ``tests/``)."""
    tests = REPO / "tests"
    assert [p for p in SUBPACKAGES if not list((tests / p).glob("test_*.py"))] == []
    folders = sorted(
        p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))
    )
    assert folders == SUBPACKAGES
