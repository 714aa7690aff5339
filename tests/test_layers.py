"""The import layers (CONVENTIONS 3), read from the source with ``ast``.

``fleet_protocol`` at the bottom imports nothing of ours; ``firmware_shims``
(hardware dialects and simulators) only ``fleet_protocol``; ``edge_agent`` and
``collector`` side by side, never each other; ``fleet_sim`` on top, the only
package that composes both. Every import counts: module level, inside
functions, under ``TYPE_CHECKING``, and ``importlib.import_module("...")``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("fleet_protocol", "firmware_shims", "edge_agent", "collector", "fleet_sim")

#: package -> the packages of ours it may import (besides itself).
ALLOWED: dict[str, frozenset[str]] = {
    "fleet_protocol": frozenset(),
    "firmware_shims": frozenset({"fleet_protocol"}),
    "edge_agent": frozenset({"fleet_protocol", "firmware_shims"}),
    "collector": frozenset({"fleet_protocol", "firmware_shims"}),
    "fleet_sim": frozenset({"fleet_protocol", "firmware_shims", "edge_agent", "collector"}),
}
#: Collector-only libraries the lower layers and the agent must never import.
COLLECTOR_ONLY = ("aiohttp", "aiohttp_jinja2", "jinja2", "argon2", "openpyxl")


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def imports_of(package: str) -> Iterator[tuple[str, str]]:
    """(``file:line``, top-level package) of every import in ``package``."""
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path):
            yield f"{path.relative_to(ROOT)}:{line}", module.split(".")[0]


@pytest.mark.parametrize("package", OURS)
def test_package_imports_only_the_layers_below(package: str) -> None:
    wrong = [
        f"{where} imports {top}"
        for where, top in imports_of(package)
        if top in OURS and top != package and top not in ALLOWED[package]
    ]
    assert wrong == []


@pytest.mark.parametrize("package", ["fleet_protocol", "firmware_shims", "edge_agent"])
def test_no_collector_library_below_the_collector(package: str) -> None:
    wrong = [f"{w} imports {top}" for w, top in imports_of(package) if top in COLLECTOR_ONLY]
    assert wrong == []


def test_only_the_simulator_imports_both_the_agent_and_the_collector() -> None:
    both = [p for p in OURS if {"edge_agent", "collector"} <= {top for _, top in imports_of(p)}]
    assert both == ["fleet_sim"]


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "import collector.api\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from edge_agent.agent import Agent\n"
        "def f():\n"
        "    from fleet_sim import cluster\n"
        "    importlib.import_module('firmware_shims.modem.sim')\n"
        "from . import sibling\n",
        encoding="utf-8",
    )
    assert [m for _, m in imported_modules(src)] == [
        "collector.api",
        "typing",
        "edge_agent.agent",
        "fleet_sim",
        "firmware_shims.modem.sim",
    ]
