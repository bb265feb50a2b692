"""GPU grants in a CRI pod come only from the node's allocation (shim/gpu/TRUST.md).

Through containerd's CRI plugin, with the kubelet's PodResources service
played by a stand-in server of the real gRPC protocol:

- a pod author's CDI annotation or NVIDIA_VISIBLE_DEVICES alone gets no GPU:
  the container runs without any NVIDIA device, and the shim's create record
  says what it ignored; the test containerd forwards ``cdi.k8s.io/*`` pod
  annotations on purpose (as an operator's older config would);
- a container the kubelet allocated a GPU to gets exactly that GPU's device
  node, whether the device plugin handed it over as a device node (DeviceSpecs)
  or as a CDI request in the container's annotations;
- a container whose spec reaches beyond its allocation is refused at
  StartContainer, with the devices and the allocation named, and the pod's
  other containers live on.

There is no GPU here. A container handed nvidiactl and one GPU node starts,
and lists exactly those nodes; one that the CDI spec also hands nvidia-uvm
crashes runsc's sentry when it starts (runsc/boot.createDeviceFile, see
test_cri_pods.py), so its grant is read from the shim's create record, which
is logged before runsc runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpclib.exceptions import GRPCError

from shim.api.k8s.cri.runtime import v1 as api
from shim.api.k8s.cri.runtime.v1 import ContainerState
from tests import paths
from tests.e2e import cri, images
from tests.e2e import podresources_stub as kubelet
from tests.e2e.conftest import cri_module
from tests.e2e.test_cri_pods import (
    DRIVER,
    ContainerdLog,
    assert_clean,
    remove_pod,
    run_pod,
    start_sleeper,
    wait_stopped,
)
from tests.e2e.test_gpu import CDI_SPEC

pytestmark = pytest.mark.e2e


UUIDS = ("GPU-0a1b2c3d-0000-4000-8000-000000000000", "GPU-0a1b2c3d-1111-4000-8000-111111111111")


def _cdi_spec() -> dict[str, object]:
    """Two GPUs, each named by index and by UUID, as nvidia-ctk names them."""
    devices = []
    for index, uuid in enumerate(UUIDS):
        node = {"path": f"/dev/nvidia{index}", "type": "c", "major": 195, "minor": index}
        devices += [{"name": name, "containerEdits": {"deviceNodes": [node]}}
                    for name in (str(index), uuid)]
    return {**CDI_SPEC, "devices": devices}


@dataclass(frozen=True)
class GpuFiles:
    """A CDI spec folder, and character devices numbered like NVIDIA's nodes."""

    cdi_dir: Path
    nodes: Mapping[str, Path]  # /dev path -> the node made here


@pytest.fixture(scope="module")
def gpu_files(tmp_path_factory: pytest.TempPathFactory) -> GpuFiles:
    root = tmp_path_factory.mktemp("gpu")
    (root / "cdi").mkdir()
    (root / "cdi" / "nvidia.json").write_text(json.dumps(_cdi_spec()))
    nodes = {}
    # CRI copies a device's numbers from its host path, so these stand in for the real ones.
    for name, minor in (("nvidiactl", 255), ("nvidia0", 0), ("nvidia1", 1)):
        node = root / name
        os.mknod(node, 0o600 | 0o020000, os.makedev(195, minor))
        nodes[f"/dev/{name}"] = node
    return GpuFiles(root / "cdi", nodes)


@pytest.fixture(scope="module")
def cri_env(request: pytest.FixtureRequest, containerd_version: str, runsc_2024: Path,
            pause_image: images.Image, busybox_image: images.Image,
            gpu_files: GpuFiles) -> Iterator[cri.CriEnv]:
    """A CRI containerd with the gvisorgpu handler, set up like test_cri_pods'
    (conftest's ``env`` resets it per test): the device plugin's CDI requests
    in container annotations reach the shim, and 2.x resolves them itself
    from this module's spec folder."""
    if not paths.SHIM.exists():
        pytest.skip(f"{paths.SHIM.name} is not installed (pip install -e .)")
    with cri_module(request, containerd_version, runsc_2024, pause_image, busybox_image,
                    container_annotations=["cdi.k8s.io/*"],
                    cdi_spec_dirs=[str(gpu_files.cdi_dir)]) as env:
        yield env


@pytest.fixture
def socket(tmp_path: Path) -> Path:
    return tmp_path / "kubelet.sock"


def _configure(env: cri.CriEnv, gpu_files: GpuFiles, socket: Path, **settings: object) -> None:
    env.configure(nvproxy_driver_version=DRIVER, pod_resources_socket=str(socket),
                  cdi_spec_dirs=[str(gpu_files.cdi_dir)], **settings)


@pytest.fixture
def serving_kubelet(socket: Path) -> Iterator[kubelet.PodResourcesStub]:
    with kubelet.serving_in_thread(socket, kubelet.PodResourcesStub()) as stub:
        yield stub


def _allocate(stub: kubelet.PodResourcesStub, pod: str,
              containers: Mapping[str, Sequence[str]]) -> None:
    """What the kubelet's device manager reports once it admitted the pod."""
    stub.pods = [kubelet.pod(pod, "default", {c: {"nvidia.com/gpu": list(ids)} if ids else {}
                                              for c, ids in containers.items()})]


def _gpu_config(name: str, how: str, gpu_files: GpuFiles, index: int,
                **kwargs: object) -> api.ContainerConfig:
    """An app container handed GPU `index` the way a device plugin hands it over."""
    if how == "cdi-annotation":
        return cri.container_config(name, images.BUSYBOX_REF, ["sleep", "600"], annotations={
            "cdi.k8s.io/nvidia-device-plugin": f"nvidia.com/gpu={index}"}, **kwargs)
    config = cri.container_config(name, images.BUSYBOX_REF, ["sleep", "600"], **kwargs)
    config.devices = [api.Device(container_path=path, host_path=str(gpu_files.nodes[path]),
                                 permissions="rwm")
                      for path in ("/dev/nvidiactl", f"/dev/nvidia{index}")]
    return config


def _create(env: cri.CriEnv, pod: cri.Pod, config: api.ContainerConfig) -> str:
    request = api.CreateContainerRequest(pod_sandbox_id=pod.id, sandbox_config=pod.config,
                                         config=config)
    return env.cri.call(env.cri.runtime.create_container(request)).container_id


def _nvidia_nodes(env: cri.CriEnv, cid: str) -> bytes:
    out = env.cri.exec_sync(cid, ["sh", "-c", "ls /dev | grep nvidia || true"])
    assert out.exit_code == 0, out
    return out.stdout


def test_pod_annotations_alone_get_no_gpu(env: cri.CriEnv, gpu_files: GpuFiles, socket: Path,
                                          serving_kubelet: kubelet.PodResourcesStub) -> None:
    """The pod asks by annotation for every GPU and for nvproxy; the kubelet
    allocated nothing. The operator even accepts the nvproxy annotation, but
    the kubelet answered, so its answer decides."""
    _configure(env, gpu_files, socket, accept_pod_nvproxy_annotation=True)
    _allocate(serving_kubelet, "author-ann", {"main": []})
    log = ContainerdLog(env.daemon)
    try:
        pod = run_pod(env, "author-ann", annotations={
            "cdi.k8s.io/mine": "nvidia.com/gpu=all", "dev.gvisorgpu.nvproxy": "true"})
        sandbox = log.created(pod.id)
        assert sandbox["nvproxy_enabled"] == "false", sandbox
        assert "the kubelet answered, and it allocated no GPU" in sandbox["gpu_ignored"]
        assert "cdi.k8s.io/mine" in sandbox["gpu_ignored"], sandbox

        cid = start_sleeper(env, pod, "main")
        member = log.created(cid)
        assert (member["nvproxy_enabled"], member["role"]) == ("false", "member"), member
        assert "cdi.k8s.io/mine" in member["gpu_ignored"], member
        assert "a pod annotation, written by the pod's author" in member["gpu_ignored"]
        assert _nvidia_nodes(env, cid) == b""

        remove_pod(env, pod)
        assert_clean(env)
    finally:
        env.reset()


@pytest.mark.parametrize("how", ["device-node", "cdi-annotation"])
def test_a_container_gets_exactly_its_allocation(
        env: cri.CriEnv, gpu_files: GpuFiles, socket: Path,
        serving_kubelet: kubelet.PodResourcesStub, how: str) -> None:
    """One pod, two containers: `thief` sets NVIDIA_VISIBLE_DEVICES=all and was
    allocated nothing; `gpu` was allocated GPU 1 (by UUID) and gets its node."""
    _configure(env, gpu_files, socket)
    name = f"alloc-{how}"
    _allocate(serving_kubelet, name, {"gpu": [UUIDS[1]], "thief": []})
    log = ContainerdLog(env.daemon)
    c = env.cri
    try:
        pod = run_pod(env, name)
        assert log.created(pod.id)["nvproxy_enabled"] == "true"

        thief = c.create_container(pod, "thief", images.BUSYBOX_REF, ["sleep", "600"],
                                   env={"NVIDIA_VISIBLE_DEVICES": "all"})
        c.start(thief)
        record = log.created(thief)
        assert "accept_visible_devices_env_in_pods is off" in record["gpu_ignored"], record
        assert "gpu_devices" not in record and "gpu_allocation" not in record, record
        assert _nvidia_nodes(env, thief) == b""

        gpu = _create(env, pod, _gpu_config("gpu", how, gpu_files, 1))
        if how == "device-node":
            # nvidiactl and nvidia1 only: the container starts and sees exactly those.
            c.start(gpu)
            assert _nvidia_nodes(env, gpu) == b"nvidia1\nnvidiactl\n"
        else:
            # The CDI spec adds nvidia-uvm, and with no GPU here runsc's sentry
            # crashes creating it (runsc/boot.createDeviceFile).
            with pytest.raises(GRPCError, match=r"containerManager\.StartSubcontainer"):
                c.start(gpu)
            # The whole sandbox died, and `thief` with it.
            assert wait_stopped(env, thief) == ContainerState.CONTAINER_EXITED
        record = log.created(gpu)
        assert record["msg"] == "starting container with nvproxy", record
        devices = {"device-node": "/dev/nvidiactl, /dev/nvidia1",
                   "cdi-annotation": "/dev/nvidiactl, /dev/nvidia-uvm, /dev/nvidia1"}[how]
        assert record["gpu_devices"] == devices, record
        assert record["gpu_allocation"].startswith("/dev/nvidia1 within the allocation: "
                                                   f"the kubelet allocated {UUIDS[1]} to "
                                                   f"container gpu of pod default/{name}"), record
        lookups = log.messages("pod resources:")
        assert f"pod resources: kubelet Get: container gpu of pod default/{name} has GPU " \
               f"devices {UUIDS[1]}" in lookups, lookups

        c.remove(gpu)
        remove_pod(env, pod)
        assert_clean(env)
    finally:
        env.reset()


@pytest.mark.parametrize("how", ["device-node", "cdi-annotation"])
def test_asking_beyond_the_allocation_is_refused(
        env: cri.CriEnv, gpu_files: GpuFiles, socket: Path,
        serving_kubelet: kubelet.PodResourcesStub, how: str) -> None:
    """`gpu` was allocated GPU 0 but its spec holds GPU 1: refused before runsc
    runs, naming both; the pod's other container is untouched."""
    _configure(env, gpu_files, socket)
    name = f"beyond-{how}"
    _allocate(serving_kubelet, name, {"gpu": [UUIDS[0]], "bystander": []})
    c = env.cri
    try:
        pod = run_pod(env, name)
        bystander = start_sleeper(env, pod, "bystander")
        gpu = _create(env, pod, _gpu_config("gpu", how, gpu_files, 1))
        with pytest.raises(GRPCError) as failed:
            c.start(gpu)
        message = failed.value.message or ""
        assert f"container {gpu}: it is granted /dev/nvidia1" in message, message
        assert (f"beyond what the node allocated: the kubelet allocated {UUIDS[0]} to container "
                f"gpu of pod default/{name}") in message, message
        assert "resources.limits nvidia.com/gpu" in message, message

        assert c.status(gpu).state != ContainerState.CONTAINER_RUNNING
        assert c.status(bystander).state == ContainerState.CONTAINER_RUNNING
        assert c.exec_sync(bystander, ["echo", "still here"]).stdout == b"still here\n"

        c.remove(gpu)
        remove_pod(env, pod)
        assert_clean(env)
    finally:
        env.reset()
