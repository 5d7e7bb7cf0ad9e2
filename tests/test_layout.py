"""The package's house: the import graph of `unicl` has no cycle, and the layered contract covers every package.

The graph is built here from the source, independently of import-linter (which .ci/run runs on the same contract):
every ``import`` statement counts, at module level, inside functions and under ``TYPE_CHECKING`` alike, so a lazy
import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "unicl"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Every module of the package under ``root`` and the package's modules it imports, anywhere in its source."""
    sources = {module_name(path, root): path for path in root.rglob("*.py")}
    prefix = root.name
    graph: dict[str, set[str]] = {}
    for name, path in sources.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in sources else node.module)
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                raise AssertionError(f"{path}: relative import; the house uses absolute imports")
        graph[name] = {target for target in targets if target.split(".")[0] == prefix and target != name}
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` of ``graph``, or ``None`` when it has none (iterative depth-first search)."""
    finished: set[str] = set()
    for start in sorted(graph):
        if start in finished:
            continue
        path = [start]
        pending = [iter(sorted(graph.get(start, ())))]
        while pending:
            target = next(pending[-1], None)
            if target is None:
                pending.pop()
                finished.add(path.pop())
            elif target in path:
                return [*path[path.index(target) :], target]
            elif target not in finished:
                path.append(target)
                pending.append(iter(sorted(graph.get(target, ()))))
    return None


def test_find_cycle_finds_a_cycle_and_nothing_in_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "d"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y"}}) == ["y", "y"]
    # A diamond is no cycle.
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None


def test_import_graph_counts_imports_inside_functions_and_type_checking(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "low.py").write_text("def f():\n    from pkg.high import g\n")
    (package / "high.py").write_text(
        "from typing import TYPE_CHECKING\nimport os\nfrom pkg.sub import low\nif TYPE_CHECKING:\n    import pkg.sub\n"
    )
    graph = import_graph(package)
    assert graph["pkg.high"] == {"pkg.sub.low", "pkg.sub"}
    assert graph["pkg.sub.low"] == {"pkg.high"}
    assert find_cycle(graph) == ["pkg.high", "pkg.sub.low", "pkg.high"]


def test_unicl_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_imports_the_top_level_package():
    # `unicl/__init__.py` only points down into the packages; a module importing `unicl` back would close a cycle
    # through every package.
    importers = sorted(name for name, targets in import_graph().items() if "unicl" in targets)
    assert importers == []


def contract_layers() -> list[set[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (top,) = [contract for contract in config["contracts"] if contract["id"] == "layers"]
    return [{name.strip() for name in layer.split("|")} for layer in top["layers"]]


def test_the_layered_contract_names_every_top_level_module_and_package_once():
    named = [name for layer in contract_layers() for name in layer]
    assert len(named) == len(set(named))
    top_level = {
        f"unicl.{path.stem if path.is_file() else path.name}"
        for path in PACKAGE.iterdir()
        if (path.suffix == ".py" and path.name != "__init__.py") or (path / "__init__.py").is_file()
    }
    assert set(named) == top_level


def test_the_layers_only_point_down():
    # The same rule import-linter checks, from this file's own graph: a module of a layer imports only modules of
    # its own package or of lower layers, never a sibling of its layer.
    layers = contract_layers()
    rank = {name: (index, name) for index, layer in enumerate(layers) for name in layer}

    def owner(module: str) -> tuple[int, str]:
        parts = module.split(".")
        return rank[".".join(parts[:2])]

    wrong = [
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        if source != "unicl"
        for target in targets
        if owner(target)[1] != owner(source)[1] and owner(target)[0] <= owner(source)[0]
    ]
    assert wrong == []


@pytest.mark.parametrize("schedule", ["unicl.loss.kernels.one_pass", "unicl.loss.kernels.two_pass"])
def test_each_kernel_schedule_is_one_file_only_the_backend_choice_names(schedule):
    importers = {name for name, targets in import_graph().items() if schedule in targets}
    assert importers <= {"unicl.loss.backends", "unicl.loss.kernels.compile_report"}


def lazy_packages() -> dict[str, Path]:
    """The packages whose ``__init__`` declares a `unicl._exports` name table."""
    return {
        module_name(path, PACKAGE): path
        for path in sorted(PACKAGE.rglob("__init__.py"))
        if "_PUBLIC_NAMES" in path.read_text() or "lazy_package(" in path.read_text()
    }


#: The packages that still declare their table, ``__all__`` and imports apart (`unicl._exports.lazy_exports`), each
#: kept in step by the test below; a package leaves the list when it declares one table (`lazy_package`).
SEPARATE_TABLES: list[str] = []


def declared_exports(path: Path) -> tuple[dict[str, str], dict[str, str], list[str] | None]:
    """A lazy ``__init__``'s name table (name -> module), its ``TYPE_CHECKING`` imports (name -> module) and its
    literal ``__all__`` (``None`` where `lazy_package` derives it from the table)."""
    table: dict[str, str] = {}
    typed: dict[str, str] = {}
    exported: list[str] | None = None
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            target = node.targets[0].id
            if target == "_PUBLIC_NAMES":
                table = ast.literal_eval(node.value)
            elif target == "__all__":
                exported = ast.literal_eval(node.value)
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "lazy_package":
            modules = ast.literal_eval(node.args[1])
            table = {name: module for module, names in modules.items() for name in names}
        elif isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom) and statement.module is not None
                typed.update({alias.asname or alias.name: statement.module for alias in statement.names})
    return table, typed, exported


@pytest.mark.parametrize("package", sorted(lazy_packages()))
def test_a_lazy_package_declares_each_name_once_and_every_name_resolves(package):
    """The name table, the type checker's imports (what the import graph above sees) and ``__all__`` agree, and
    each name resolves, through the package, to its module's own object."""
    import importlib

    table, typed, exported = declared_exports(lazy_packages()[package])
    namespace = importlib.import_module(package)
    assert table, "no name table found"
    assert table == typed
    assert (exported is not None) == (package in SEPARATE_TABLES)
    assert set(namespace.__all__) - {"__version__"} == set(table)
    if exported is not None:
        assert exported == namespace.__all__
    for name, module in table.items():
        assert getattr(namespace, name) is getattr(importlib.import_module(module), name), name


def test_a_one_table_package_re_exports_each_name_for_type_checkers():
    """Where ``__all__`` is derived at run time, type checkers (pyright in a ``py.typed`` package, mypy with
    ``--no-implicit-reexport``) take an import as public only in its ``import name as name`` form."""
    for package, path in lazy_packages().items():
        if package in SEPARATE_TABLES:
            continue
        tree = ast.parse(path.read_text())
        guarded = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
        aliases = [alias for node in guarded for statement in node.body for alias in statement.names]
        assert aliases and all(alias.asname == alias.name for alias in aliases), package


def test_the_lazy_packages_are_the_ones_the_commands_read():
    assert sorted(lazy_packages()) == [
        "unicl",
        "unicl.data",
        "unicl.evaluation",
        "unicl.loss",
        "unicl.text",
        "unicl.training",
    ]
