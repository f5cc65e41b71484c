"""The package layout and its import boundaries, read from the source with ``ast``.

Nothing here imports monitor: the files are parsed, so a boundary violation is
reported even when the forbidden package is installed, and the checks cost no
torch import. Every check walks the tree, so new modules are covered as they
are added.

Imports are every ``import`` / ``from ... import`` anywhere in a module
(functions included), relative ones resolved, plus ``importlib.import_module``
and ``__import__`` calls on a string literal; imports under
``if TYPE_CHECKING:`` are left out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MONITOR = ROOT / "monitor"
TOP_LEVEL_MODULES = {"__init__.py", "cli.py", "settings.py"}
SUBPACKAGES = {"stream", "attention", "drift", "export", "tools"}
KAFKA_MODULE = "monitor/stream/kafka.py"


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self.root = root
        self.found: set[str] = set()

    def _package(self, level: int) -> str:
        parts = module_name(self.path, self.root).split(".")
        if self.path.name != "__init__.py":
            parts = parts[:-1]  # a module's package
        return ".".join(parts[: len(parts) - (level - 1)])

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            base = ".".join(p for p in (self._package(node.level), base) if p)
        self.found.add(base)
        # `from pkg import name` may import the submodule pkg.name
        self.found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("import_module", "__import__") and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and not first.value.startswith("."):
                self.found.add(first.value)
        self.generic_visit(node)


def imports(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of every module ``path`` (a file under ``root``) imports."""
    visitor = _Imports(path, root)
    visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return visitor.found


def imports_package(path: Path, package: str, root: Path = ROOT) -> bool:
    return any(name == package or name.startswith(package + ".") for name in imports(path, root))


# -- the helpers themselves ------------------------------------------------------------


def test_import_reader_resolves_relative_and_dynamic_imports(tmp_path: Path) -> None:
    module = tmp_path / "monitor" / "drift" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import cohorts\n"
        "from ..stream.pipeline import Pipeline\n"
        "import numpy as np\n"
        "def f():\n"
        "    import torch.nn\n"
        "    return importlib.import_module('kafka')\n"
        "if TYPE_CHECKING:\n"
        "    import prometheus_client\n"
    )
    found = imports(module, tmp_path)
    assert {"monitor.drift.cohorts", "monitor.stream.pipeline", "numpy", "torch.nn", "kafka"} <= found
    assert imports_package(module, "torch", tmp_path) and imports_package(module, "kafka", tmp_path)
    assert not imports_package(module, "prometheus_client", tmp_path)  # TYPE_CHECKING only
    assert not imports_package(module, "torc", tmp_path)
    assert not imports_package(module, "monitor.stream.pipe", tmp_path)


# -- (a) the top level -----------------------------------------------------------------


def test_top_level_holds_only_cli_settings_and_the_subpackages() -> None:
    modules = {p.name for p in MONITOR.glob("*.py")}
    folders = {p.name for p in MONITOR.iterdir()
               if p.is_dir() and p.name != "__pycache__" and not p.name.startswith(".")}
    assert modules == TOP_LEVEL_MODULES, f"unexpected top-level modules: {sorted(modules - TOP_LEVEL_MODULES)}"
    assert folders == SUBPACKAGES, (
        f"unexpected folders {sorted(folders - SUBPACKAGES)}, missing {sorted(SUBPACKAGES - folders)}")
    for name in SUBPACKAGES:
        assert (MONITOR / name / "__init__.py").is_file(), f"monitor/{name} is not a package"


# -- (b) every subpackage says what it is for ------------------------------------------


@pytest.mark.parametrize("name", sorted(SUBPACKAGES))
def test_subpackage_has_a_docstring(name: str) -> None:
    init = MONITOR / name / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert doc and len(doc.split()) >= 10, f"monitor/{name}/__init__.py needs a docstring saying the package's role"


# -- (c) drift is numpy/scipy only -----------------------------------------------------


@pytest.mark.parametrize("path", python_files(MONITOR / "drift"), ids=rel)
def test_drift_imports_no_torch_kafka_or_prometheus(path: Path) -> None:
    for package in ("torch", "kafka", "prometheus_client"):
        assert not imports_package(path, package), f"{rel(path)} imports {package}"


# -- (d) one module talks to Kafka -----------------------------------------------------


def test_exactly_one_module_imports_kafka() -> None:
    importers = [rel(p) for p in python_files(MONITOR) if imports_package(p, "kafka")]
    assert importers == [KAFKA_MODULE]


# -- (e) settings stay light -----------------------------------------------------------


def test_settings_import_neither_torch_nor_the_pipeline() -> None:
    settings = MONITOR / "settings.py"
    assert not imports_package(settings, "torch")
    assert not imports_package(settings, "monitor.stream.pipeline")
