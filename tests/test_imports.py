"""The import graph of duda_hf: it has no circle, and each layer imports only the layers below it.

The layers, lowest first (docs/design.md, "Layout"): the foundations (`jsonio`, `data`: label space and datasets);
`networks`; beside each other and not importing one another, `method` (the step as pure tensor code) and
`evaluation`; `export`; `training` (the Trainer); `cli` (arguments and programs). No module imports, directly or
through others, a module that imports it back.

The graph is read from the source with `ast` (every `import` and `from ... import` statement, also those inside
functions), so a circle that only shows at run time, behind a late import, counts too. The package `__init__`'s
lazy exports (`importlib.import_module` on first attribute access) are not import statements and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import duda_hf

PACKAGE_DIR = Path(duda_hf.__file__).resolve().parent


def module_names(root: Path = PACKAGE_DIR, package: str = "duda_hf") -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its `__init__.py`)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([package, *parts])] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports (absolute and relative imports, `from . import x` as submodule x)."""
    is_package = path.name == "__init__.py"
    own_package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = own_package.split(".")
                base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # `from X import y` imports X, and X.y when y is a submodule
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # the module itself; a name that is not a module (a function, a class) stands for the module holding it
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = PACKAGE_DIR, package: str = "duda_hf") -> dict[str, set[str]]:
    modules = module_names(root, package)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the strongly connected components of `graph`, each sorted."""
    index, lowlink, on_stack, stack, components = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                lowlink[node] = min(lowlink[node], lowlink[successor])
            elif successor in on_stack:
                lowlink[node] = min(lowlink[node], index[successor])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One circle through the component's first module, as a path that ends where it starts."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph[node] & members):
                if successor == start:
                    return [*paths[node], start]
                if successor not in paths:
                    paths[successor] = [*paths[node], successor]
                    following.append(successor)
        frontier = following
    return component


def test_the_package_import_graph_has_no_circle():
    graph = import_graph()
    assert {"duda_hf.data.domains", "duda_hf.data.native", "duda_hf.cli.training_run", "duda_hf.cli.train_duda"} <= set(graph)
    circles = [cycle_in(component, graph) for component in strongly_connected(graph) if len(component) > 1]
    assert not circles, "import circles: " + "; ".join(" -> ".join(circle) for circle in circles)


def test_the_graph_sees_relative_late_and_submodule_imports(tmp_path):
    """The checker finds a circle made of a relative import, an import inside a function and `from . import x`."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub.b import thing\n")
    (package / "sub" / "b.py").write_text("def thing():\n    from .. import c\n    return c\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from .sub import b\n")
    graph = import_graph(package, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg", "pkg.c"}
    assert graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.d"] == {"pkg.sub", "pkg.sub.b"}
    circles = [cycle_in(c, graph) for c in strongly_connected(graph) if len(c) > 1]
    assert circles == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]


# Which layers each layer may import (its own included). `method` and `evaluation` sit side by side.
FOUNDATION = {"foundation"}
ALLOWED = {
    "foundation": FOUNDATION,
    "networks": FOUNDATION | {"networks"},
    "method": FOUNDATION | {"networks", "method"},
    "evaluation": FOUNDATION | {"networks", "evaluation"},
    "export": FOUNDATION | {"networks", "evaluation", "export"},
    "training": FOUNDATION | {"networks", "method", "evaluation", "export", "training"},
    "cli": FOUNDATION | {"networks", "method", "evaluation", "export", "training", "cli"},
}


def layer_of(module: str, package: str = "duda_hf") -> str | None:
    """The layer a module belongs to: its first sub-package, `jsonio` and `data` as the foundation; None for the
    package itself (whose exports load lazily and import nothing)."""
    parts = module.split(".")[1:]
    if not parts:
        return None
    return "foundation" if parts[0] in ("jsonio", "data") else parts[0]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imported in sorted(graph.items()):
        layer = layer_of(module)
        for target in sorted(imported):
            target_layer = layer_of(target)
            if layer is not None and target_layer is not None and target_layer not in ALLOWED[layer]:
                found.append(f"{module} ({layer}) imports {target} ({target_layer})")
    return found


def test_every_module_belongs_to_a_layer():
    layers = {layer_of(module) for module in import_graph()} - {None}
    assert layers == set(ALLOWED), f"modules outside the layers: {layers - set(ALLOWED)}; add the layer to ALLOWED and docs/design.md"


def test_each_layer_imports_only_the_layers_below_it():
    violations = layer_violations(import_graph())
    assert not violations, "imports against the layers:\n" + "\n".join(violations)


def test_the_layer_check_fails_when_a_lower_layer_imports_a_higher_one():
    graph = import_graph()
    assert not layer_violations(graph)
    for module, target in (
        ("duda_hf.method.step", "duda_hf.training.trainer"),  # the method does not know the Trainer
        ("duda_hf.method.losses", "duda_hf.evaluation.confusion"),  # side by side: neither imports the other
        ("duda_hf.networks.loading", "duda_hf.export.hub"),
        ("duda_hf.data.labels", "duda_hf.networks.presets"),
        ("duda_hf.training.trainer", "duda_hf.cli.arguments"),
    ):
        changed = {**graph, module: graph[module] | {target}}
        assert layer_violations(changed) == [f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"]
