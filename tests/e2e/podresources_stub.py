"""A stand-in kubelet PodResources service, the real gRPC protocol on a unix socket.

No kubelet runs on these machines, so this is the one stand-in the suite
allows: a grpclib server of the real ``v1.PodResourcesLister`` service (the
generated server base, so method paths and messages are the kubelet's),
answering from data the test configures. It behaves like a kubelet where the
shim can tell the difference: Get of an unknown pod is a plain error (gRPC
Unknown, as the kubelet sends it), and ``get_supported=False`` answers Get
with Unimplemented like a kubelet older than 1.27.

Async tests use ``serving(path, stub)``; tests that drive a shim in another
process (through containerd) use ``serving_in_thread(path, stub)``, which runs
the server on its own event loop in a thread.

    stub = PodResourcesStub([pod("gpu-pod", "default", {"main": {"nvidia.com/gpu": ["GPU-0"]}})])
    async with serving(tmp_path / "kubelet.sock", stub):
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from grpclib import GRPCError
from grpclib.const import Status
from grpclib.server import Server

from shim.api.k8s.podresources.v1 import (
    AllocatableResourcesRequest,
    AllocatableResourcesResponse,
    CdiDevice,
    ClaimResource,
    ContainerDevices,
    ContainerResources,
    DynamicResource,
    GetPodResourcesRequest,
    GetPodResourcesResponse,
    ListPodResourcesRequest,
    ListPodResourcesResponse,
    PodResources,
    PodResourcesListerBase,
)

__all__ = ["PodResourcesStub", "dra_claim", "pod", "serving", "serving_in_thread"]


def pod(name: str, namespace: str,
        containers: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
        dynamic: Mapping[str, Sequence[DynamicResource]] | None = None) -> PodResources:
    """A pod's resources: {container: {resource name: [device ids]}} plus DRA claims
    per container name."""
    containers = containers or {}
    dynamic = dynamic or {}
    names = list(containers) + [n for n in dynamic if n not in containers]
    return PodResources(name=name, namespace=namespace, containers=[
        ContainerResources(
            name=c,
            devices=[ContainerDevices(resource_name=r, device_ids=list(ids))
                     for r, ids in containers.get(c, {}).items()],
            dynamic_resources=list(dynamic.get(c, ())),
        ) for c in names])


def dra_claim(claim: str, namespace: str, driver: str, cdi_names: Iterable[str]) -> DynamicResource:
    """A DRA claim as the kubelet reports it: one device with its CDI names."""
    return DynamicResource(claim_name=claim, claim_namespace=namespace, claim_resources=[
        ClaimResource(driver_name=driver, pool_name="pool", device_name="dev-0",
                      cdi_devices=[CdiDevice(name=n) for n in cdi_names])])


class PodResourcesStub(PodResourcesListerBase):
    """Answers List, Get and GetAllocatableResources from `pods`; records each call.

    `pods` may be changed while serving (the kubelet's view changes as pods
    come and go). `delay` holds every answer back, to exercise client
    time-outs.
    """

    def __init__(self, pods: Iterable[PodResources] = (), *, get_supported: bool = True,
                 allocatable: Iterable[ContainerDevices] = (), delay: float = 0.0) -> None:
        self.pods = list(pods)
        self.get_supported = get_supported
        self.allocatable = list(allocatable)
        self.delay = delay
        self.calls: list[str] = []

    async def _answer(self, method: str) -> None:
        self.calls.append(method)
        if self.delay:
            await asyncio.sleep(self.delay)

    async def list(self, list_pod_resources_request: ListPodResourcesRequest
                   ) -> ListPodResourcesResponse:
        await self._answer("List")
        return ListPodResourcesResponse(pod_resources=list(self.pods))

    async def get(self, get_pod_resources_request: GetPodResourcesRequest
                  ) -> GetPodResourcesResponse:
        await self._answer("Get")
        if not self.get_supported:
            raise GRPCError(Status.UNIMPLEMENTED, "unknown method Get")
        want = get_pod_resources_request
        for p in self.pods:
            if (p.name, p.namespace) == (want.pod_name, want.pod_namespace):
                return GetPodResourcesResponse(pod_resources=p)
        raise GRPCError(Status.UNKNOWN,
                        f"pod {want.pod_name} in namespace {want.pod_namespace} not found")

    async def get_allocatable_resources(
        self, allocatable_resources_request: AllocatableResourcesRequest
    ) -> AllocatableResourcesResponse:
        await self._answer("GetAllocatableResources")
        return AllocatableResourcesResponse(devices=list(self.allocatable))


@contextlib.asynccontextmanager
async def serving(socket_path: Path | str, stub: PodResourcesStub) -> AsyncIterator[Server]:
    """Serve `stub` on a unix socket at `socket_path` until the block ends."""
    server = Server([stub])
    await server.start(path=str(socket_path))
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            Path(socket_path).unlink()


@contextlib.contextmanager
def serving_in_thread(socket_path: Path | str, stub: PodResourcesStub,
                      timeout: float = 10.0) -> Iterator[PodResourcesStub]:
    """Serve `stub` from a thread with its own event loop, for synchronous tests."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: asyncio.Future[None] | None = None
    failure: list[BaseException] = []

    async def main() -> None:
        nonlocal stop
        stop = loop.create_future()
        try:
            async with serving(socket_path, stub):
                ready.set()
                await stop
        except BaseException as err:  # reported to the caller, not lost in the thread
            failure.append(err)
            ready.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),),
                              name="podresources-stub", daemon=True)
    thread.start()
    try:
        if not ready.wait(timeout) or failure:
            raise RuntimeError(f"the PodResources stub did not start on {socket_path}: "
                               f"{failure[0] if failure else 'timed out'}")
        yield stub
    finally:
        if stop is not None:
            loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()
