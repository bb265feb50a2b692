"""The e2e fixtures themselves, proved with runtimes that are known to work:
runc through containerd's Go shim, and runsc through the same shim via a
wrapper. If these fail, the failure is in the fixtures or the machine, not in
containerd-shim-gvisorgpu-v1."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e import containerd as cd
from tests.e2e import leftovers

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(("argv", "stdout", "code"), [
    (["echo", "hello"], "hello\n", 0),
    (["sh", "-c", "echo out; exit 7"], "out\n", 7),
    (["sh", "-c", "printf %s \"$PATH\""], "/usr/sbin:/usr/bin:/sbin:/bin", 0),
])
def test_runc_runs_imported_image(ctr: cd.Ctr, busybox: str, container_id: Callable[[str], str],
                                  argv: list[str], stdout: str, code: int) -> None:
    out = ctr("run", "--rm", busybox, container_id("img"), *argv)
    assert (out.stdout, out.returncode) == (stdout, code), out.stderr


def test_runc_runs_plain_rootfs(ctr: cd.Ctr, rootfs: Path,
                                container_id: Callable[[str], str]) -> None:
    out = ctr("run", "--rm", "--rootfs", str(rootfs), container_id("fs"),
              "/bin/sh", "-c", "echo from-rootfs; exit 3")
    assert (out.stdout, out.returncode) == ("from-rootfs\n", 3), out.stderr


def test_stdin_reaches_container(ctr: cd.Ctr, busybox: str,
                                 container_id: Callable[[str], str]) -> None:
    cid = container_id("in")
    out = ctr.run_with_stdin("run", "--rm", busybox, cid, "sha256sum", data=b"abc", task=cid,
                             timeout=30)
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert out.stdout.decode().split()[0] == expected, out.stderr


def test_pause_image_sleeps_until_sigterm(ctr: cd.Ctr, pause: str,
                                          container_id: Callable[[str], str]) -> None:
    cid = container_id("pause")
    assert ctr("run", "-d", pause, cid).returncode == 0
    try:
        time.sleep(0.5)
        assert ctr.tasks()[cid][1] == "RUNNING"
        ctr("task", "kill", "-s", "SIGTERM", cid, check=True)
        _wait_stopped(ctr, cid, timeout=10)
        assert ctr.tasks()[cid][1] == "STOPPED"
    finally:
        ctr("task", "rm", "-f", cid)
        ctr("containers", "rm", cid)


def test_go_shim_drives_runsc_through_wrapper(ctr: cd.Ctr, busybox: str, go_runsc: list[str],
                                              container_id: Callable[[str], str]) -> None:
    # gVisor reports its own kernel version, never the host's.
    out = ctr("run", "--rm", *go_runsc, busybox, container_id("go"), "uname", "-r")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "4.4.0"


def test_go_shim_drives_old_runsc_with_ptrace(containerd: cd.Containerd, busybox: str,
                                              runsc_2022: Path,
                                              container_id: Callable[[str], str]) -> None:
    # runsc 20221219 predates systrap; ptrace is its default platform.
    wrapper = cd.write_runsc_wrapper(containerd.workdir / "runsc-2022", runsc_2022,
                                     ["--network=none", "--platform=ptrace"])
    out = containerd.ctr("run", "--rm", *cd.go_runsc_args(wrapper, containerd.runsc_root),
                         busybox, container_id("old"), "uname", "-r")
    assert (out.returncode, out.stdout.strip()) == (0, "4.4.0"), out.stderr


def test_leftover_check_sees_a_running_sandbox(containerd: cd.Containerd, busybox: str,
                                               go_runsc: list[str],
                                               container_id: Callable[[str], str]) -> None:
    cid = container_id("left")
    ctr = containerd.ctr
    run = ctr("run", "-d", *go_runsc, busybox, cid, "sleep", "600")
    assert run.returncode == 0, run.stderr
    try:
        found = leftovers.find(containerd.workdir, containerd.runsc_root, containerd.pid)
        kinds = {item.split(":", 1)[0].split(" ", 1)[0] for item in found}
        assert {"runsc", "mount", "process"} <= kinds, found
        assert any("runsc-sandbox" in item for item in found), found
        assert any("containerd-shim-runc-v2" in item for item in found), found
    finally:
        ctr("task", "kill", "-s", "SIGKILL", cid)
        _wait_stopped(ctr, cid)
        ctr("task", "rm", cid)
        ctr("containers", "rm", cid)
    assert leftovers.wait_clean(containerd.workdir, containerd.runsc_root, containerd.pid) == []


def test_restarted_containerd_still_knows_its_task(containerd: cd.Containerd, busybox: str,
                                                   container_id: Callable[[str], str]) -> None:
    cid = container_id("rs")
    ctr = containerd.ctr
    assert ctr("run", "-d", busybox, cid, "sleep", "600").returncode == 0
    try:
        pid_before = containerd.pid
        containerd.restart()
        assert containerd.pid != pid_before
        assert ctr.tasks()[cid][1] == "RUNNING"
    finally:
        ctr("task", "kill", "-s", "SIGKILL", cid)
        _wait_stopped(ctr, cid)
        ctr("task", "rm", cid)
        ctr("containers", "rm", cid)


def test_runtime_config_path_reaches_container_options(ctr: cd.Ctr, busybox: str,
                                                       runtime_config: Callable[..., Path],
                                                       container_id: Callable[[str], str]) -> None:
    """What ctr sends for --runtime-config-path with a non-runc runtime (no shim runs)."""
    cid, config = container_id("opt"), runtime_config()
    made = ctr("containers", "create", *cd.gvisorgpu_args(config), busybox, cid, "true")
    assert made.returncode == 0, made.stderr
    try:
        info = json.loads(ctr("containers", "info", cid, check=True).stdout)
    finally:
        ctr("containers", "rm", cid)
    runtime = info["Runtime"]
    assert runtime["Name"] == cd.RUNTIME_GVISORGPU
    # runtimeoptions.v1.Options with only field 2 (config_path) set.
    assert runtime["Options"]["type_url"] == "runtimeoptions.v1.Options"
    path = str(config).encode()
    assert base64.b64decode(runtime["Options"]["value"]) == b"\x12" + bytes([len(path)]) + path


@pytest.mark.parametrize("runtime", [cd.RUNTIME_GVISORGPU, "io.containerd.other.v1"])
def test_ctr_refuses_runc_flags_for_other_runtimes(ctr: cd.Ctr, busybox: str, runtime: str,
                                                   container_id: Callable[[str], str]) -> None:
    out = ctr("run", "--rm", "--runtime", runtime, "--runc-binary", "/bin/true", busybox,
              container_id("rf"), "true")
    assert out.returncode != 0
    assert "only supported for" in out.stderr


def _wait_stopped(ctr: cd.Ctr, cid: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ctr.tasks().get(cid, (0, "STOPPED"))[1] == "STOPPED":
            return
        time.sleep(0.05)


@pytest.mark.parametrize("containerd_version", ["2.1"])
def test_a_test_can_pin_its_containerd_version(containerd: cd.Containerd) -> None:
    assert containerd.version == "2.1"
    assert "2.1" in containerd.ctr("version", check=True).stdout
