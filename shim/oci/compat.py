"""What an OCI spec asks that a gVisor sandbox cannot give, said before runsc
runs rather than left to fail late or, worse, to be ignored.

Each check is measured against runsc 20240729 (critest, Kubernetes' CRI suite):
- ``rootfsPropagation`` shared/rshared: runsc refuses it deep in create ("root
  mount propagation option must specify private or slave"); Bidirectional
  volume propagation needs it, and it cannot work in a sandbox, whose mounts
  live in its own kernel.
- host IPC (a CRI pod sandbox without an IPC namespace: ``hostIPC: true``): the
  sandbox's System V IPC objects live in gVisor's kernel, so the host's are
  never visible; the pod would silently get a private IPC namespace instead.
Pure: a spec in, refusals (cause, fix) out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["unsupported"]

Problem = tuple[str, str]


def unsupported(spec: Mapping[str, Any], *, pod_sandbox: bool) -> list[Problem]:
    linux = spec.get("linux") or {}
    problems: list[Problem] = []
    propagation = linux.get("rootfsPropagation")
    if propagation in ("shared", "rshared"):
        problems.append((
            f"rootfsPropagation {propagation!r} (mount propagation Bidirectional) cannot work "
            "in a gVisor sandbox: its mounts live in the sandbox's own kernel",
            "use HostToContainer (rslave) or None propagation for the volume"))
    namespaces = {ns.get("type") for ns in linux.get("namespaces") or ()
                  if isinstance(ns, Mapping)}
    if pod_sandbox and "ipc" not in namespaces:
        problems.append((
            "the pod asks for the host's IPC namespace (hostIPC), which a gVisor sandbox "
            "cannot share: its IPC objects live in the sandbox's own kernel",
            "set hostIPC: false, or run the pod with a runc-based RuntimeClass"))
    return problems
