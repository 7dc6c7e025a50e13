"""The package's layering holds: no import cycle between modules, and no library module imports an
entry point or the CLI plumbing (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "fvtrain"
ENTRY_POINTS = {"fvtrain.cli", "fvtrain.extract", "fvtrain.train", "fvtrain.compose", "fvtrain.evaluate",
                "fvtrain.pipeline", "fvtrain.report", "fvtrain.data.__main__"}


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join(parts)] = f
    return mods


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, f in mods.items():
        deps = set()
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in mods else stem for a in node.names]
            for t in targets:
                while t and t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                # a package's own __init__ re-exporting its modules is not a dependency edge
                if t in mods and t != name and not (mods[t].name == "__init__.py" and name.startswith(t + ".")):
                    deps.add(t)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (package __init__ edges ignored)."""
    mods = _modules()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if mods[w].name == "__init__.py":
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_library_modules_do_not_import_entry_points_or_the_cli():
    bad = {m: sorted(d & ENTRY_POINTS) for m, d in _graph().items() if m not in ENTRY_POINTS and d & ENTRY_POINTS}
    assert bad == {}


def test_the_checker_sees_a_cycle_and_an_entry_point_import(tmp_path, monkeypatch):
    """The checks above can fail: a package with a cycle and a library module importing the CLI."""
    pkg = tmp_path / "fvtrain"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from fvtrain import b\n")
    (pkg / "b.py").write_text("def f():\n    from fvtrain.a import x\n")
    (pkg / "cli.py").write_text("")
    (pkg / "lib.py").write_text("def g():\n    from fvtrain import cli\n")
    monkeypatch.setattr(__import__(__name__), "PKG", pkg)
    graph = _graph()
    assert _cycles(graph) == [["fvtrain.a", "fvtrain.b"]]
    assert graph["fvtrain.lib"] & ENTRY_POINTS == {"fvtrain.cli"}


def test_entry_points_stay_thin():
    """The orchestration lives in the stage jobs; the entry points compose, call and print."""
    files = [PKG / f"{m}.py" for m in ("extract", "train", "compose", "evaluate", "pipeline", "report", "cli")]
    assert sum(len(f.read_text().splitlines()) for f in files) <= 600
