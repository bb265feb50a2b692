"""Where a sandbox's cgroup is, from the spec's ``cgroupsPath`` or from the
sandbox process itself. Pure parsing; the callers read the files.

containerd writes ``linux.cgroupsPath`` in the form of the kubelet's cgroup
driver:

- cgroupfs: a path, ``/kubepods/besteffort/pod123/abc``;
- systemd: ``slice:prefix:name``, e.g.
  ``kubepods-besteffort-pod123.slice:cri-containerd:abc``. The cgroup is the
  unit ``prefix-name.scope`` in that slice, and a slice's place in the tree is
  spelled by its name: each ``-`` starts a child (systemd.slice(5)), so
  ``kubepods-besteffort-pod123.slice`` is
  ``kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod123.slice``.
  An empty slice means ``system.slice``, and ``-.slice`` is the root.

runsc only uses the systemd form as such with ``--systemd-cgroup`` (cgroup v2
and systemd 244 or later). Without that flag, the default and the only choice
on cgroup v1, it takes any path that does not start with ``/`` as relative to
its own cgroup, colons and all (seen with runsc 20240729 on cgroup v1:
``memory:/<runsc's cgroup>/kubepods-besteffort-pod123.slice:cri-containerd:abc``).
On cgroup v2 that base is the parent of its own cgroup. Only the sandbox
process's ``/proc/<pid>/cgroup`` tells for sure which of these happened.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

__all__ = [
    "ProcCgroup",
    "expand_slice",
    "parse_proc_cgroup",
    "placed_in_slice",
    "runsc_relative",
    "systemd_cgroup",
]

_SLICE = ".slice"
_DEFAULT_SLICE = "system.slice"


@dataclass(frozen=True)
class ProcCgroup:
    """One process's cgroups, as paths from each hierarchy's root ("/..." form)."""

    memory: str | None = None
    """The cgroup v1 memory controller's path; None on a cgroup v2 only host."""
    unified: str | None = None
    """The cgroup v2 path (the ``0::`` line); present on hybrid hosts too."""


def parse_proc_cgroup(text: str) -> ProcCgroup:
    """``/proc/<pid>/cgroup`` lines ``ID:controllers:path`` → the memory and v2 paths."""
    memory = unified = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "" and parts[0] == "0":
            unified = path
        elif "memory" in controllers.split(","):
            memory = path
    return ProcCgroup(memory=memory, unified=unified)


def expand_slice(name: str) -> str:
    """A slice's path in the tree: ``a-b-c.slice`` → ``a.slice/a-b.slice/a-b-c.slice``.

    ``-.slice`` is the root (""). ValueError for a name systemd would refuse:
    not ending in ``.slice``, containing ``/``, or with an empty part
    (``a--b.slice``, ``-a.slice``, ``a-.slice``).
    """
    if name == "-" + _SLICE:
        return ""
    if not name.endswith(_SLICE) or "/" in name:
        raise ValueError(f"{name!r} is not a systemd slice name")
    stem = name.removesuffix(_SLICE)
    parts = stem.split("-")
    if not all(parts):
        raise ValueError(f"{name!r} is not a systemd slice name: empty part between dashes")
    return "/".join("-".join(parts[:i]) + _SLICE for i in range(1, len(parts) + 1))


def systemd_cgroup(cgroups_path: str) -> str | None:
    """The cgroup (``/``-rooted) the systemd driver makes for ``slice:prefix:name``;
    None when ``cgroups_path`` is not in that form or names an invalid slice."""
    parts = cgroups_path.split(":")
    if len(parts) != 3 or cgroups_path.startswith("/"):
        return None
    slice_name, prefix, name = parts
    if not name:
        return None
    try:
        if name.endswith(_SLICE):
            # A slice unit: its own name says where it lives.
            return "/" + expand_slice(name)
        parent = expand_slice(slice_name or _DEFAULT_SLICE)
    except ValueError:
        return None
    return posixpath.join("/", parent, f"{prefix}-{name}.scope")


def runsc_relative(cgroups_path: str, own: ProcCgroup) -> ProcCgroup:
    """Where runsc without ``--systemd-cgroup`` puts a cgroup whose path does not
    start with ``/``: below its own memory cgroup on v1, below the parent of
    its own cgroup on v2. ``own`` is runsc's cgroup, which is the shim's."""
    memory = None if own.memory is None else posixpath.join(own.memory, cgroups_path)
    unified = None if own.unified is None else posixpath.join(
        posixpath.dirname(own.unified), cgroups_path)
    return ProcCgroup(memory=memory, unified=unified)


def placed_in_slice(cgroups_path: str, slice_exists: bool) -> str | None:
    """The cgroupfs path to give runsc for a systemd-form ``cgroupsPath``, so the
    sandbox lands in the pod's slice rather than below runsc's own cgroup
    (where the pod's limits would not apply). Only when that slice exists
    (the kubelet made it); otherwise None: the shim makes no systemd slices."""
    scope = systemd_cgroup(cgroups_path)
    if scope is None or not slice_exists:
        return None
    return scope
