"""What a container leaves on the host beside runsc's own state, and how the
shim tells whether its sandbox still lives: the bundle's state file for the
``delete`` action, empty cgroups a crashed sandbox left, and the sandbox
process itself. The runsc root's own files are ``shim.oci.runsc_root``'s."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

from shim.oci.layout import STATE_FILE
from shim.runsc import GlobalOptions

__all__ = ["gone_soon", "remove_cgroup", "sandbox_alive", "write_state"]

async def gone_soon(pid: int, within: float = 2.0) -> bool:
    """Whether the sandbox process ``pid`` is, or within ``within`` s is, gone;
    False while it keeps running (then runsc's failure stands)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while sandbox_alive(pid):
        if loop.time() >= end:
            return False
        await asyncio.sleep(0.05)
    return True


def sandbox_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().startswith(b"runsc-sandbox")
    except OSError:
        return False


def write_state(bundle: str, runsc: GlobalOptions) -> None:
    state = {"binary": runsc.binary, "root": runsc.root, "log": runsc.log,
             "args": runsc.args()}
    Path(bundle, STATE_FILE).write_text(json.dumps(state))


_CGROUP_ROOT = "/sys/fs/cgroup"


def remove_cgroup(cgroups_path: str, root: str = _CGROUP_ROOT) -> None:
    """runsc removes a container's cgroup on delete, except when its sandbox
    had already died (a crash): then the empty cgroup stays. rmdir only ever
    succeeds on an empty cgroup, so this cannot take one that is in use."""
    if not cgroups_path.startswith("/"):
        return  # relative (runsc's own placement): only runsc knows where it is
    rel = cgroups_path.lstrip("/")
    with contextlib.suppress(OSError):
        hierarchies = [os.path.join(root, h) for h in os.listdir(root)] + [root]
        for hierarchy in hierarchies:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(hierarchy, rel))
