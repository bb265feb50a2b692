"""What Kubernetes' CRI suite (critest, see scripts/conformance) found, kept
fixed: each case runs for the runc handler (the reference) and for gvisorgpu.

- a container whose process forked must still stop, and its pod with it;
- stopping a container at the moment it exits succeeds;
- a pod's seccomp profile is enforced, and exec cannot step outside it;
- what a sandbox cannot give (host IPC) is refused with the reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.exceptions import GRPCError

from shim.api.k8s.cri.runtime import v1 as api
from shim.api.k8s.cri.runtime.v1 import ContainerState
from tests import paths
from tests.e2e import cri, images
from tests.e2e.conftest import cri_module

pytestmark = pytest.mark.e2e

HANDLERS = [cri.HANDLER_RUNC, cri.HANDLER_GVISORGPU]


@pytest.fixture(scope="module")
def cri_env(request: pytest.FixtureRequest, containerd_version: str, runsc_2024: Path,
            pause_image: images.Image, busybox_image: images.Image) -> Iterator[cri.CriEnv]:
    if not paths.SHIM.exists():
        pytest.skip(f"{paths.SHIM.name} is not installed (pip install -e .)")
    with cri_module(request, containerd_version, runsc_2024, pause_image, busybox_image) as env:
        yield env


def _log(pod: cri.Pod, name: str) -> str:
    path = Path(pod.config.log_directory) / f"{name}/0.log"
    return path.read_text() if path.exists() else ""


def _wait_log(pod: cri.Pod, name: str, text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while text not in _log(pod, name):
        assert time.monotonic() < deadline, _log(pod, name)
        time.sleep(0.1)
    return _log(pod, name)


@pytest.mark.parametrize("handler", HANDLERS)
def test_a_container_that_forked_still_stops(env: cri.CriEnv, handler: str) -> None:
    """The nginx shape: the main process forks a worker that keeps stdout open.
    Stopping the container kills the main process; the worker must die with
    it, or the container is never seen to exit and the pod never stops."""
    c = env.cri
    pod = c.run_pod("forker", handler=handler)
    cid = c.create_container(pod, "forker", images.BUSYBOX_REF,
                             ["sh", "-c", "sleep 600 & echo forked; exec sleep 600"])
    c.start(cid)
    _wait_log(pod, "forker", "forked")
    c.stop(cid, timeout=2)  # the call itself is bounded: a hang fails it
    assert c.status(cid).state == ContainerState.CONTAINER_EXITED
    c.stop_pod(pod.id)
    c.remove_pod(pod.id)


@pytest.mark.parametrize("handler", HANDLERS)
def test_stopping_a_container_as_it_exits_succeeds(env: cri.CriEnv, handler: str) -> None:
    c = env.cri
    pod = c.run_pod("quick", handler=handler)
    for i in range(5):
        cid = c.create_container(pod, f"quick{i}", images.BUSYBOX_REF, ["true"])
        c.start(cid)
        c.stop(cid, timeout=0)  # races the exit: must succeed either way
        assert c.status(cid).state == ContainerState.CONTAINER_EXITED
        c.remove(cid)
    c.stop_pod(pod.id)
    c.remove_pod(pod.id)


DENY_CHMOD = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "architectures": ["SCMP_ARCH_X86_64"],
    "syscalls": [{"names": ["chmod", "fchmod", "fchmodat", "fchmodat2"],
                  "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
}


@pytest.mark.parametrize("handler", HANDLERS)
def test_a_localhost_seccomp_profile_is_enforced(env: cri.CriEnv, handler: str) -> None:
    profile = env.daemon.workdir / "deny-chmod.json"
    profile.write_text(json.dumps(DENY_CHMOD))
    c = env.cri
    pod = c.run_pod("seccomp", handler=handler)
    cid = c.create_container(
        pod, "confined", images.BUSYBOX_REF,
        ["sh", "-c", "grep Seccomp: /proc/self/status; chmod 700 /tmp && echo chmod-ok; "
                     "echo done; sleep 600"],
        seccomp=api.SecurityProfile(profile_type=api.SecurityProfileProfileType.Localhost,
                                    localhost_ref=str(profile)))
    c.start(cid)
    log = _wait_log(pod, "confined", "done")
    assert "Seccomp:\t2" in log and "chmod-ok" not in log, log
    if handler == cri.HANDLER_RUNC:
        assert c.exec_sync(cid, ["chmod", "700", "/tmp"]).exit_code != 0
    else:
        # runsc would start an exec'd process outside the profile: refused.
        with pytest.raises(GRPCError) as refused:
            c.exec_sync(cid, ["chmod", "700", "/tmp"])
        assert "outside the container's seccomp profile" in (refused.value.message or "")
    c.stop_pod(pod.id)
    c.remove_pod(pod.id)


def test_a_host_ipc_pod_is_refused_with_the_reason(env: cri.CriEnv) -> None:
    with pytest.raises(GRPCError) as refused:
        env.cri.run_pod("hostipc", handler=cri.HANDLER_GVISORGPU, host_ipc=True)
    assert "host's IPC namespace (hostIPC)" in (refused.value.message or "")
    assert "set hostIPC: false" in (refused.value.message or "")
