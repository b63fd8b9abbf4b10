"""No two modules of ``src/vtprune`` import each other, directly or through others.

Every ``import`` statement counts, including those inside functions (a lazy import still
ties the two modules together). Imports of a package's own ``__init__`` from inside that
package are left out: ``from vtprune import x`` in a submodule is the package's public face,
not a design circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import vtprune

ROOT = Path(vtprune.__file__).parent

KNOWN: set[frozenset[str]] = set()  # no exceptions: every import circle is a failure


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The ``vtprune`` modules that ``path`` imports (anywhere in the file)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import vtprune.core.types as x` -> that module
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # own package __init__
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: imports(p, set(files)) for m, p in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_detector_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_vtprune():
    found = [c for c in cycles(graph()) if frozenset(c) not in KNOWN]
    assert not found, f"import circles: {[sorted(c) for c in found]}"


def test_the_cli_package_imports_no_command_module_from_another():
    edges = graph()
    assert "vtprune.cli.args" in edges["vtprune.cli.bench"]
    for m, deps in edges.items():
        if m.startswith("vtprune.cli.") and m != "vtprune.cli.__main__":
            assert deps & {d for d in edges if d.startswith("vtprune.cli.")} <= {"vtprune.cli.args"}, m
