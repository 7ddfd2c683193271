"""The package's layout rules, checked on the source: no import cycles, and nothing imports the demos."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "modelfab"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of modelfab that ``path`` imports at run time (function-level too; not TYPE_CHECKING)."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module and node.module.startswith("modelfab"):
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules
                # ``from modelfab.store import schema`` imports the submodule, not a name of the package
                found.update(subs if len(subs) == len(node.names) else {node.module, *subs})

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names if a.name.startswith("modelfab"))

    Visitor().visit(ast.parse(path.read_text()))
    return found & modules


def _graph() -> dict[str, set[str]]:
    files = {}
    for f in PACKAGE.rglob("*.py"):
        if "proto" in f.parts or "migrations" in f.parts:
            continue
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts).removesuffix(".__init__")] = f
    modules = set(files)
    return {name: _imports(f, modules) - {name} for name, f in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    graph = _graph()
    assert graph.get("modelfab.serve.service")
    assert _cycles(graph) == []


def test_the_cycle_check_can_fail() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_only_the_demo_and_its_command_import_the_demo() -> None:
    graph = _graph()
    importers = sorted(
        name
        for name, deps in graph.items()
        if any(d == "modelfab.demo" or d.startswith("modelfab.demo.") for d in deps)
        and not name.startswith("modelfab.demo")
    )
    assert importers == ["modelfab.cli.quickstart"]


def test_serve_and_iterate_do_not_import_each_other() -> None:
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith("modelfab.serve"):
            assert not any(d.startswith("modelfab.iterate") for d in deps), name
        if name.startswith(("modelfab.iterate", "modelfab.traffic")):
            assert not any(d.startswith("modelfab.serve") for d in deps), name


def test_up_and_serve_run_without_demo_modules_loaded() -> None:
    code = (
        "import sys\n"
        "import modelfab.cli.main, modelfab.cli.iterate, modelfab.serve.server, modelfab.iterate.loop\n"
        "import modelfab.serve.workers.process, modelfab.serve.transport.rest\n"
        "print(sorted(m for m in sys.modules if m.startswith(('modelfab.demo', 'tritonclient', 'httpx'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
