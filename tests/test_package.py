"""The package surface and its layers: what `import sensfind` loads and exports, and which folder may
import which."""

import ast
import subprocess
import sys
from pathlib import Path

import sensfind as sf

PACKAGE = Path(sf.__file__).parent

# The layers, lowest first: a module may import from its own folder and from folders listed before it.
# "" is the package root (errors, configs, runio, flags, specs); lab/ is the experiments' machinery and
# testing/ the contract suites, both free to use every layer. The package's __init__ is the facade.
LAYERS = ["", "core", "models", "discovery", "dictionaries", "comparison", "reporting", "tuning", "app", "lab", "testing"]


def internal_imports(path: Path) -> set[str]:
    """The sensfind modules that ``path`` imports, wherever the import statement stands."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "sensfind")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "sensfind":
                continue
            for alias in node.names:  # `from sensfind.core import scan` imports a module, not a name of the package
                sub = f"{target}.{alias.name}"
                is_module = (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists() or \
                    (PACKAGE.parent / sub.replace(".", "/") / "__init__.py").exists()
                found.add(sub if is_module else target)
    return found


def module_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = internal_imports(path)
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def layer(module: str) -> str:
    """The folder of a module: ``sensfind.core.scan`` and ``sensfind.core`` are in core, ``sensfind.errors``
    in the root."""
    parts = module.split(".")[1:]
    return parts[0] if parts and parts[0] in LAYERS else ""


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in graph.items() if m != "sensfind" for d in deps
                  if LAYERS.index(layer(d)) > LAYERS.index(layer(m)))


def import_circles(graph: dict[str, set[str]]) -> list[str]:
    graph = {m: deps for m, deps in graph.items() if m != "sensfind"}  # the facade imports every layer
    state, circles = {}, []

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if d == "sensfind":
                circles.append(f"{m} -> sensfind (the facade)")
            elif state.get(d) == "open":
                circles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return circles


def test_imports_point_down_or_sideways():
    assert upward_imports(module_graph()) == []


def test_no_import_circles():
    assert import_circles(module_graph()) == []


def test_the_layer_checks_can_fail():
    graph = {"sensfind.core.scan": {"sensfind.app.cli"}, "sensfind.app.cli": {"sensfind.core.scan"},
             "sensfind.errors": set(), "sensfind.core.geometry": {"sensfind.errors"}}
    assert upward_imports(graph) == ["sensfind.core.scan -> sensfind.app.cli"]
    assert import_circles(graph) == ["sensfind.app.cli -> sensfind.core.scan -> sensfind.app.cli"]


def test_import_does_not_load_optuna_or_sae_lens():
    code = "import sys, sensfind; print('optuna' in sys.modules, 'sae_lens' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_every_exported_name_resolves():
    assert len(sf.__all__) <= 40
    assert len(set(sf.__all__)) == len(sf.__all__)
    for name in sf.__all__:
        assert getattr(sf, name) is not None, name


def test_the_readme_names_are_exported():
    readme = (PACKAGE.parents[1] / "README.md").read_text()
    import re

    used = set(re.findall(r"\bsf\.([A-Za-z_]\w*)", readme))
    assert used, "the README uses sensfind as sf"
    assert sorted(used - set(sf.__all__) - {"__version__"}) == []
