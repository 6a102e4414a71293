"""The shape of the code: no import circle, routers that import only shared helpers, small
modules (or a stated reason), and every module importable on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 500
REASON = "Why this module is long:"
ROUTERS = {
    "iatros.api.chat",
    "iatros.api.embeddings",
    "iatros.api.models",
    "iatros.api.ops",
    "iatros.api.admin",
    "iatros.api.knowledge",
    "iatros.web",
}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Every iatros module ``name`` imports, at module level or deferred in a function."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in mods:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            # A module importing its own package (__init__ re-exports) is not a circle.
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def test_the_circle_finder_finds_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_src() -> None:
    assert _circles(_graph()) == []


def test_routers_import_shared_helpers_never_the_app_or_each_other() -> None:
    graph = _graph()
    for router in ROUTERS:
        imported = graph[router]
        assert "iatros.api.app" not in imported, router
        assert not (imported & (ROUTERS - {router})), (router, imported & ROUTERS)
    # Nothing below the HTTP layer knows it exists.
    for name, imported in graph.items():
        if name.startswith(
            (
                "iatros.gateway",
                "iatros.routing",
                "iatros.cache",
                "iatros.knowledge",
                "iatros.governance",
                "iatros.providers",
                "iatros.store",
            )
        ):
            assert not any(m.startswith(("iatros.api", "iatros.web")) for m in imported), name


def test_modules_are_small_or_say_why() -> None:
    long = []
    for name, path in _modules().items():
        if "migrations" in name:
            continue
        text = path.read_text()
        lines = len(text.splitlines())
        doc = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_LINES and REASON not in doc:
            long.append(f"{name}: {lines} lines")
    assert long == [], f"over {MAX_LINES} lines without '{REASON}' in the docstring: {long}"


def test_every_module_imports_alone() -> None:
    """Each module in a fresh interpreter: a circle through deferred imports would fail here."""
    names = sorted(n for n in _modules() if "migrations" not in n and n != "iatros.__main__")
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m.startswith('iatros')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {exc!r}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
