"""No import cycle under src/ckptfs: every module is read with `ast` (nothing imported),
and the graph of which module imports which must have no cycle, so each layer and each
package can be read (and loaded) from the bottom up."""
import ast
import os

import pytest

SRC = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "src")


def module_files() -> dict[str, str]:
    """{dotted module name: path} of every module under src/ckptfs (a package is named
    by its directory: ckptfs.cli for ckptfs/cli/__init__.py)."""
    found = {}
    for directory, _dirs, files in os.walk(os.path.join(SRC, "ckptfs")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                dotted = os.path.relpath(path, SRC)[:-len(".py")].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def imported_by(module: str, path: str, modules: dict) -> set[str]:
    """The modules of ckptfs that `module` imports, anywhere in it (a function's lazy
    import counts too). `from X import Y` depends on X, and on X.Y when that is a
    module; a relative import resolves against the module's package (`from . import Y`
    in a submodule depends on its package)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    deps = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            deps.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            deps.update(name for name in [base] + [f"{base}.{a.name}" for a in node.names]
                        if name in modules)
    return deps - {module}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {module: imported_by(module, path, modules) for module, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm,
    iterative): each is a set of modules that import each other, directly or not."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for root, imports in graph.items():
        if root in index:
            continue
        work = [(root, iter(sorted(imports)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_finds_a_cycle_and_its_members():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "ckptfs.cli.app" in graph["ckptfs.cli"]            # inside a function
    assert "ckptfs.store.errors" in graph["ckptfs.store"]     # `from .errors import …`
    assert "ckptfs.cli._common" in graph["ckptfs.cli.versions"]


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


# Each package of ckptfs (and each top-level module) on its own, so a failure names it.
@pytest.mark.parametrize("package", sorted({package_of(module) for module in module_files()}))
def test_no_import_cycle(package):
    involved = [c for c in cycles(import_graph())
                if any(package_of(m) == package for m in c)]
    assert involved == [], f"import cycles through {package}: {involved}"
