"""shim.task.create gathers what the planner trusts, for a pod's containers:
the sandbox's record (names containerd set, the pod's own annotations) and
the kubelet's answer for the pod or for one container, asked of a stand-in
PodResources server speaking the real gRPC protocol."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shim.config import RuntimeConfig
from shim.gpu.config import GpuConfig
from shim.gpu.detect import CdiCache
from shim.runsc import GlobalOptions, RunscCapabilities
from shim.task.create import _pod_annotations, plan_create
from shim.task.pod import Sandbox
from tests.e2e.podresources_stub import PodResourcesStub, pod, serving
from tests.unit.gpu_hosts import FIXTURES
from tests.unit.ttrpc_helpers import socket_dir

CRI = "io.kubernetes.cri."
CAPS = RunscCapabilities(
    path="/usr/bin/runsc", version="0.0~20240729.0", release=20240729,
    flags=frozenset({"root", "log", "log-format", "platform", "network", "nvproxy",
                     "nvproxy-driver-version"}),
    default_platform="systrap", supported_drivers=("550.90.07",), subcommands=frozenset())
CTL = {"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255}
GPU0 = {"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0}
POD_CDI = ("cdi.k8s.io/x", "nvidia.com/gpu=all")


@pytest.fixture
def sock() -> Iterator[Path]:
    with socket_dir() as d:
        yield d / "kubelet.sock"


def config(sock: Path, **gpu: Any) -> RuntimeConfig:
    return RuntimeConfig(pod_resources_socket=str(sock), gpu=GpuConfig(
        driver_version="550.90.07", cdi_dirs=(str(FIXTURES / "run"),), **gpu))


def sandbox_spec(**annotations: str) -> dict[str, Any]:
    return {"annotations": {CRI + "container-type": "sandbox", CRI + "sandbox-id": "pod-1",
                            CRI + "sandbox-name": "train", CRI + "sandbox-namespace": "ml",
                            **annotations}}


def member_spec(name: str | None = "main", devices: tuple[dict[str, Any], ...] = (),
                **annotations: str) -> dict[str, Any]:
    given = {CRI + "container-type": "container", CRI + "sandbox-id": "pod-1",
             # What containerd 1.6 sets on an app container: no pod name of its own.
             **({CRI + "container-name": name} if name else {}), **annotations}
    return {"annotations": given, "linux": {"devices": list(devices)}}


SANDBOX = Sandbox("pod-1", GlobalOptions(root="/r", extra={"nvproxy": "true"}), True,
                  "train", "ml", (POD_CDI,))


async def decide(spec: dict[str, Any], cfg: RuntimeConfig,
                 sandboxes: dict[str, Sandbox] | None = None) -> Any:
    return await plan_create(spec, CAPS, cfg, container_id="c1", bundle="/b", namespace="k8s.io",
                             sandboxes={"pod-1": SANDBOX} if sandboxes is None else sandboxes,
                             cdi_cache=CdiCache())


@pytest.mark.asyncio
async def test_the_kubelet_decides_the_sandbox(sock: Path) -> None:
    stub = PodResourcesStub([pod("train", "ml", {"main": {"example.com/fpga": ["f0"]}})])
    annotated = sandbox_spec(**{"dev.gvisorgpu.nvproxy": "true"})
    async with serving(sock, stub):
        off = await decide(annotated, config(sock, accept_pod_nvproxy_annotation=True))
        stub.pods = [pod("train", "ml", {"main": {"nvidia.com/gpu": ["GPU-a"]}})]
        on = await decide(sandbox_spec(), config(sock))
    assert not off.plan.nvproxy and any("the kubelet answered" in i
                                        for i in off.plan.decision.ignored)
    assert on.plan.nvproxy and "GPU devices GPU-a" in on.plan.decision.reasons[0]
    assert stub.calls == ["Get", "Get"]


@pytest.mark.asyncio
async def test_without_a_kubelet_the_annotation_needs_the_opt_in(sock: Path) -> None:
    annotated = sandbox_spec(**{"dev.gvisorgpu.nvproxy": "true"})
    assert not (await decide(annotated, config(sock))).plan.nvproxy
    opted = await decide(annotated, config(sock, accept_pod_nvproxy_annotation=True))
    assert opted.plan.nvproxy
    assert "no kubelet pod-resources socket" in opted.plan.decision.reasons[0]


@pytest.mark.asyncio
async def test_member_is_checked_against_its_own_allocation(sock: Path) -> None:
    stub = PodResourcesStub([pod("train", "ml", {"main": {"nvidia.com/gpu": ["0"]},
                                                 "other": {"nvidia.com/gpu": ["1"]}})])
    async with serving(sock, stub):
        main = await decide(member_spec("main", (CTL, GPU0)), config(sock))
        other = await decide(member_spec("other", (CTL, GPU0)), config(sock))
    assert main.plan.ok and "within the allocation" in main.plan.decision.allocation
    assert not other.plan.ok
    assert "the kubelet allocated 1 to container other of pod ml/train" in other.plan.refusals[0]


@pytest.mark.asyncio
async def test_member_pod_names_come_from_the_sandbox(sock: Path) -> None:
    """A member's own annotations may carry another runtime's keys from the
    pod's author; the pod is looked up as containerd named it on the sandbox."""
    stub = PodResourcesStub([pod("train", "ml", {"main": {"nvidia.com/gpu": ["0"]}}),
                             pod("victim", "ml", {"main": {"nvidia.com/gpu": ["0", "1"]}})])
    forged = member_spec("main", (CTL, GPU0), **{"io.kubernetes.pod.name": "victim"})
    async with serving(sock, stub):
        result = await decide(forged, config(sock))
    assert "pod ml/train" in result.plan.decision.allocation


@pytest.mark.asyncio
async def test_member_pod_annotation_grants_nothing(sock: Path) -> None:
    spec = member_spec("main", (), **{POD_CDI[0]: POD_CDI[1]})
    async with serving(sock, PodResourcesStub([pod("train", "ml", {"main": {}})])):
        result = await decide(spec, config(sock))
    assert result.plan.ok and not result.plan.decision.gpu
    assert any("a pod annotation" in i for i in result.plan.decision.ignored)


@pytest.mark.asyncio
async def test_member_without_a_name_gets_no_gpu_when_the_kubelet_answers(sock: Path) -> None:
    async with serving(sock, PodResourcesStub([pod("train", "ml", {"main": {}})])):
        result = await decide(member_spec(None, (CTL, GPU0)), config(sock))
    assert not result.plan.ok
    assert "io.kubernetes.cri.container-name" in result.plan.refusals[0]
    unasked = await decide(member_spec(None, (CTL, GPU0)), config(sock))
    assert unasked.plan.ok and "not checked" in unasked.plan.decision.allocation


@pytest.mark.asyncio
async def test_member_of_a_cpu_sandbox_does_not_ask_the_kubelet(sock: Path) -> None:
    stub = PodResourcesStub([pod("train", "ml", {"main": {"nvidia.com/gpu": ["0"]}})])
    cpu = dataclasses.replace(SANDBOX, nvproxy=False)
    async with serving(sock, stub):
        result = await decide(member_spec("main", (CTL, GPU0)), config(sock), {"pod-1": cpu})
    assert stub.calls == [] and "booted without nvproxy" in result.plan.refusals[0]


def test_sandbox_record_keeps_the_pods_own_annotations() -> None:
    spec = sandbox_spec(**{POD_CDI[0]: POD_CDI[1]})
    assert _pod_annotations(spec) == (POD_CDI,)
