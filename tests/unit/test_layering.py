"""The parts of the shim and which may import which (the README's Architecture section).

Every ``import shim.X`` in every module, at the top or inside a function, is
checked against the table; a new dependency between parts is a design
decision, made here and in the README, not by accident."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SHIM = Path(__file__).resolve().parents[2] / "shim"

# part -> the parts it may import (besides itself). Leaves first.
ALLOWED: dict[str, set[str]] = {
    "about": set(),
    "logfmt": set(),
    "errors": set(),
    "protowire": set(),
    "api": set(),
    "ttrpc": {"api", "protowire"},
    "gpu": set(),
    "runsc": {"errors"},
    "oci": {"errors"},
    "kube": {"api"},
    "config": {"api", "errors", "gpu", "protowire"},
    "task": {"api", "config", "errors", "gpu", "kube", "logfmt", "oci", "protowire", "runsc",
             "ttrpc"},
    "daemon": {"about", "api", "errors", "logfmt", "runsc", "task", "ttrpc"},
    # The start and delete actions stay light (their own modules import only the
    # standard library and kube/oci); -info, on no critical path, uses more.
    "manager": {"about", "api", "commands", "config", "daemon", "errors", "kube", "oci",
                "protowire", "runsc", "task"},
    "commands": {"about", "config", "daemon", "errors", "gpu", "oci", "runsc", "task"},
}


def _part(path: Path) -> str:
    rel = path.relative_to(SHIM).with_suffix("")
    return rel.parts[0]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("shim.") and n.count(".") >= 1}
    return found


MODULES = sorted(p for p in SHIM.rglob("*.py") if _part(p) not in ("api", "__init__"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SHIM)))
def test_imports_follow_the_layers(path: Path) -> None:
    part = _part(path)
    assert part in ALLOWED, f"new part {part}: add it to ALLOWED and to the README"
    imported = _imports(path) - {part}
    imported = {name for name in imported if name in ALLOWED}
    assert imported <= ALLOWED[part], (
        f"{path.relative_to(SHIM)} imports {sorted(imported - ALLOWED[part])}, which "
        f"{part} may not depend on")


def test_no_cycles_between_parts() -> None:
    # manager -> commands is the entry point's dispatch; nothing comes back.
    for part, deps in ALLOWED.items():
        for dep in deps:
            assert part not in ALLOWED.get(dep, set()), f"{part} <-> {dep}"


def test_the_package_root_imports_nothing() -> None:
    # Every import of any part runs shim/__init__.py first, the start path's too.
    assert _imports(SHIM / "__init__.py") == set()


def test_the_table_lists_every_part() -> None:
    parts = {_part(p) for p in SHIM.rglob("*.py")} - {"__init__", "api"}
    assert parts <= set(ALLOWED)
