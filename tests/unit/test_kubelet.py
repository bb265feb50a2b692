"""shim/kubelet.py against a real gRPC server of the kubelet's PodResources service.

The server is the stand-in from tests/e2e/podresources_stub.py (no kubelet
runs here); it speaks the real protocol on a unix socket. The byte strings in
the wire tests were encoded by hand from the field numbers of the upstream
kubelet API, not produced by the code under test.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import betterproto
import pytest

from shim.api.k8s.podresources.v1 import (
    CdiDevice,
    ClaimResource,
    ContainerDevices,
    ContainerResources,
    DynamicResource,
    GetPodResourcesRequest,
    ListPodResourcesResponse,
    PodResources,
    PodResourcesListerStub,
)
from shim.kube import kubelet
from tests.e2e.podresources_stub import (
    PodResourcesStub,
    dra_claim,
    pod,
    serving,
    serving_in_thread,
)
from tests.unit.ttrpc_helpers import socket_dir

GPU_POD = pod("trainer", "ml", {
    "init": {"example.com/fpga": ["f0"]},
    "main": {"nvidia.com/gpu": ["GPU-aaaa", "GPU-bbbb"], "cpu-pinning.io/x": ["c1"]},
    "sidecar": {"nvidia.com/gpu": ["GPU-bbbb"]},
})
PLAIN_POD = pod("web", "ml", {"main": {"example.com/nic": ["n0"]}})


@pytest.fixture
def sock_path() -> Iterator[Path]:
    with socket_dir() as d:
        yield d / "kubelet.sock"


# ---- pure helpers ----

@pytest.mark.parametrize(("name", "vendors", "gpu"), [
    ("nvidia.com/gpu", ("nvidia.com",), True),
    ("nvidia.com/gpu.shared", ("nvidia.com",), True),
    ("nvidia.com/mig-1g.10gb", ("nvidia.com",), True),
    ("nvidia.com/gpu", ("amd.com",), False),
    ("amd.com/gpu", ("amd.com", "nvidia.com"), True),
    ("notnvidia.com/gpu", ("nvidia.com",), False),
    ("nvidia.com", ("nvidia.com",), False),
    ("", ("nvidia.com",), False),
    ("cpu", ("nvidia.com",), False),
])
def test_is_gpu_resource(name: str, vendors: tuple[str, ...], gpu: bool) -> None:
    assert kubelet.is_gpu_resource(name, vendors) is gpu


@pytest.mark.parametrize(("resources", "vendors", "devices"), [
    pytest.param(GPU_POD, ("nvidia.com",), ["GPU-aaaa", "GPU-bbbb"], id="plugin-dedup-ordered"),
    pytest.param(PLAIN_POD, ("nvidia.com",), [], id="no-gpu"),
    pytest.param(pod("empty", "ml"), ("nvidia.com",), [], id="no-containers"),
    pytest.param(GPU_POD, ("example.com",), ["f0"], id="other-vendor"),
    pytest.param(
        pod("dra", "ml", dynamic={"main": [
            dra_claim("gpu-claim", "ml", "gpu.nvidia.com", ["nvidia.com/gpu=0", "k8s.io/x=1"]),
        ]}),
        ("nvidia.com",), ["nvidia.com/gpu=0"], id="dra-cdi-names"),
    pytest.param(
        pod("both", "ml", {"main": {"nvidia.com/gpu": ["GPU-1"]}},
            dynamic={"main": [dra_claim("c", "ml", "gpu.nvidia.com", ["nvidia.com/gpu=GPU-2"])]}),
        ("nvidia.com",), ["GPU-1", "nvidia.com/gpu=GPU-2"], id="plugin-and-dra"),
])
def test_gpu_devices(resources: PodResources, vendors: tuple[str, ...],
                     devices: list[str]) -> None:
    assert kubelet.gpu_devices(resources, vendors) == devices


@pytest.mark.parametrize(("name", "namespace", "found"), [
    ("trainer", "ml", "trainer"),
    ("web", "ml", "web"),
    ("trainer", "default", None),
    ("nobody", "ml", None),
])
def test_find_pod(name: str, namespace: str, found: str | None) -> None:
    listed = ListPodResourcesResponse(pod_resources=[GPU_POD, PLAIN_POD])
    pod_resources = kubelet.find_pod(listed, name, namespace)
    assert (pod_resources.name if pod_resources else None) == found


# ---- the generated API is the kubelet's ----

WIRE = [
    pytest.param(GetPodResourcesRequest(pod_name="pod", pod_namespace="default"),
                 b"\x0a\x03pod\x12\x07default", id="get-request"),
    pytest.param(ContainerDevices(resource_name="nvidia.com/gpu", device_ids=["GPU-0"]),
                 b"\x0a\x0envidia.com/gpu\x12\x05GPU-0", id="container-devices"),
    pytest.param(ContainerResources(name="c", dynamic_resources=[DynamicResource(
        claim_name="k", claim_resources=[ClaimResource(cdi_devices=[CdiDevice(name="v/g=0")])])]),
        b"\x0a\x01c\x2a\x0e\x12\x01k\x22\x09\x0a\x07\x0a\x05v/g=0", id="dra"),
]


@pytest.mark.parametrize(("message", "wire"), WIRE)
def test_messages_encode_like_kubelet(message: betterproto.Message, wire: bytes) -> None:
    assert bytes(message) == wire
    assert type(message)().parse(wire) == message


def test_method_paths_are_the_kubelets() -> None:
    paths = set(PodResourcesStub().__mapping__())
    assert paths == {"/v1.PodResourcesLister/List", "/v1.PodResourcesLister/Get",
                     "/v1.PodResourcesLister/GetAllocatableResources"}
    assert hasattr(PodResourcesListerStub, "get_allocatable_resources")


def test_importing_kubelet_helper_stays_cheap() -> None:
    # The daemon may import shim.kube.kubelet on its start path; grpclib and h2 load
    # only when the kubelet is asked.
    code = ("import sys, shim.kube.kubelet\n"
            "print(sorted(m for m in sys.modules if m.startswith(('grpclib', 'h2', "
            "'shim.api.k8s'))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


# ---- against the stand-in server ----

OLD_KUBELET = "kubelet List (Get: UNIMPLEMENTED"


@pytest.mark.parametrize(("get_supported", "name", "calls", "devices", "source"), [
    (True, "trainer", ["Get"], ["GPU-aaaa", "GPU-bbbb"], "kubelet Get:"),
    (True, "web", ["Get"], [], "kubelet Get:"),
    (False, "trainer", ["Get", "List"], ["GPU-aaaa", "GPU-bbbb"], OLD_KUBELET),
    (False, "web", ["Get", "List"], [], OLD_KUBELET),
    # A kubelet answers Get for a pod it does not know with a plain error (Unknown).
    (True, "ghost", ["Get", "List"], [], "kubelet List (Get: UNKNOWN: pod ghost in namespace ml"),
    (False, "ghost", ["Get", "List"], [], "is not listed"),
])
@pytest.mark.asyncio
async def test_lookup_asks_get_then_list(sock_path: Path, get_supported: bool, name: str,
                                         calls: list[str], devices: list[str],
                                         source: str) -> None:
    stub = PodResourcesStub([GPU_POD, PLAIN_POD], get_supported=get_supported)
    async with serving(sock_path, stub):
        result = await kubelet.lookup_pod_gpus(str(sock_path), name, "ml")
    assert stub.calls == calls
    assert result.devices == tuple(devices)
    assert source in result.reason
    assert f"pod ml/{name}" in result.reason


@pytest.mark.asyncio
async def test_pod_gpus_with_the_reason(sock_path: Path) -> None:
    async with serving(sock_path, PodResourcesStub([GPU_POD])):
        found = await kubelet.lookup_pod_gpus(str(sock_path), "trainer", "ml")
    assert found.devices == ("GPU-aaaa", "GPU-bbbb")
    assert found.reason == "kubelet Get: pod ml/trainer has GPU devices GPU-aaaa, GPU-bbbb"


@pytest.mark.asyncio
async def test_other_vendors_can_be_asked_for(sock_path: Path) -> None:
    amd = pod("rocm", "ml", {"main": {"amd.com/gpu": ["0"], "nvidia.com/gpu": ["GPU-x"]}})
    async with serving(sock_path, PodResourcesStub([amd])):
        found = await kubelet.lookup_pod_gpus(str(sock_path), "rocm", "ml", vendors=("amd.com",))
    assert found.devices == ("0",)


def _refusing_socket(path: Path) -> None:
    # Bound but never listening: connect() gets ECONNREFUSED, like a dead kubelet's socket.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


@pytest.mark.parametrize(("make", "reason"), [
    (None, "no kubelet pod-resources socket at"),
    (lambda p: p.write_text("not a socket"), "is not a socket"),
    (_refusing_socket, "did not answer for pod ml/trainer"),
])
@pytest.mark.asyncio
async def test_unreachable_kubelet_is_none_with_reason(sock_path: Path, make: object,
                                                       reason: str) -> None:
    if callable(make):
        make(sock_path)
    found = await kubelet.lookup_pod_gpus(str(sock_path), "trainer", "ml")
    assert found.devices is None
    assert reason in found.reason and str(sock_path) in found.reason


@pytest.mark.asyncio
async def test_slow_kubelet_times_out(sock_path: Path) -> None:
    stub = PodResourcesStub([GPU_POD], delay=5.0)
    async with serving(sock_path, stub):
        result = await kubelet.lookup_pod_gpus(str(sock_path), "trainer", "ml", timeout=0.3)
    assert result.devices is None
    assert "timed out" in result.reason
    assert stub.calls == ["Get"]


def test_stub_serves_synchronous_tests_from_a_thread(sock_path: Path) -> None:
    # The shape e2e tests use: the shim (here the helper) runs on another loop.
    stub = PodResourcesStub([GPU_POD], get_supported=False)
    with serving_in_thread(sock_path, stub):
        found = asyncio.run(kubelet.lookup_pod_gpus(str(sock_path), "trainer", "ml"))
    assert found.devices == ("GPU-aaaa", "GPU-bbbb")
    assert stub.calls == ["Get", "List"]
    assert not sock_path.exists()


# ---- one container's allocation ----

@pytest.mark.parametrize(("container", "expected"), [
    ("main", (("GPU-aaaa", "GPU-bbbb"), ())),
    ("sidecar", (("GPU-bbbb",), ())),
    ("init", ((), ())),
    ("absent", None),
])
def test_container_gpus(container: str, expected: object) -> None:
    assert kubelet.container_gpus(GPU_POD, container) == expected


def test_container_gpus_splits_dra_names_from_plugin_ids() -> None:
    mixed = pod("mixed", "ml", {"main": {"nvidia.com/gpu": ["GPU-aaaa"]}},
                dynamic={"main": [dra_claim("c", "ml", "gpu.nvidia.com",
                                            ["nvidia.com/gpu=gpu-1", "example.com/x=1"])]})
    assert kubelet.container_gpus(mixed, "main") == (("GPU-aaaa",), ("nvidia.com/gpu=gpu-1",))


@pytest.mark.parametrize(("name", "container", "devices", "reason"), [
    ("trainer", "sidecar", (("GPU-bbbb",), ()),
     "kubelet Get: container sidecar of pod ml/trainer has GPU devices GPU-bbbb"),
    ("trainer", "ghost", ((), ()), "container ghost of pod ml/trainer is not listed"),
    ("nobody", "main", ((), ()), "container main of pod ml/nobody is not listed"),
])
@pytest.mark.asyncio
async def test_lookup_container_gpus(sock_path: Path, name: str, container: str,
                                     devices: object, reason: str) -> None:
    async with serving(sock_path, PodResourcesStub([GPU_POD, PLAIN_POD])):
        found = await kubelet.lookup_container_gpus(str(sock_path), name, "ml", container)
    assert found.devices == devices
    assert reason in found.reason


@pytest.mark.asyncio
async def test_lookup_container_gpus_without_a_kubelet(sock_path: Path) -> None:
    found = await kubelet.lookup_container_gpus(str(sock_path), "trainer", "ml", "main")
    assert found.devices is None and "no kubelet pod-resources socket" in found.reason
