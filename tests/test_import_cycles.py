"""No import cycle among the project's packages (those pyproject.toml ships: fleetcore, fleetctl, authsvc, …).

The module graph is read from the source with ``ast``, so every import counts — at the top, inside a function
and under ``if TYPE_CHECKING:``: a cycle that only a deferred import keeps from failing is still two modules that
cannot be understood, tested or changed one without the other. Where one side needs only the shape of the other,
a ``typing.Protocol`` on the using side breaks the cycle (emqx/standin/session.py ``ClientConnection``).

``from package import name`` depends on ``package.name`` when that is a module, else on the package itself.
A module does not depend on its parent package merely by being inside it (Python imports the parent first
anyway), so a package's ``__init__`` may import its own modules, as flaskr's app factory does.
"""
from __future__ import annotations

import ast
import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Import:
    target: str          # the imported module
    line: int


def project_packages(root: Path = ROOT) -> list[str]:
    """The top-level packages pyproject.toml ships (``[tool.setuptools.packages.find] include``)."""
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({pattern.split(".")[0].rstrip("*") for pattern in patterns})


def module_files(root: Path, packages: list[str]) -> dict[str, Path]:
    """Module name → file, for every .py file under the packages."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The project modules ``name`` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def known(module: str) -> str | None:
        while module and module not in modules:          # `import a.b.C` where C is not a module
            module = module.rpartition(".")[0]
        return module or None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [known(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else known(source)
                       for alias in node.names]
        else:
            continue
        found += [Import(target, node.lineno) for target in targets if target is not None and target != name]
    return found


def import_graph(root: Path = ROOT, packages: list[str] | None = None) -> dict[str, list[Import]]:
    modules = module_files(root, packages if packages is not None else project_packages(root))
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan), each as [a, b, …, a]."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(start: str) -> None:
        # iterative Tarjan: (module, iterator over its imports)
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, edges = work[-1]
            for edge in edges:
                if edge.target not in index:
                    index[edge.target] = low[edge.target] = len(index)
                    stack.append(edge.target)
                    on_stack.add(edge.target)
                    work.append((edge.target, iter(graph[edge.target])))
                    break
                if edge.target in on_stack:
                    low[module] = min(low[module], index[edge.target])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[module])
                if low[module] == index[module]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == module:
                            break
                    if len(group) > 1:
                        groups.append(group)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return [_one_cycle(graph, group) for group in groups]


def _one_cycle(graph: dict[str, list[Import]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for edge in graph[module]:
                if edge.target == start:
                    return paths[module] + [start]
                if edge.target in group and edge.target not in paths:
                    paths[edge.target] = paths[module] + [edge.target]
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def describe(graph: dict[str, list[Import]], cycle: list[str]) -> str:
    steps = []
    for module, target in itertools.pairwise(cycle):
        line = next(edge.line for edge in graph[module] if edge.target == target)
        steps.append(f"{module} (line {line}) → {target}")
    return "; ".join(steps)


def test_no_import_cycle_among_the_project_packages():
    packages = project_packages()
    assert {"fleetcore", "fleetctl", "authsvc", "api", "emqx", "simulator"} <= set(packages)
    graph = import_graph(ROOT, packages)
    assert "emqx.standin.broker" in graph and "simulator.cli" in graph      # the files were found
    found = cycles(graph)
    assert found == [], "import cycles:\n" + "\n".join(describe(graph, cycle) for cycle in found)


# -- the check itself finds what it is meant to find ---------------------------------------------------------

def write_package(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_a_cycle_through_deferred_and_type_checking_imports_is_found(tmp_path):
    write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
        "pkg/b.py": "def make():\n    from pkg.c import C\n    return C\n",
        "pkg/c.py": "import pkg.a\n",
        "pkg/d.py": "from pkg import a\n",
    })
    graph = import_graph(tmp_path, ["pkg"])
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert describe(graph, ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]) == \
        "pkg.a (line 3) → pkg.b; pkg.b (line 2) → pkg.c; pkg.c (line 1) → pkg.a"


def test_a_cycle_between_two_packages_is_found(tmp_path):
    write_package(tmp_path, {
        "one/__init__.py": "from two.tools import helper\n",
        "two/__init__.py": "",
        "two/tools.py": "from one import CONSTANT\n",
    })
    assert cycles(import_graph(tmp_path, ["one", "two"])) == [["one", "two.tools", "one"]]


def test_a_package_importing_its_own_modules_is_no_cycle(tmp_path):
    write_package(tmp_path, {
        "app/__init__.py": "def create_app():\n    from app import views\n    return views\n",
        "app/views.py": "from app import db\nfrom . import models\n",
        "app/db.py": "",
        "app/models.py": "from .db import connect\n",
    })
    graph = import_graph(tmp_path, ["app"])
    assert [edge.target for edge in graph["app.views"]] == ["app.db", "app.models"]
    assert cycles(graph) == []
