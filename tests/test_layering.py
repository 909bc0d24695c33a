"""The layering rule, checked on every import of every module (README, Development):

    errors, logs, metrics  ←  protocols  ←  policy  ←  config*, store  ←  id  ←  gateway, web  ←  app, reload  ←  lab, init  ←  cli

An import may point down or sideways (within its own layer), never up, and the packages'
imports form no cycle (two packages of one layer, ``gateway`` and ``web``, ``app`` and
``reload``, may not import each other). An import inside a function counts as much as one at
the top. The known exceptions below are debts with a reason each; the test fails when a new one
appears *and* when one of them is paid (so the list only shrinks).
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ucgate"

RANK = {
    "__init__": 0,
    "__main__": 9,
    "errors": 0,
    "logs": 0,
    "metrics": 0,
    "py": 0,
    "protocols": 1,
    "policy": 2,
    "config": 3,
    "store": 3,
    "id": 4,
    "gateway": 5,
    "web": 5,
    "app": 6,
    "reload": 6,
    "lab": 7,
    "init": 7,
    "cli": 8,
}

# (importer, imported): why it is allowed. Empty since issue 15; a new entry needs its reason.
KNOWN: dict[tuple[str, str], str] = {}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for f in SRC.rglob("*.py"):
        rel = f.relative_to(SRC.parent).with_suffix("")
        module = ".".join(rel.parts)
        package = module.rsplit(".", 1)[0] if f.name != "__init__.py" else module.removesuffix(".__init__")
        module = module.removesuffix(".__init__")
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    targets = [".".join(base + ([node.module] if node.module else []))]
                elif node.module and node.module.startswith("ucgate"):
                    targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("ucgate")]
            out |= {(module, t) for t in targets}
    return out


def _upward() -> set[tuple[str, str]]:
    bad = set()
    for importer, imported in _imports():
        a, b = _layer(importer), _layer(imported)
        assert a in RANK and b in RANK, f"{importer} -> {imported}: give the layer a rank in this test"
        if a != b and RANK[b] > RANK[a]:
            bad.add((importer, imported))
    return bad


def test_imports_point_down():
    new = sorted(_upward() - set(KNOWN))
    assert not new, "imports that point up a layer:\n" + "\n".join(f"  {a} -> {b}" for a, b in new)


def test_known_exceptions_are_still_needed():
    paid = sorted(set(KNOWN) - _upward())
    assert not paid, "no longer needed (remove from KNOWN):\n" + "\n".join(f"  {a} -> {b}" for a, b in paid)


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for importer, imported in set(_imports()) - set(KNOWN):
        a, b = _layer(importer), _layer(imported)
        if a != b:
            graph.setdefault(a, set()).add(b)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        cycle = e.args[1]
        edges = [(x, y) for x, y in zip(cycle, cycle[1:], strict=False)]
        why = {
            f"{x} -> {y}": sorted(
                f"{i} -> {t}" for i, t in _imports() - set(KNOWN) if _layer(i) == x and _layer(t) == y
            )
            for x, y in edges
        }
        raise AssertionError(f"import cycle between packages: {' -> '.join(cycle)}: {why}") from None
