"""The package's imports have no cycle between any two modules, ``TYPE_CHECKING`` ones included.

The layers themselves are import-linter contracts in ``pyproject.toml`` (``make lint``). Its
``acyclic_siblings`` contract sees a cycle between the children of a package, not one that runs
through a package's own ``__init__``; these tests look at every module, with grimp (the graph
library under import-linter). The imports that contract ignores for now are ignored here too,
read from ``pyproject.toml``, so one list says what is still allowed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import grimp
import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
PACKAGE = "vault_rotator"


def ignored_imports() -> list[tuple[str, str]]:
    """The ``ignore_imports`` of the ``acyclic`` import-linter contract, as (importer, imported)."""
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    (acyclic,) = (c for c in contracts if c["id"] == "acyclic")
    pairs = []
    for line in acyclic.get("ignore_imports", []):
        importer, _, imported = (part.strip() for part in line.partition("->"))
        assert "*" not in line, f"name the import exactly: {line}"
        pairs.append((importer, imported))
    return pairs


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    built = grimp.build_graph(PACKAGE, cache_dir=None)  # TYPE_CHECKING imports count
    for importer, imported in ignored_imports():
        stale = f"{importer} no longer imports {imported}: delete it from ignore_imports"
        assert built.direct_import_exists(importer=importer, imported=imported), stale
        built.remove_import(importer=importer, imported=imported)
    return built


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every set of modules that import each other in a circle (Tarjan's strongly connected
    components of more than one module, or a module importing itself)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for target in sorted(graph.find_modules_directly_imported_by(module)):
            if target not in order:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            component = stack[stack.index(module) :]
            del stack[stack.index(module) :]
            if len(component) > 1 or module in graph.find_modules_directly_imported_by(module):
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in order:
            visit(module)
    return found


def test_no_import_cycle_between_any_two_modules(graph: grimp.ImportGraph) -> None:
    """No module reaches itself through imports: each cycle is named with one of its chains."""
    described = []
    for component in cycles(graph):
        first, second = component[0], component[1] if len(component) > 1 else component[0]
        there = graph.find_shortest_chain(importer=first, imported=second) or ()
        back = graph.find_shortest_chain(importer=second, imported=first) or ()
        described.append(" -> ".join([*there, *back[1:]]))
    assert described == []


def test_no_module_imports_through_a_package_init_that_imports_it(
    graph: grimp.ImportGraph,
) -> None:
    """``from vault_rotator.policy import defaults`` inside policy/ goes through policy's
    ``__init__``, which imports that very module: a cycle grimp records as a plain import of
    ``policy.defaults``. Inside a package, name the module (``import ... .defaults as x``)."""
    through_init = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            for detail in graph.get_import_details(importer=module, imported=imported):
                line = str(detail["line_contents"])
                package = line.removeprefix("from ").partition(" import ")[0]
                inside = module.startswith(f"{package}.")
                if line.startswith("from ") and inside and graph.chain_exists(package, module):
                    through_init.append(f"{module}:{detail['line_number']}: {line}")
    assert through_init == []
