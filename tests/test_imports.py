"""The package's import graph: no circles, config a leaf, frameworks never imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import jconv

PACKAGE = Path(jconv.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """Every jconv module ``name`` imports, at the top or inside a function."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name) for name in MODULES}


def _reach(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_is_read():
    assert "jconv.lowering.planner" in GRAPH["jconv.lowering"]
    assert "jconv.algorithms" in GRAPH["jconv.config"]
    assert len(GRAPH) >= 20


def test_no_module_imports_itself_through_others():
    circles = sorted(name for name in GRAPH if name in _reach(name))
    assert not circles, f"import circles through: {circles}"


def test_config_is_a_leaf():
    reach = _reach("jconv.config")
    assert reach <= {"jconv.padding", "jconv.algorithms"}, sorted(reach)


def test_import_jconv_imports_no_framework():
    code = (
        "import sys, jconv; bad = [m for m in ('flax', 'equinox', 'torch', 'optax') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


FRAMEWORK_MODULES = {"jconv.nnx", "jconv.linen", "jconv.eqx"}


def test_framework_modules_are_leaves():
    assert FRAMEWORK_MODULES <= set(GRAPH)
    users = {name for name in GRAPH if _reach(name) & FRAMEWORK_MODULES}
    assert not users, f"modules that import a framework module: {sorted(users)}"
    assert "jconv.models" not in _reach("jconv"), "the model benchmark is not part of jconv"


def test_each_framework_module_imports_only_its_framework():
    code = (
        "import sys, jconv.{mod}; others = [m for m in {others!r} if m in sys.modules]; "
        "print(others); sys.exit(1 if others or {need!r} not in sys.modules else 0)"
    )
    for mod, need, others in (
        ("nnx", "flax", ("equinox", "torch")),
        ("linen", "flax", ("equinox", "torch")),
        ("eqx", "equinox", ("flax", "torch")),
    ):
        run = code.format(mod=mod, need=need, others=others)
        done = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True)
        assert done.returncode == 0, (mod, done.stdout + done.stderr)
