"""fedsub's packages import only downward (README, "Layout"), and no modules import each other.

An import graph from the source (ast, every import: at the top of a module and inside functions;
`if TYPE_CHECKING:` blocks aside, they never run), so an upward import hidden in a function counts
too. A new top-level module or package needs its place in LAYERS.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"
PACKAGE = SRC / "fedsub"
# bottom first; a unit may import its own modules and those of the layers below it, never above
LAYERS = [
    {"errors"},
    {"core"},  # types, registry, tensors, workspace, io, checkpoint, validation
    {"config"},
    {"data", "linalg"},
    {"optim", "models"},
    {"tasks"},
    {"lora"},  # PEFT glue, LoRA names and factor maths, shared by the LoRA methods
    {"diagnostics"},  # subspace diagnostics, from what a method declares it holds
    {"methods"},
    {"engines"},
    {"reporting"},
    {"app"},
    {"__main__"},  # python -m fedsub
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """fedsub.models.plan -> models; fedsub.errors -> errors."""
    return module.split(".")[1] if "." in module else module


def runtime_nodes(tree: ast.AST):
    """Every node that can run: the bodies of `if TYPE_CHECKING:` left out."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *runtime_nodes(child)])
            continue
        yield node
        yield from runtime_nodes(node)


def imported(node: ast.AST, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolve against the importing package
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            return [f"{base}.{node.module}" if node.module else base]
        return [node.module or ""]
    return []


@cache
def graph() -> dict[str, set[str]]:
    """module -> the fedsub modules it imports (a `from pkg import name` counts as pkg, or as
    pkg.name where that is a module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in runtime_nodes(ast.parse(path.read_text())):
            for target in imported(node, package):
                if not target.startswith("fedsub"):
                    continue
                subs = [f"{target}.{a.name}" for a in getattr(node, "names", []) if isinstance(node, ast.ImportFrom)]
                targets |= {s for s in subs if s in modules} or {target}
        edges[name] = targets - {name}
    return edges


def test_every_unit_has_a_layer():
    units = {unit(m) for m in graph()} - {"fedsub"}
    assert units <= set(RANK), (
        f"place these in LAYERS (tests/test_layers.py) and README's Layout: {sorted(units - set(RANK))}"
    )


def test_packages_import_only_downward():
    upward = [
        f"{source} imports {target} ({unit(target)} is not below {unit(source)})"
        for source, targets in sorted(graph().items())
        for target in sorted(targets)
        if unit(source) != unit(target) and RANK.get(unit(target), 99) >= RANK.get(unit(source), -1)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    edges, state, cycles = graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target) :] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_every_module_imports_in_a_fresh_interpreter():
    """Each module, in sorted order, in one fresh interpreter (Flower's modules where flwr is installed)."""
    names = sorted(m for m in graph() if m != "fedsub.__main__")
    code = (
        "import importlib, importlib.util, sys\n"
        "flwr = importlib.util.find_spec('flwr') is not None\n"
        f"for name in {names!r}:\n"
        "    if flwr or '.flower' not in name:\n"
        "        importlib.import_module(name)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


# late imports without a comment allowed here (none left since the method contract's rework)
UNCOMMENTED: set[tuple[str, str]] = set()


def test_every_late_import_says_why():
    """An import inside a function only where it saves start-up time (or needs an optional package),
    with a comment saying so ("late: ...") on its line or the line above."""
    silent = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and not any(
                    "late" in lines[i] for i in (node.lineno - 1, node.lineno - 2)
                ):
                    target = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                    if (module_name(path), target) not in UNCOMMENTED:
                        silent.append(f"{path.relative_to(SRC)}:{node.lineno} {lines[node.lineno - 1].strip()}")
    assert not silent, "late imports without a '# late: why' comment:\n" + "\n".join(silent)
