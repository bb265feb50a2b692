"""Was a container's sandbox killed by the kernel's OOM killer?

gVisor runs the whole sandbox in the container's cgroup, so a memory limit
that is hit kills the sentry itself (SIGKILL, exit 137). The cgroup still
exists when the shim reaps the sandbox (runsc removes it on delete), and its
OOM-kill counter says whether that SIGKILL was the OOM killer's.
"""

from __future__ import annotations

import os

__all__ = ["killed", "oom_kill_count"]

_CGROUP_ROOT = "/sys/fs/cgroup"


def oom_kill_count(text: str) -> int:
    """The ``oom_kill`` counter of memory.oom_control (v1) or memory.events (v2)."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return 0


def killed(cgroups_path: str, root: str = _CGROUP_ROOT) -> bool:
    if not cgroups_path or ":" in cgroups_path:  # systemd slice:prefix:name form
        return False
    rel = cgroups_path.lstrip("/")
    for candidate in (os.path.join(root, "memory", rel, "memory.oom_control"),
                      os.path.join(root, rel, "memory.events")):
        try:
            with open(candidate) as f:
                return oom_kill_count(f.read()) > 0
        except OSError:
            continue
    return False
