"""Which GPUs the kubelet gave a pod, from its PodResources API.

The kubelet allocates device-plugin devices (``nvidia.com/gpu``) and DRA
claims when it admits a pod, before it asks the runtime for the sandbox. So at
sandbox creation, when the shim must decide nvproxy once for the whole pod,
the kubelet's gRPC PodResources service (``v1.PodResourcesLister`` on a unix
socket) already knows whether the pod has GPUs, even though the pause
container's spec lists none.

The lookup asks ``Get`` for the one pod and falls back to ``List`` when Get
fails: kubelets older than 1.27 do not have the method (Unimplemented), and
those with the KubeletPodResourcesGet feature gate off answer it with a plain
error (Unknown), which looks the same as the plain error for a pod the kubelet
does not know. List settles both cases.

Nothing here raises for an unreachable kubelet: the shim may run on a node
without one (plain containerd) and must still start sandboxes, so a failed
lookup is the value ``None`` with the reason logged.

grpclib, h2 and the generated gRPC stubs are imported only when the kubelet
is actually asked, so importing this module stays cheap for the daemon.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shim.api.k8s.podresources.v1 import (
        ContainerResources,
        ListPodResourcesResponse,
        PodResources,
    )

__all__ = [
    "DEFAULT_SOCKET",
    "GPU_VENDORS",
    "ContainerLookup",
    "GpuLookup",
    "PodAnswer",
    "container_gpus",
    "find_pod",
    "gpu_devices",
    "is_gpu_resource",
    "lookup_container_gpus",
    "lookup_pod",
    "lookup_pod_gpus",
]

log = logging.getLogger("shim.kube.kubelet")

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
GPU_VENDORS: tuple[str, ...] = ("nvidia.com",)


def is_gpu_resource(name: str, vendors: Iterable[str] = GPU_VENDORS) -> bool:
    """True for a resource or CDI kind under a GPU vendor's domain.

    NVIDIA's device plugin advertises ``nvidia.com/gpu``, and with sharing or
    MIG strategies ``nvidia.com/gpu.shared`` or ``nvidia.com/mig-1g.10gb``; its
    CDI devices are named ``nvidia.com/gpu=<id>``. The vendor must be the whole
    domain: ``notnvidia.com/gpu`` is not NVIDIA's.
    """
    domain, slash, _ = name.partition("/")
    return bool(slash) and domain in set(vendors)


def _container_devices(container: ContainerResources, vendors: set[str]) -> list[str]:
    found: list[str] = []
    for devices in container.devices:
        if is_gpu_resource(devices.resource_name, vendors):
            found += devices.device_ids
    for dynamic in container.dynamic_resources:
        for claim in dynamic.claim_resources:
            found += [cdi.name for cdi in claim.cdi_devices
                      if is_gpu_resource(cdi.name.partition("=")[0], vendors)]
    return found


def gpu_devices(pod: PodResources, vendors: Iterable[str] = GPU_VENDORS) -> list[str]:
    """The GPU devices the kubelet allocated to any container of `pod`.

    Device-plugin devices come as their ids (NVIDIA's are GPU UUIDs or
    indexes); DRA devices as their fully qualified CDI names
    (``nvidia.com/gpu=...``), since a DRA claim carries no plugin id. In the
    pod's container order, each once.
    """
    vendor_set = set(vendors)
    found: dict[str, None] = {}  # an ordered set
    for container in pod.containers:
        found.update(dict.fromkeys(_container_devices(container, vendor_set)))
    return list(found)


def find_pod(response: ListPodResourcesResponse, name: str,
             namespace: str) -> PodResources | None:
    """The pod called `name` in `namespace` from a List answer, if listed."""
    for pod in response.pod_resources:
        if pod.name == name and pod.namespace == namespace:
            return pod
    return None


@dataclass(frozen=True)
class GpuLookup:
    """What the kubelet said about a pod's GPUs, and how we know.

    ``devices`` is None when the kubelet could not be asked; empty when it
    answered and the pod has no GPU. ``reason`` is a sentence for the log.
    """

    devices: tuple[str, ...] | None
    reason: str


def _socket_problem(path: str) -> str | None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"no kubelet pod-resources socket at {path}"
    except OSError as err:
        return f"cannot stat kubelet pod-resources socket {path}: {err.strerror or err}"
    if not stat.S_ISSOCK(mode):
        return f"{path} is not a socket"
    return None


def _describe(err: BaseException) -> str:
    # grpclib's GRPCError carries status and message; others only their text.
    status = getattr(err, "status", None)
    if status is not None:
        name = getattr(status, "name", str(status))
        message = getattr(err, "message", None)
        return f"{name}: {message}" if message else name
    if isinstance(err, TimeoutError):
        return "timed out"
    return str(err) or type(err).__name__


@dataclass(frozen=True)
class PodAnswer:
    """The kubelet's PodResources for one pod, and how we know.

    ``reachable`` is False when the kubelet could not be asked (``reason`` says
    why); ``pod`` is None when it answered but does not list the pod, which
    then has no allocated devices. ``source`` names the call that answered.
    """

    reachable: bool
    pod: PodResources | None
    source: str
    reason: str = ""


async def lookup_pod(socket_path: str, pod_name: str, pod_namespace: str, *,
                     timeout: float = 2.0) -> PodAnswer:
    """Ask the kubelet at `socket_path` for one pod's resources: Get, then List
    when Get fails. `timeout` bounds both calls together: Create waits on it."""
    problem = _socket_problem(socket_path)
    if problem is not None:
        return PodAnswer(False, None, "", problem)

    from grpclib.client import Channel
    from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
    from grpclib.metadata import Deadline

    from shim.api.k8s.podresources.v1 import (
        GetPodResourcesRequest,
        ListPodResourcesRequest,
        PodResourcesListerStub,
    )

    who = f"pod {pod_namespace}/{pod_name}"
    deadline = Deadline.from_timeout(timeout)
    channel = Channel(path=socket_path)
    stub = PodResourcesListerStub(channel)
    get_failed = ""
    try:
        try:
            got = await stub.get(
                GetPodResourcesRequest(pod_name=pod_name, pod_namespace=pod_namespace),
                deadline=deadline)
        except GRPCError as err:
            get_failed = f" (Get: {_describe(err)})"
        else:
            return PodAnswer(True, got.pod_resources, "kubelet Get")
        listed = await stub.list(ListPodResourcesRequest(), deadline=deadline)
    except (OSError, TimeoutError, GRPCError, ProtocolError, StreamTerminatedError) as err:
        return PodAnswer(False, None, "", f"kubelet pod-resources at {socket_path} did not "
                                          f"answer for {who}: {_describe(err)}{get_failed}")
    finally:
        channel.close()
    return PodAnswer(True, find_pod(listed, pod_name, pod_namespace), f"kubelet List{get_failed}")


async def lookup_pod_gpus(
    socket_path: str,
    pod_name: str,
    pod_namespace: str,
    *,
    vendors: Sequence[str] = GPU_VENDORS,
    timeout: float = 2.0,
) -> GpuLookup:
    """Ask the kubelet at `socket_path` for the GPUs of one pod."""
    answer = await lookup_pod(socket_path, pod_name, pod_namespace, timeout=timeout)
    who = f"pod {pod_namespace}/{pod_name}"
    if not answer.reachable:
        return GpuLookup(None, answer.reason)
    if answer.pod is None:
        return GpuLookup((), f"{answer.source}: {who} is not listed, so it has no allocated "
                             "devices")
    devices = tuple(gpu_devices(answer.pod, vendors))
    return GpuLookup(devices, f"{answer.source}: {who} has {_summary(devices)}")


def container_gpus(pod: PodResources, container: str, vendors: Iterable[str] = GPU_VENDORS
                   ) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(device-plugin ids, DRA CDI names) of GPUs the kubelet allocated to one
    container of `pod`; None when the pod lists no container of that name."""
    found = [c for c in pod.containers if c.name == container]
    if not found:
        return None
    ids: dict[str, None] = {}  # ordered sets
    names: dict[str, None] = {}
    vendor_set = set(vendors)
    for one in found:
        for device in _container_devices(one, vendor_set):
            # A DRA device is a CDI name (vendor/class=name); a plugin id has no "=".
            (names if "=" in device else ids)[device] = None
    return tuple(ids), tuple(names)


@dataclass(frozen=True)
class ContainerLookup:
    """What the kubelet allocated to one container.

    ``devices`` is None when the kubelet could not be asked; otherwise the
    (device-plugin ids, DRA CDI names) pair, both empty for a container with
    no GPU or one the kubelet does not list. ``reason`` is a sentence for the
    log.
    """

    devices: tuple[tuple[str, ...], tuple[str, ...]] | None
    reason: str


async def lookup_container_gpus(
    socket_path: str,
    pod_name: str,
    pod_namespace: str,
    container: str,
    *,
    vendors: Sequence[str] = GPU_VENDORS,
    timeout: float = 2.0,
) -> ContainerLookup:
    """Ask the kubelet for the GPUs allocated to `container` of one pod."""
    answer = await lookup_pod(socket_path, pod_name, pod_namespace, timeout=timeout)
    who = f"container {container} of pod {pod_namespace}/{pod_name}"
    if not answer.reachable:
        return ContainerLookup(None, answer.reason)
    found = None if answer.pod is None else container_gpus(answer.pod, container, vendors)
    if found is None:
        return ContainerLookup(((), ()), f"{answer.source}: {who} is not listed, so it has no "
                                         "allocated devices")
    return ContainerLookup(found, f"{answer.source}: {who} has {_summary([*found[0], *found[1]])}")


def _summary(devices: Sequence[str]) -> str:
    return f"GPU devices {', '.join(devices)}" if devices else "no GPU devices"
