"""The package's shape: no import cycles, no upward imports, the run-directory file names declared once."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def graph_tool():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module
    spec.loader.exec_module(module)
    return module


def test_the_package_has_no_import_cycle_and_no_upward_import(graph_tool, capsys):
    graph = graph_tool.edges(graph_tool.package_modules())
    assert graph_tool.cycles(graph) == []
    assert graph_tool.upward(graph) == []
    assert graph_tool.main([]) == 0
    assert "no cycles" in capsys.readouterr().out


def test_function_local_imports_count_as_edges(graph_tool, tmp_path, monkeypatch):
    """The checker itself: a cycle hidden inside a function, and an import from a lower layer to a higher one."""
    package = tmp_path / "workbench"
    (package / "data").mkdir(parents=True)
    (package / "ui").mkdir()
    for init in (package / "__init__.py", package / "data" / "__init__.py", package / "ui" / "__init__.py"):
        init.write_text("")
    (package / "data" / "a.py").write_text("from workbench.data import b\n")
    (package / "data" / "b.py").write_text("def late():\n    from workbench.data.a import x\n")
    (package / "data" / "c.py").write_text("def late():\n    from workbench.ui import panel\n")
    (package / "ui" / "panel.py").write_text("from workbench.data import c\n")
    monkeypatch.setattr(graph_tool, "ROOT", tmp_path)
    graph = graph_tool.edges(graph_tool.package_modules())
    found = graph_tool.cycles(graph)
    assert ["workbench.data.a", "workbench.data.b"] in found
    assert ["workbench.data.c", "workbench.ui.panel"] in found
    assert ("workbench.data.c", "workbench.ui.panel") in graph_tool.upward(graph)
    assert graph_tool.main([]) == 1


RUN_FILE_NAMES = {"config.yaml", "command.txt", "job.json", "status.json", "log.txt", "progress.jsonl",
                  "workbench_run.json", "workbench_export.json"}


def _string_constants(path: Path):
    """String literals that are code (docstrings left out: they may name the files they describe)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_run_directory_file_names_are_declared_only_in_rundir():
    found = []
    for path in sorted((ROOT / "workbench").rglob("*.py")):
        if path.name == "rundir.py":
            continue
        for line, value in _string_constants(path):
            if value in RUN_FILE_NAMES:
                found.append(f"{path.relative_to(ROOT)}:{line} {value!r}")
    assert found == [], "use the names in workbench/rundir.py:\n" + "\n".join(found)
