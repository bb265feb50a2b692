"""The CRI client and the CRI-enabled containerd of tests/e2e/cri.py, proved with runc.

A pod goes through what a kubelet does to it (RunPodSandbox, CreateContainer,
StartContainer, ExecSync, ContainerStats, StopContainer, RemoveContainer,
StopPodSandbox, RemovePodSandbox) on each containerd version, on the node
network and with its own network namespace through CNI, and must leave
nothing behind. If the runc handler fails here, the fault is in the fixture or
the machine, not in containerd-shim-gvisorgpu-v1. The same walk with the
``gvisorgpu`` handler records where this project's shim stands with pods.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shim.api.k8s.cri.runtime.v1 import ContainerState, ImageSpec, ImageStatusRequest
from shim.api.k8s.cri.runtime.v1 import PodSandboxState as PodState
from tests import paths
from tests.e2e import cri, images, leftovers
from tests.e2e.conftest import cri_module

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cri_env(request: pytest.FixtureRequest, containerd_version: str,
            pause_image: images.Image, busybox_image: images.Image) -> Iterator[cri.CriEnv]:
    """gvisorgpu only with runsc 20240729 and the shim installed."""
    runsc = paths.RUNSC_2024 if paths.SHIM.exists() else None
    with cri_module(request, containerd_version, runsc, pause_image, busybox_image) as env:
        yield env


def test_cri_is_ready_and_sees_the_local_images(env: cri.CriEnv) -> None:
    version = env.cri.version()
    assert (version.runtime_name, version.runtime_api_version) == ("containerd", "v1")
    assert version.runtime_version.startswith(env.daemon.version)
    conditions = env.cri.conditions()
    assert conditions["RuntimeReady"][0] and conditions["NetworkReady"][0], conditions
    for ref in (images.PAUSE_REF, images.BUSYBOX_REF):
        image = env.cri.call(env.cri.images.image_status(
            ImageStatusRequest(image=ImageSpec(image=ref)))).image
        assert ref in image.repo_tags
    # NRI would listen on a global socket; the private daemon must not load it.
    plugins = env.daemon.ctr.lines("plugins", "ls")
    assert not [p for p in plugins if p.startswith("io.containerd.nri.") and p.endswith(" ok")]


def _walk_a_pod(env: cri.CriEnv, handler: str, host_network: bool) -> None:
    """Every call a kubelet makes for a one-container pod, checking each answer."""
    c = env.cri
    pod = c.run_pod(f"walk-{handler}", handler=handler, host_network=host_network)
    status = c.pod_status(pod.id)
    assert (status.status.state, status.status.runtime_handler) == (PodState.SANDBOX_READY,
                                                                    handler)
    cid = c.create_container(pod, "main", images.BUSYBOX_REF, ["sleep", "600"])
    assert c.status(cid).state == ContainerState.CONTAINER_CREATED
    c.start(cid)
    assert c.status(cid).state == ContainerState.CONTAINER_RUNNING

    out = c.exec_sync(cid, ["echo", "hello from cri"])
    assert (out.stdout, out.stderr, out.exit_code) == (b"hello from cri\n", b"", 0)
    out = c.exec_sync(cid, ["sh", "-c", "echo oops >&2; exit 3"])
    assert (out.stdout, out.stderr, out.exit_code) == (b"", b"oops\n", 3)

    stats = c.stats(cid)
    assert stats.attributes.id == cid
    assert stats.attributes.metadata.name == "main"
    assert stats.cpu.timestamp > 0
    if handler == cri.HANDLER_RUNC:
        assert stats.cpu.usage_core_nano_seconds.value > 0
    # gVisor splits the sandbox's CPU time by the sentry's per-container
    # accounting; an idle `sleep` may honestly have used none yet.
    assert stats.memory.working_set_bytes.value > 0

    if not host_network:
        _check_pod_network(env, c.pod_status(pod.id).status.network.ip, cid)

    c.stop(cid, timeout=5)
    stopped = c.status(cid)
    # sleep has no SIGTERM handler, so the stop signal ends it: 128 + 15.
    assert (stopped.state, stopped.exit_code) == (ContainerState.CONTAINER_EXITED, 143)
    c.remove(cid)
    assert c.container_ids(pod.id) == []
    c.stop_pod(pod.id)
    assert c.pod_status(pod.id).status.state == PodState.SANDBOX_NOTREADY
    c.remove_pod(pod.id)
    assert c.pod_ids() == []
    assert env.leftovers() == []


def _check_pod_network(env: cri.CriEnv, ip: str, cid: str) -> None:
    """The pod got an address from the bridge network, in its own namespace."""
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(cri.POD_SUBNET)
    out = env.cri.exec_sync(cid, ["ip", "-4", "-o", "addr", "show", "eth0"])
    assert f" {ip}/" in out.stdout.decode(), out
    gateway = str(next(ipaddress.ip_network(cri.POD_SUBNET).hosts()))
    ping = env.cri.exec_sync(cid, ["ping", "-c", "1", "-W", "5", gateway])
    assert ping.exit_code == 0, ping
    # The bridge and the pod's veth exist only in the fixture's namespace.
    links = json.loads(cri.in_netns(env.netns, "ip", "-j", "link").stdout)
    names = {link["ifname"] for link in links}
    assert env.bridge in names and any(n.startswith("veth") for n in names), names
    host = cri.in_netns(Path("/proc/1/ns/net"), "ip", "link", "show", env.bridge)
    assert host.returncode != 0, host.stdout
    netns_mounts = [m for m in leftovers.mounts_under(env.daemon.state) if "/netns/" in m]
    assert len(netns_mounts) == 1, netns_mounts


@pytest.mark.parametrize("host_network", [True, False], ids=["node-network", "cni-network"])
def test_runc_pod_walks_through_cri(env: cri.CriEnv, host_network: bool) -> None:
    _walk_a_pod(env, cri.HANDLER_RUNC, host_network)


def test_gvisorgpu_pod_walks_through_cri(cri_env: cri.CriEnv) -> None:
    if cri.HANDLER_GVISORGPU not in cri_env.handlers:
        pytest.skip("needs runsc 20240729 and the shim installed (pip install -e .)")
    # Not the `env` fixture: an expected failure may leave a pod behind, which
    # must be cleared without turning the expected failure into an error.
    try:
        _walk_a_pod(cri_env, cri.HANDLER_GVISORGPU, host_network=True)
    finally:
        cri_env.reset()
