"""Pods: which sandbox a container belongs to, and what that sandbox booted with.

runsc fixes a sandbox's global flags (nvproxy among them) when its root
container, the pod's pause container, boots; every app container of the pod
joins that sandbox and must be driven with the same flags and the same runsc
root. The daemon keeps one ``Sandbox`` per pod it serves; nothing about GPUs
is kept across pods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shim.runsc import GlobalOptions

__all__ = ["CONTAINER_TYPE", "SANDBOX_ID", "PodRole", "Sandbox", "pod_role"]

# containerd's CRI plugin sets these on every pod container (shim-protocol.md §3.8).
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"


@dataclass(frozen=True)
class PodRole:
    kind: Literal["standalone", "sandbox", "member"]
    sandbox_id: str | None = None
    pod_name: str | None = None
    pod_namespace: str | None = None


@dataclass(frozen=True)
class Sandbox:
    """What a pod's sandbox booted with; members reuse it verbatim."""

    id: str
    runsc: GlobalOptions
    nvproxy: bool


def pod_role(spec: Mapping[str, Any]) -> PodRole:
    annotations = spec.get("annotations") or {}
    kind = annotations.get(CONTAINER_TYPE)
    sandbox_id = annotations.get(SANDBOX_ID)
    pod = (annotations.get(SANDBOX_NAME), annotations.get(SANDBOX_NAMESPACE))
    if kind == "sandbox":
        return PodRole("sandbox", sandbox_id, *pod)
    if kind == "container" and sandbox_id:
        return PodRole("member", sandbox_id, *pod)
    return PodRole("standalone")


