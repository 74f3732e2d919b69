"""Imports flow one way: cli -> methods -> train -> {data, nn, register} -> physics -> {io, ...} -> base.

The test reads every module of the package with `ast` (function-level imports included: a lazy import is
still a dependency), fails on an import into a higher layer, on anything importing the CLI, and on a
cycle between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import kfjax

PACKAGE = Path(kfjax.__file__).parent

# Layer of each top-level part of kfjax: a module may import its own layer or lower ones.
LAYERS = {
    "kfjax": 0, "kfjax.errors": 0, "kfjax.config": 0, "kfjax.units": 0, "kfjax.runtime": 0,
    "kfjax.io": 1, "kfjax.losses": 1, "kfjax.metrics": 1, "kfjax.viz": 1,
    "kfjax.physics": 2,
    "kfjax.nn": 3, "kfjax.data": 3, "kfjax.register": 3,
    "kfjax.train": 4,
    "kfjax.methods": 5, "kfjax.bench": 5,
    "kfjax.cli": 6, "kfjax.__main__": 6,
}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The kfjax modules `name` imports (a `from package import module` counts as the module)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "kfjax"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if base.split(".")[0] != "kfjax":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m != name}


def _layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    raise AssertionError(f"{module} has no layer in tests/test_imports.py: add it to LAYERS")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_import_goes_down_or_sideways():
    upward = [f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
              for m, deps in _graph().items() for d in sorted(deps) if _layer(d) > _layer(m)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_nothing_imports_the_cli():
    users = [m for m, deps in _graph().items() if not m.startswith(("kfjax.cli", "kfjax.__main__"))
             and any(d == "kfjax.cli" or d.startswith("kfjax.cli.") for d in deps)]
    assert not users, f"modules importing the CLI: {users}"


def test_no_import_cycles():
    graph = _graph()
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_rule_sees_a_planted_upward_import(tmp_path):
    """The checker itself: an upward import written into a module is reported."""
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from kfjax.methods.registry import build\n")
    deps = _imports("kfjax.physics.fake", fake, _modules())
    assert "kfjax.methods.registry" in deps and _layer("kfjax.methods.registry") > _layer("kfjax.physics.fake")
