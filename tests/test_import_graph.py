"""No import circle anywhere in the package, not even one hidden in a function-level import: import-linter's layer
contracts (tests/test_layers.py) see only the layers, so this test walks every ``import`` statement of every module
(top level and inside functions) and asserts the module graph has no cycle."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "distilbench"


def module_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module name -> the package's modules it imports anywhere in its file. ``from . import sub`` is an edge to the
    submodule (its package is already being imported when a submodule runs)."""
    base = package_dir.parent
    files = {".".join(p.relative_to(base).with_suffix("").parts).removesuffix(".__init__"): p
             for p in package_dir.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for name, path in files.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                parent = here[:len(here) - node.level + 1] if node.level else []
                target = ".".join(parent + ([node.module] if node.module else []))
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in files]
                targets = subs if subs and len(subs) == len(node.names) else [target, *subs]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_a_function_level_circle_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")  # a package importing its own submodule: no circle
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    graph = module_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]


def test_the_package_has_no_import_circle():
    graph = module_graph(ROOT)
    assert len(graph) > 50 and "distilbench.training.runs.runner" in graph["distilbench.training.families"]
    assert cycles(graph) == []


def deferred_imports(package_dir: Path) -> list[str]:
    """``file:line`` of every import of the package's own modules made inside a function."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [f"{path.relative_to(package_dir.parent).as_posix()}:{n.lineno}" for n in ast.walk(fn)
                          if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("distilbench"))]
    return sorted(set(found))


def test_a_deferred_import_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("from . import b\n\ndef f():\n    import os\n    from .b import g\n")
    assert deferred_imports(pkg) == ["pkg/a.py:5"]


def test_the_package_imports_its_own_modules_at_the_top_outside_the_commands():
    """Only the command modules defer the package's imports, and only for what loads torch or scipy: the parser,
    `ls` and `report` must start without them (tests/test_layers.py). Everywhere else a function-level import would
    hide a dependency the layer contracts should see."""
    outside = [f for f in deferred_imports(ROOT) if not f.startswith("distilbench/cli/")]
    assert outside == []
