"""Which pod a container belongs to, and the part it plays there.

The CRI runtime marks every container of a pod with annotations: its type
(the pod's sandbox container, or an app container) and the sandbox's id
(shim-protocol.md §3.8). This is the one place that reads them: ``start``
groups a pod's containers into one shim by the sandbox id, Create decides
whether a container boots a sandbox or joins one, and the GPU planner is
given the resulting role as a value.

Forgery. containerd's CRI copies the pod annotations an operator lets
through (``pod_annotations``) and then sets its own ``io.kubernetes.cri.*``
keys after them (``DefaultCRIAnnotations`` / ``WithAnnotation`` in the CRI
plugin), so a pod's author cannot set these keys, whatever passes through.
The other runtime's spelling is not overwritten by containerd, so every key
is read in the spelling of the runtime whose container-type key is present:
a pod author cannot supply a pod or container name under CRI-O's spelling to
a containerd pod.

``start`` imports this on containerd's critical path, so it stays free of
``dataclasses`` and ``typing`` at run time.
"""

from __future__ import annotations

TYPE_CHECKING = False  # True for type checkers only; `typing` costs ~5 ms at start
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["CONTAINER_NAME", "CONTAINER_TYPE", "SANDBOX_ID", "PodRole", "pod_role",
           "shim_group"]

# containerd's CRI plugin first, then CRI-O's spelling of the same facts.
CONTAINER_TYPE = ("io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType")
SANDBOX_ID = ("io.kubernetes.cri.sandbox-id", "io.kubernetes.cri-o.SandboxID")
SANDBOX_NAME = ("io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name")
SANDBOX_NAMESPACE = ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace")
CONTAINER_NAME = ("io.kubernetes.cri.container-name", "io.kubernetes.container.name")


class PodRole:
    """``standalone`` (not in a pod), ``sandbox`` (the pod's pause container,
    which boots the runsc sandbox) or ``member`` (an app container joining it)."""

    __slots__ = ("container_name", "kind", "pod_name", "pod_namespace", "sandbox_id")

    def __init__(self, kind: str, sandbox_id: str | None = None, pod_name: str | None = None,
                 pod_namespace: str | None = None, container_name: str | None = None) -> None:
        self.kind = kind
        self.sandbox_id = sandbox_id
        self.pod_name = pod_name
        self.pod_namespace = pod_namespace
        # An app container's name in the pod spec (what PodResources lists).
        self.container_name = container_name

    def _key(self) -> tuple[str, str | None, str | None, str | None, str | None]:
        return (self.kind, self.sandbox_id, self.pod_name, self.pod_namespace,
                self.container_name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PodRole) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "PodRole({!r}, {!r}, {!r}, {!r}, {!r})".format(*self._key())


def _value(annotations: Mapping[str, str], key: str) -> str | None:
    value = annotations.get(key)
    return value if isinstance(value, str) and value else None


def pod_role(annotations: Mapping[str, str]) -> PodRole:
    # The runtime whose container-type key is set names everything else too.
    family = next((i for i, key in enumerate(CONTAINER_TYPE)
                   if _value(annotations, key) is not None), None)
    if family is None:
        return PodRole("standalone")
    kind = _value(annotations, CONTAINER_TYPE[family])
    sandbox_id = _value(annotations, SANDBOX_ID[family])
    name = _value(annotations, SANDBOX_NAME[family])
    namespace = _value(annotations, SANDBOX_NAMESPACE[family])
    if kind == "sandbox":
        return PodRole("sandbox", sandbox_id, name, namespace)
    if kind == "container" and sandbox_id:
        return PodRole("member", sandbox_id, name, namespace,
                       _value(annotations, CONTAINER_NAME[family]))
    return PodRole("standalone")


def shim_group(container_id: str, annotations: Mapping[str, str]) -> str:
    """The key one shim process serves: the pod's sandbox id for every container
    of a pod, so they all reach the daemon that booted its sandbox."""
    role = pod_role(annotations)
    if role.kind == "standalone" or not role.sandbox_id:
        return container_id
    return role.sandbox_id
