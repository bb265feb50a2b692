"""Suite-wide options, markers by folder, and skips for what this machine lacks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import paths

_HERE = Path(__file__).resolve().parent
_BY_FOLDER = {"e2e": pytest.mark.e2e, "integration": pytest.mark.integration}
DEFAULT_CONTAINERD = "1.6,2.1"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gvisorgpu", "containerd-shim-gvisorgpu-v1 suite")
    group.addoption(
        "--containerd", dest="containerd_versions",
        default=os.environ.get("GVISORGPU_CONTAINERD", DEFAULT_CONTAINERD),
        help="comma-separated containerd versions the e2e tests run against "
             f"(1.6, 1.7, 2.1; default {DEFAULT_CONTAINERD}, env GVISORGPU_CONTAINERD)")
    group.addoption(
        "--keep-e2e-dirs", action="store_true",
        default=bool(os.environ.get("GVISORGPU_KEEP_E2E_DIRS")),
        help="keep the private containerd temp dirs (logs, bundles) after the session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by folder, and skip root-only tests with the reason when not root."""
    not_root = pytest.mark.skip(reason="needs root (real containerd, runsc and mounts)")
    for item in items:
        try:
            folder = item.path.resolve().relative_to(_HERE).parts[0]
        except ValueError:
            continue
        mark = _BY_FOLDER.get(folder)
        if mark is not None:
            item.add_marker(mark)
        if os.geteuid() != 0 and any(item.iter_markers(m)
                                     for m in ("e2e", "integration")):
            item.add_marker(not_root)


@pytest.fixture(scope="session")
def runsc_2024() -> Path:
    """runsc 0.0~20240729 (nvproxy, systrap), or skip."""
    if paths.RUNSC_2024 is None:
        pytest.skip("runsc 20240729 is not installed (run scripts/install-deps)")
    return paths.RUNSC_2024


@pytest.fixture(scope="session")
def runsc_2022() -> Path:
    """runsc 0.0~20221219 (no nvproxy, ptrace), or skip."""
    if paths.RUNSC_2022 is None:
        pytest.skip("runsc 20221219 is not installed (run scripts/install-deps)")
    return paths.RUNSC_2022
