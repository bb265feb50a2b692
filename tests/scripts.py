"""Importing the Python programs under scripts/ (they are not a package) so
tests can call their pure parts."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests import paths


def load_script(filename: str, name: str) -> ModuleType:
    """scripts/<filename> as the module ``name``."""
    spec = importlib.util.spec_from_file_location(name, paths.REPO / "scripts" / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
