"""The layering of src/layerwise, read from the source with ast (nothing is imported).

The rules are docs/ARCHITECTURE.md's "Layers" table:

- no import cycle;
- core < tasks/ < compare/ < bench/ < cli.py, each importing only its own layer or lower ones;
  integrations/ import only the core and compare/;
- inside compare/, imports go one way (``COMPARE_ORDER``);
- no module imports another module's private name;
- no import inside a function, except cli.py's lazy first-party imports and optional third-party
  packages (not in pyproject's ``[project].dependencies``).
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "layerwise"

# What each layer may import. The main chain is core < tasks < compare < bench < cli;
# integrations/ sit beside it, on the core and compare/ (a technique by name, compare.setup), and
# nothing in layerwise imports them.
MAY_IMPORT = {
    "core": {"core"},
    "integrations": {"core", "compare", "integrations"},
    "tasks": {"core", "tasks"},
    "compare": {"core", "tasks", "compare"},
    "bench": {"core", "tasks", "compare", "bench"},
    "cli": {"core", "tasks", "compare", "bench", "cli"},
}

# compare/'s modules, lowest first: each imports only its own slot or earlier ones. A module inside
# a subpackage takes the slot of the longest entry naming it or a package above it, so a new family
# file in methods/ or peers/ belongs to its package's slot, while what the family files share
# (methods' kit, peers' shared helpers) is a slot of its own below them. The compare package itself
# (compare/__init__) is above every slot.
COMPARE_ORDER = (
    "measures",
    "stats",
    "profiles",
    "targets",
    "store",
    "budget",
    "methods.kit",
    "methods",
    "peers.shared",
    "peers",
    "cached",
    "setup",
    "parallel",
    "runner",
    "engines",
    "executors",
    "verdicts",
    "tables",
    "plots",
    "pages",
    "report",
    "request",
    "rounds",
    "results",
    "session",
    "sweep",
    "study",
    "main_job",
)
COMPARE = f"{PACKAGE}.compare"

# Modules of a required package that import an optional one when imported: a function may import them.
NEEDS_OPTIONAL = {"torch.utils.tensorboard": "tensorboard"}

# The one module whose functions import first-party modules: its subcommands load lazily, so
# `layerwise --help` stays fast.
LAZY_IMPORTER = f"{PACKAGE}.cli"


@dataclass(frozen=True)
class Import:
    """One imported module or name, as written in a module of src/layerwise."""

    importer: str
    target: str  # a module of src/layerwise, or the dotted module name of another package
    name: str | None  # the name taken from ``target`` by ``from target import name``; None for a module
    line: int
    in_function: bool

    @property
    def first_party(self) -> bool:
        return self.target == PACKAGE or self.target.startswith(PACKAGE + ".")

    @property
    def top_level(self) -> str:
        return self.target.split(".")[0]

    def __str__(self) -> str:
        what = f"{self.target}.{self.name}" if self.name else self.target
        return f"{self.importer} (line {self.line}) imports {what}"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of src/layerwise by its dotted name (a package by its own name)."""
    return {module_name(path): path for path in sorted((SRC / PACKAGE).rglob("*.py"))}


def base_of(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` reads from."""
    if node.level == 0:
        return node.module or ""
    is_package = modules()[importer].name == "__init__.py"
    parts = importer.split(".")[: None if is_package else -1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def resolve(importer: str, node: ast.Import | ast.ImportFrom, in_function: bool) -> Iterator[Import]:
    """One `Import` per imported alias: a submodule named by ``from pkg import sub`` is a module."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield Import(importer, alias.name, None, node.lineno, in_function)
        return
    base = base_of(importer, node)
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        if submodule in modules():
            yield Import(importer, submodule, None, node.lineno, in_function)
        else:
            yield Import(importer, base, alias.name, node.lineno, in_function)


class _Collector(ast.NodeVisitor):
    """Every import of one module, with whether it sits inside a function (a method included)."""

    def __init__(self, importer: str) -> None:
        self.importer = importer
        self.depth = 0
        self.found: list[Import] = []

    def _in_scope(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _in_scope

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        self.found.extend(resolve(self.importer, node, in_function=self.depth > 0))

    visit_Import = visit_ImportFrom = _import


@cache
def imports() -> tuple[Import, ...]:
    """Every import of every module of src/layerwise: module level, TYPE_CHECKING blocks and functions."""
    found: list[Import] = []
    for name, path in modules().items():
        collector = _Collector(name)
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        found.extend(collector.found)
    return tuple(found)


def first_party_edges() -> list[Import]:
    return [imp for imp in imports() if imp.first_party and imp.target != imp.importer]


def strongly_connected(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(edges.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            components.append(sorted(component))

    for node in nodes:
        if node not in index:
            visit(node)
    return components


def layer(module: str) -> str:
    if module == LAZY_IMPORTER:
        return "cli"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in MAY_IMPORT else "core"


def compare_slot(module: str) -> int | None:
    """``module``'s position in ``COMPARE_ORDER`` (None: in no slot); the compare package is above every slot."""
    if module == COMPARE:
        return len(COMPARE_ORDER)
    inner = module.removeprefix(COMPARE + ".")
    named = [entry for entry in COMPARE_ORDER if inner == entry or inner.startswith(entry + ".")]
    return COMPARE_ORDER.index(max(named, key=len)) if named else None


def required_packages() -> set[str]:
    """The import names of pyproject's ``[project].dependencies`` (a distribution's name, normalized)."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {re.match(r"[A-Za-z0-9_.-]+", spec)[0].lower().replace("-", "_") for spec in project["dependencies"]}


def report(violations: list[str], rule: str) -> str:
    return f"{rule}:\n  " + "\n  ".join(violations)


def test_every_module_is_read_and_relative_imports_resolve():
    assert {f"{PACKAGE}.cli", f"{PACKAGE}.tasks", COMPARE, f"{PACKAGE}.bench", f"{PACKAGE}.groups"} <= set(modules())
    edges = {(imp.importer, imp.target) for imp in first_party_edges()}
    assert (PACKAGE, f"{PACKAGE}.groups") in edges  # `from . import groups` in the package's __init__
    assert (f"{PACKAGE}.tasks", f"{PACKAGE}.tasks.base") in edges  # `from .base import ...` in a package
    assert (f"{PACKAGE}.tasks.models", f"{PACKAGE}.groups") in edges  # `from ..groups import ...` in a module


def test_no_import_cycle():
    edges: dict[str, set[str]] = {}
    for imp in first_party_edges():
        edges.setdefault(imp.importer, set()).add(imp.target)
    cycles = [component for component in strongly_connected(sorted(modules()), edges) if len(component) > 1]
    violations = [
        f"{', '.join(cycle)}: "
        + "; ".join(str(imp) for imp in first_party_edges() if imp.importer in cycle and imp.target in cycle)
        for cycle in cycles
    ]
    assert not violations, report(violations, "import cycles (every import counts, in functions too)")


def test_each_layer_imports_only_its_own_or_lower_ones():
    violations = [
        f"{imp} ({layer(imp.importer)} may import only {sorted(MAY_IMPORT[layer(imp.importer)])})"
        for imp in first_party_edges()
        if layer(imp.target) not in MAY_IMPORT[layer(imp.importer)]
    ]
    assert not violations, report(violations, "imports against the layers (core < tasks < compare < bench < cli)")


def test_compare_order_names_only_modules_that_exist():
    missing = [entry for entry in COMPARE_ORDER if f"{COMPARE}.{entry}" not in modules()]
    assert not missing, f"COMPARE_ORDER names no module of compare/: {missing}"


def test_compare_imports_go_one_way():
    in_compare = [name for name in modules() if layer(name) == "compare"]
    unplaced = [f"{name} (in no slot: add it to COMPARE_ORDER)" for name in in_compare if compare_slot(name) is None]
    inside = [imp for imp in first_party_edges() if layer(imp.importer) == layer(imp.target) == "compare"]
    violations = unplaced + [
        f"{imp} (a higher slot of COMPARE_ORDER)"
        for imp in inside
        if None not in (compare_slot(imp.importer), compare_slot(imp.target))
        and compare_slot(imp.target) > compare_slot(imp.importer)
    ]
    assert not violations, report(violations, "imports up compare/'s order")


def test_no_module_imports_another_modules_private_name():
    violations = [
        str(imp)
        for imp in imports()
        if imp.first_party
        and imp.name
        and imp.name.startswith("_")
        and not imp.name.startswith("__")
        and imp.target != imp.importer
    ]
    assert not violations, report(violations, "private names imported from another module (make them public there)")


def test_imports_inside_functions_are_only_optional_packages_or_the_clis_subcommands():
    required = required_packages()

    def allowed(imp: Import) -> bool:
        if imp.first_party:
            return imp.importer == LAZY_IMPORTER
        if imp.target in NEEDS_OPTIONAL:
            return True
        return imp.top_level not in required and imp.top_level not in sys.stdlib_module_names

    violations = [str(imp) for imp in imports() if imp.in_function and not allowed(imp)]
    assert not violations, report(violations, "imports inside functions (only optional packages, and cli.py's own)")
