"""The import graph of harmony_jax, read from the source (nothing is imported): no module imports
one that imports it back, even lazily inside a function, and the arrows that once pointed the
wrong way stay gone."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "harmony_jax"

# (importer, imported) package prefixes that must never appear: the codecs know nothing of the
# conversion CLI, the model nothing of the codecs, the mesh nothing of training.
FORBIDDEN = [
    ("harmony_jax.codecs", "harmony_jax.convert"),
    ("harmony_jax.model", "harmony_jax.codecs"),
    ("harmony_jax.parallel", "harmony_jax.training"),
    ("harmony_jax.weights", "harmony_jax.codecs"),
    ("harmony_jax.weights", "harmony_jax.model"),
    ("harmony_jax.diffusion", "harmony_jax.codecs"),
]


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("harmony_jax"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("harmony_jax.")}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_no_module_imports_one_that_imports_it_back():
    graph, state, path = _graph(), {}, []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("importer,imported", FORBIDDEN)
def test_no_upward_arrow(importer, imported):
    wrong = [
        f"{m} -> {t}"
        for m, targets in _graph().items()
        if m.startswith(importer)
        for t in targets
        if t.startswith(imported)
    ]
    assert not wrong, wrong
