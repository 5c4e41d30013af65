"""The layering the imports obey (DESIGN §7): model <- experiments <- slurm / analysis.

Every import statement counts, function-local ones included, so that an import
placed inside a function to dodge a cycle still shows up as the cycle it is.
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import PROJECT_ROOT

ALLOWED = {
    "model": {"model"},
    "experiments": {"experiments", "model"},
    "slurm": {"slurm", "experiments", "model"},
    "analysis": {"analysis", "experiments", "model"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Project modules imported anywhere in `path` (absolute imports; the project uses no relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in ALLOWED}


def _graph() -> dict[str, set[str]]:
    files = [p for package in ALLOWED for p in (PROJECT_ROOT / package).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    # `from pkg import name` names a module only when pkg/name.py exists.
    return {name: {m for m in _imports(path) if m in modules} for name, path in modules.items()}


def test_every_import_follows_the_layer_order():
    wrong = [f"{module} imports {target}" for module, targets in _graph().items() for target in targets
             if target.split(".")[0] not in ALLOWED[module.split(".")[0]]]
    assert not wrong, "imports against model <- experiments <- slurm/analysis:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle_between_modules():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 finished

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt == node or nxt.startswith(node + "."):
                continue  # a package importing its own submodules
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
