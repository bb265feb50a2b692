"""What the ``start`` and ``delete`` actions import: both run once per container
on containerd's critical path, where every module costs milliseconds."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Each of these costs 2-7 ms to import (socket pulls enum and selectors,
# hashlib loads OpenSSL); the actions use the C modules under them.
HEAVY = ("socket", "hashlib", "json", "subprocess", "typing", "dataclasses", "asyncio",
         "betterproto", "enum", "selectors")


@pytest.mark.parametrize("modules", [
    "shim.manager.main, shim.manager.flags, shim.manager.start, shim.manager.forkclient",
    "shim.manager.main, shim.manager.flags, shim.manager.delete",
])
def test_actions_import_nothing_heavy(modules: str) -> None:
    code = (f"import sys; sys.path[:0] = {sys.path!r}; import {modules}; "
            f"print(sorted(set({HEAVY!r}) & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
