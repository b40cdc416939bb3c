"""The import graph of the ``workbench`` package: cycles and imports against the layers.

Every ``import``/``from … import`` counts, also those inside functions (a function-local import is still a
dependency; it only hides a cycle from Python's loader). Run ``python scripts/import_graph.py``: it prints the
modules in cycles and the upward imports, and exits 1 when there is either. ``--edges`` lists every edge.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "workbench"

# Lower number = lower layer. A module may import its own layer or lower ones, never a higher one.
# Top-level modules of the package that are not in a sub-package are named here too.
LAYERS: dict[str, int] = {
    "workbench": 0,  # the package's __init__: logging/warning filters only
    "workbench.paths": 0,
    "workbench.machine": 0,
    "workbench.config": 0,
    "workbench.rundir": 1,
    "workbench.data": 2,
    "workbench.models": 2,
    "workbench.train": 3,
    "workbench.infer": 3,
    "workbench.evaluate": 3,
    "workbench.export": 3,
    "workbench.jobs": 4,
    "workbench.ui": 5,
    "workbench.cli": 5,
    "workbench.__main__": 5,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module → the package modules it imports (``from pkg import name`` counts name when it is a module)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = resolve(name, path.name == "__init__.py", node)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith(PACKAGE):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# Each capability package keeps its faces beside its core: ``X.launch`` starts X as a Job (the jobs layer) and
# ``X.cli`` is X's command (the faces' layer). No core module may import either.
ROLE_LAYERS = {"launch": 4, "cli": 5}


def layer(module: str) -> int | None:
    if module.count(".") >= 2 and module.rpartition(".")[2] in ROLE_LAYERS:
        return ROLE_LAYERS[module.rpartition(".")[2]]
    while module:
        if module in LAYERS:
            return LAYERS[module]
        module = module.rpartition(".")[0]
    return None


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    bad = []
    for source, targets in graph.items():
        for target in targets:
            if target == PACKAGE:
                continue
            src, dst = layer(source), layer(target)
            if src is None or dst is None or dst > src:
                bad.append((source, target))
    return sorted(bad)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true", help="print every edge")
    args = parser.parse_args(argv)
    graph = edges(package_modules())
    if args.edges:
        for source in sorted(graph):
            for target in sorted(graph[source]):
                print(f"{source} -> {target}")
    found = cycles(graph)
    bad = upward(graph)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports between them")
    for component in found:
        print("cycle:", " ↔ ".join(component))
    for source, target in bad:
        print(f"upward or unplaced: {source} -> {target}")
    if not found and not bad:
        print("no cycles; every import goes to the same or a lower layer")
    return 1 if found or bad else 0


if __name__ == "__main__":
    sys.exit(main())
