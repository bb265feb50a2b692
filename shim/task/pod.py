"""What a pod's sandbox booted with.

runsc fixes a sandbox's global flags (nvproxy among them) when its root
container, the pod's pause container, boots; every app container of the pod
joins that sandbox and must be driven with the same flags and the same runsc
root. The daemon keeps one :class:`Sandbox` per pod it serves; nothing about
GPUs is kept across pods. Which role a container plays is read in
``shim.kube.pod``.
"""

from __future__ import annotations

from dataclasses import dataclass

from shim.runsc import GlobalOptions

__all__ = ["Sandbox"]


@dataclass(frozen=True)
class Sandbox:
    """What a pod's sandbox booted with; members reuse it verbatim."""

    id: str
    runsc: GlobalOptions
    nvproxy: bool
    # The pod as containerd named it on the sandbox's spec (its own keys,
    # which a pod's author cannot set): members are looked up under it.
    pod_name: str | None = None
    pod_namespace: str | None = None
    # The sandbox spec's annotations other than containerd's own: the pod
    # annotations containerd forwarded, which it copies into every member too.
    pod_annotations: tuple[tuple[str, str], ...] = ()
