"""The architecture as a test: the layers of router/ import only downwards, no module
imports itself back through others, and modules and functions stay a readable size.
docs/architecture.md draws the same rooms."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "router"

# What each layer may import besides itself. `http` is the floor (it knows nothing of
# routing); the top-level modules (app, workers, admin, cli) wire everything and are not
# listed: they may import any layer, and no layer imports them.
ALLOWED: dict[str, set[str]] = {
    "http": set(),
    "rpc": set(),  # gRPC's listener and channels: beside http, knowing nothing of models
    "errors": {"http"},
    "config": {"http"},
    "routing": {"config", "http", "errors"},
    "observe": {"config", "http", "routing"},
    "protocols": {"config", "routing", "http", "errors"},
    "proxy": {"config", "routing", "http", "rpc", "observe", "errors", "protocols"},
    "stats": set(),
    "report": {"stats", "observe"},
    "rollout": {"config", "observe", "stats", "report"},  # the report's per-user pass (issue 23)
}
TOP = {"admin", "app", "workers", "cli", "__main__"}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str) -> set[str]:
    """The router modules `module` imports (TYPE_CHECKING imports included)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and name != "router":
                out.add(name)
    return out


GRAPH = {module: _imports(module) for module in MODULES}


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def upward(module: str, targets: set[str]) -> set[str]:
    """What `module` imports from layers it may not import."""
    layer = _layer(module)
    if layer in TOP or module == "router":
        return set()
    return {t for t in targets if _layer(t) != layer and _layer(t) not in ALLOWED[layer]}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of imports in `graph`, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                found = [*path, module, target]
                return found[found.index(target) :]
            if target not in state and (cycle := visit(target, [*path, module])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [])):
            return cycle
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_layers_below_its_own(module: str) -> None:
    wrong = upward(module, GRAPH[module])
    assert not wrong, f"{module} imports {sorted(wrong)}, above or beside its layer"


def test_no_layer_imports_the_top_level_wiring() -> None:
    wrong = [
        (module, target)
        for module, targets in GRAPH.items()
        for target in targets
        if _layer(target) in TOP and _layer(module) not in TOP
    ]
    assert not wrong


def test_there_is_no_import_cycle() -> None:
    # A package's __init__ re-exporting its own modules is not a cycle of design.
    graph = {
        module: {t for t in targets if not t.startswith(module + ".")}
        if MODULES[module].name == "__init__.py"
        else targets
        for module, targets in GRAPH.items()
    }
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or ())


def test_the_checks_catch_a_cycle_and_an_upward_import() -> None:
    """The checks above fail on what they look for (as on the two cycles and http/'s
    upward imports that this layout removed)."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    bad = upward("router.http.server", {"router.http.request", "router.proxy.headers"})
    assert bad == {"router.proxy.headers"}
    assert upward("router.proxy.handler", {"router.http.request"}) == set()


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.startswith("router.report")))
def test_modules_and_functions_stay_readable(module: str) -> None:
    """~400 lines a module and ~50 a function (report/ is left to its own issue)."""
    source = MODULES[module].read_text()
    assert source.count("\n") <= MAX_MODULE_LINES, f"{module} has {source.count(chr(10))} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{module}.{node.name} has {length} lines"
