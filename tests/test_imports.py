"""The packages' import graph, read statically from the source (every import, including lazy ones inside functions).

Rules (docs/architecture.md, CONTRIBUTING.md):

- no import cycles inside ``syncam_data`` and ``syncam_model``: a module that two others need lives on its own;
- ``syncam_data`` never imports ``syncam_model`` (data flows one way: shards -> loader -> model);
- ``syncam_data.shards.reader`` (and ``validate``) read a dataset without importing anything that writes one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("syncam_data", "syncam_model")


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of ``packages`` under ``root``."""
    out: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """module -> the modules of ``packages`` it imports (``from pkg import mod`` counts as importing ``pkg.mod``)."""
    files = module_files(root, packages)

    def known(name: str) -> str | None:
        while name and name not in files:  # `import a.b.func`-style names: the longest module prefix
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                deps.update(filter(None, (known(a.name) for a in node.names)))
            elif isinstance(node, ast.ImportFrom):
                base = (
                    ".".join(here[: len(here) - node.level + 1] + [node.module or ""]).strip(".")
                    if node.level
                    else node.module or ""
                )
                for a in node.names:
                    target = f"{base}.{a.name}" if f"{base}.{a.name}" in files else known(base)
                    if target:
                        deps.add(target)
        deps.discard(mod)
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    """The checker itself: a lazy import inside a function closes a cycle as much as a top-level one."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg import c\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.d"] == {"pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_no_import_cycles() -> None:
    found = cycles(import_graph(ROOT))
    assert not found, "import cycles (move the shared pieces into a module both can import): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_data_never_imports_the_model() -> None:
    graph = import_graph(ROOT)
    bad = sorted(
        f"{m} -> {d}"
        for m, deps in graph.items()
        if m.startswith("syncam_data")
        for d in deps
        if d.startswith("syncam_model")
    )
    assert not bad, bad


def test_shard_readers_do_not_import_what_writes_shards() -> None:
    """The reader and validate need the schema, the layout and video decoding: never the writer, the build or adapters."""
    graph = import_graph(ROOT)
    writers = (
        "syncam_data.shards.writer",
        "syncam_data.shards.build",
        "syncam_data.shards.adapters",
        "syncam_data.render",
    )
    for reader in ("syncam_data.shards.reader", "syncam_data.shards.validate"):
        bad = sorted(m for m in reachable(graph, reader) if m.startswith(writers))
        assert not bad, f"{reader} imports {bad}"
