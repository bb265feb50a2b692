"""Was a container's sandbox killed by the kernel's OOM killer?

gVisor runs the whole sandbox in the container's cgroup, so a memory limit
that is hit kills the sentry itself (SIGKILL, exit 137). The cgroup still
exists when the shim reaps the sandbox (runsc removes it on delete), and its
OOM-kill counter says whether that SIGKILL was the OOM killer's: ``oom_kill``
in ``memory.oom_control`` (cgroup v1) or ``memory.events`` (v2).

Which cgroup that is depends on the cgroup driver and on runsc's flags (see
:mod:`shim.task.cgroups`), so the sandbox process's own cgroup is read while it
runs (:func:`sandbox_cgroup`) and checked first; the places ``cgroupsPath``
can lead to come after, for a sandbox whose cgroup was not recorded.
"""

from __future__ import annotations

import os
import posixpath

from shim.task.cgroups import ProcCgroup, parse_proc_cgroup, runsc_relative, systemd_cgroup

__all__ = ["ProcCgroup", "candidates", "killed", "oom_kill_count", "sandbox_cgroup"]

_CGROUP_ROOT = "/sys/fs/cgroup"


def oom_kill_count(text: str) -> int:
    """The ``oom_kill`` counter of memory.oom_control (v1) or memory.events (v2)."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return 0


def _counter_files(cgroup: ProcCgroup, root: str) -> list[str]:
    files = []
    if cgroup.memory is not None:
        files.append(posixpath.join(root, "memory", cgroup.memory.lstrip("/"),
                                    "memory.oom_control"))
    if cgroup.unified is not None:
        files.append(posixpath.join(root, cgroup.unified.lstrip("/"), "memory.events"))
    return files


def candidates(cgroups_path: str, *, own: ProcCgroup, sandbox: ProcCgroup | None = None,
               root: str = _CGROUP_ROOT) -> list[str]:
    """The OOM counter files that may be the sandbox's, most certain first.

    ``sandbox`` is the sandbox process's cgroup when it was recorded; ``own``
    is the shim's (runsc's) cgroup, the base of a relative ``cgroups_path``.
    """
    if not cgroups_path:
        return []  # runsc made no cgroup: the sandbox shares the shim's
    places: list[ProcCgroup] = []
    if sandbox is not None and sandbox != own:
        # Its own cgroup, not one it shares with the shim and other sandboxes.
        places.append(sandbox)
    if cgroups_path.startswith("/"):
        places.append(ProcCgroup(memory=cgroups_path, unified=cgroups_path))
    elif cgroups_path:
        scope = systemd_cgroup(cgroups_path)
        if scope is not None:  # runsc --systemd-cgroup
            places.append(ProcCgroup(memory=scope, unified=scope))
        places.append(runsc_relative(cgroups_path, own))
    files: list[str] = []
    for place in places:
        files.extend(f for f in _counter_files(place, root) if f not in files)
    return files


def sandbox_cgroup(pid: int) -> ProcCgroup | None:
    """The cgroup of a running process; None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return parse_proc_cgroup(f.read())
    except OSError:
        return None


def _own_cgroup() -> ProcCgroup:
    return sandbox_cgroup(os.getpid()) or ProcCgroup()


def killed(cgroups_path: str, *, sandbox: ProcCgroup | None = None,
           root: str = _CGROUP_ROOT) -> bool:
    """Whether the first existing counter file of :func:`candidates` counts an OOM kill."""
    for path in candidates(cgroups_path, own=_own_cgroup(), sandbox=sandbox, root=root):
        try:
            with open(path) as f:
                return oom_kill_count(f.read()) > 0
        except OSError:
            continue
    return False
