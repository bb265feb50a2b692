"""Task lifecycles through containerd-shim-gvisorgpu-v1 beyond a plain `ctr run --rm`:
detached tasks, signals, containerd restarts, a shim that dies, a start that
fails, and container ids that are prefixes of each other.

Every test ends with containerd's own cleanup commands (`ctr task rm`,
`ctr c rm`); the suite's leftover check then fails the test if a runsc
sandbox, a mount or a process is still there.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from tests.e2e import containerd as cd

pytestmark = pytest.mark.e2e


def wait_status(ctr: cd.Ctr, cid: str, want: str, timeout: float = 20.0) -> str:
    """Poll `ctr task ls` until `cid` has status `want` ("" = no such task)."""
    deadline = time.monotonic() + timeout
    status = "?"
    while time.monotonic() < deadline:
        status = ctr.tasks().get(cid, (0, ""))[1]
        if status == want:
            return status
        time.sleep(0.05)
    raise AssertionError(f"task {cid} is {status or 'gone'}, not {want or 'gone'}, "
                         f"after {timeout:g} s")


def remove(ctr: cd.Ctr, cid: str) -> int:
    """`ctr task rm` then `ctr c rm`; the task's exit status as `task rm` tells it.

    ctr exits 0 either way and only warns "task X exit with non-zero exit code N".
    """
    task = ctr("task", "rm", cid)
    assert task.returncode == 0, task.stderr
    container = ctr("containers", "rm", cid)
    assert container.returncode == 0, container.stderr
    found = re.search(r"exit with non-zero exit code (\d+)", task.stderr)
    return int(found.group(1)) if found else 0


@contextmanager
def detached(ctr: cd.Ctr, cid: str, *args: str) -> Iterator[None]:
    """`ctr run -d ARGS` for task `cid` (which ARGS name); on the way out, also
    after a failed assertion, the task is killed and removed so that the
    leftover check reports the real failure."""
    run = ctr("run", "-d", *args)
    assert run.returncode == 0, run.stderr
    try:
        yield
    finally:
        if cid in ctr.tasks():
            ctr("task", "kill", "-s", "SIGKILL", cid)
            ctr("task", "rm", "-f", cid)
        if cid in ctr.containers():
            ctr("containers", "rm", cid)


def bundle_of(containerd: cd.Containerd, cid: str) -> Path:
    return containerd.state / "io.containerd.runtime.v2.task" / containerd.ctr.namespace / cid


def wait_cleaned_up(containerd: cd.Containerd, cid: str, timeout: float = 20.0) -> None:
    """Wait until containerd has removed the task's bundle: the last step of its
    cleanup after a dead shim, after `shim delete` has run. (`ctr task ls` stops
    listing such a task as soon as its State fails, long before that.)"""
    bundle = bundle_of(containerd, cid)
    deadline = time.monotonic() + timeout
    while bundle.exists():
        assert time.monotonic() < deadline, f"containerd did not remove {bundle}"
        time.sleep(0.05)


def shim_pid(containerd: cd.Containerd, cid: str) -> int:
    """The pid of the shim daemon serving `cid` in this test's containerd: the
    process listening on the socket that the bundle's `address` file names."""
    path = (bundle_of(containerd, cid) / "address").read_text().removeprefix("unix://")
    for conn in psutil.net_connections("unix"):
        if isinstance(conn.laddr, str) and conn.laddr == path and conn.pid is not None:
            return conn.pid
    raise AssertionError(f"no process listens on {path}, the shim socket of {cid}")


@pytest.mark.parametrize(("kill_args", "status"), [
    (["-s", "SIGKILL"], 137),
    (["-s", "SIGTERM"], 143),
    ([], 143),  # ctr's default signal
    (["--all", "-s", "SIGKILL"], 137),
], ids=["SIGKILL", "SIGTERM", "default", "all"])
def test_detached_task_killed_then_removed(ctr: cd.Ctr, busybox: str, gvisorgpu: list[str],
                                           container_id: Callable[[str], str],
                                           kill_args: list[str], status: int) -> None:
    cid = container_id("kill")
    with detached(ctr, cid, *gvisorgpu, busybox, cid, "sh", "-c", "sleep 600 & sleep 600"):
        pid, state = ctr.tasks()[cid]
        assert state == "RUNNING" and pid > 0
        assert str(pid) in ctr("task", "ps", cid, check=True).stdout
        # A running task cannot be deleted; it keeps running.
        assert ctr("task", "rm", cid).returncode != 0
        assert ctr.tasks()[cid] == (pid, "RUNNING")
        kill = ctr("task", "kill", *kill_args, cid)
        assert kill.returncode == 0, kill.stderr
        wait_status(ctr, cid, "STOPPED")
        # A second kill of a finished task is an error, not a hang or a crash.
        assert ctr("task", "kill", "-s", "SIGKILL", cid).returncode != 0
        assert remove(ctr, cid) == status
        assert cid not in ctr.tasks()


@pytest.mark.parametrize(("how", "status"), [
    ("ctr task kill -s SIGKILL", 137),
    ("SIGTERM to ctr run", 143),  # ctr forwards the signals it gets to the task
])
def test_attached_run_reports_the_signal(ctr: cd.Ctr, busybox: str, gvisorgpu: list[str],
                                         container_id: Callable[[str], str], how: str,
                                         status: int) -> None:
    """`ctr run` (attached, waiting on the task) exits 128+signal when the task is killed."""
    cid = container_id("att")
    proc = ctr.popen("run", "--rm", *gvisorgpu, busybox, cid, "sleep", "600")
    try:
        wait_status(ctr, cid, "RUNNING")
        if how.startswith("ctr task kill"):
            assert ctr("task", "kill", "-s", "SIGKILL", cid).returncode == 0
        else:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == status
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_status(ctr, cid, "")


@pytest.mark.parametrize("how", ["restart", "crash"])
def test_task_survives_containerd_restart(containerd: cd.Containerd, busybox: str,
                                          gvisorgpu: list[str],
                                          container_id: Callable[[str], str], how: str) -> None:
    ctr, cid = containerd.ctr, container_id("restart")
    with detached(ctr, cid, *gvisorgpu, busybox, cid, "sleep", "600"):
        pid = ctr.tasks()[cid][0]
        shim = shim_pid(containerd, cid)
        if how == "crash":
            containerd.kill()
            containerd.start()
        else:
            containerd.restart()
        assert ctr.tasks()[cid] == (pid, "RUNNING")
        assert shim_pid(containerd, cid) == shim  # reconnected, not replaced
        assert str(pid) in ctr("task", "ps", cid, check=True).stdout
        assert ctr("task", "kill", "-s", "SIGKILL", cid).returncode == 0
        wait_status(ctr, cid, "STOPPED")
        assert remove(ctr, cid) == 137


def test_exit_while_containerd_is_down_is_reported_after(containerd: cd.Containerd,
                                                         busybox: str, gvisorgpu: list[str],
                                                         container_id: Callable[[str], str]
                                                         ) -> None:
    """The task exits while containerd is stopped.

    containerd 1.6 then lists it as STOPPED with its status, and the shim's
    TaskExit reaches it once the shim re-dials (1.6 logs each forwarded event;
    2.x does not). containerd 2.x asks every shim for Pids when it starts and
    drops a task without processes as a leaked shim (Delete, Shutdown): the
    task is gone, as it is with containerd's own runc shim.
    """
    ctr, cid = containerd.ctr, container_id("down")
    with detached(ctr, cid, *gvisorgpu, busybox, cid, "sh", "-c", "sleep 2; exit 3"):
        containerd.stop()
        try:
            time.sleep(4)
        finally:
            containerd.start()
        if cd.major(containerd.version) >= 2:
            wait_cleaned_up(containerd, cid)
            wait_status(ctr, cid, "")
            assert ctr("containers", "rm", cid).returncode == 0
            return
        wait_status(ctr, cid, "STOPPED")
        assert remove(ctr, cid) == 3
    deadline = time.monotonic() + 10
    while True:
        log = containerd.log_path.read_text(errors="replace")
        if "topic=/tasks/exit" in log[log.rindex("containerd successfully booted"):]:
            break
        assert time.monotonic() < deadline, containerd.log_tail(60)
        time.sleep(0.1)


def test_detached_task_can_write_after_ctr_left(ctr: cd.Ctr, busybox: str,
                                                gvisorgpu: list[str],
                                                container_id: Callable[[str], str]) -> None:
    """`ctr run -d` exits at once, closing its FIFO readers; the shim's own reader
    must keep the container's writes from failing with EPIPE (or SIGPIPE)."""
    cid = container_id("late")
    script = "sleep 1; echo late || exit 9; echo late >&2 || exit 10; sleep 600"
    with detached(ctr, cid, *gvisorgpu, busybox, cid, "sh", "-c", script):
        time.sleep(2.5)
        assert ctr.tasks()[cid][1] == "RUNNING"
        assert ctr("task", "kill", "-s", "SIGKILL", cid).returncode == 0
        wait_status(ctr, cid, "STOPPED")
        assert remove(ctr, cid) == 137


@pytest.mark.parametrize("containerd_up", [True, False], ids=["containerd-up", "containerd-down"])
def test_killed_shim_is_cleaned_up_by_containerd(containerd: cd.Containerd, busybox: str,
                                                 gvisorgpu: list[str],
                                                 container_id: Callable[[str], str],
                                                 containerd_up: bool) -> None:
    """containerd notices the dead shim (at once, or when it restarts and cannot
    reconnect), runs `shim delete` (which must stop the sandbox and unmount the
    rootfs) and drops the task; `ctr c rm` then works."""
    ctr, cid = containerd.ctr, container_id("shimkill")
    with detached(ctr, cid, *gvisorgpu, busybox, cid, "sleep", "600"):
        shim = shim_pid(containerd, cid)
        if not containerd_up:
            containerd.stop()
        try:
            os.kill(shim, signal.SIGKILL)
        finally:
            if not containerd_up:
                containerd.start()
        wait_cleaned_up(containerd, cid)
        wait_status(ctr, cid, "")
        rm = ctr("containers", "rm", cid)
        assert rm.returncode == 0, rm.stderr


def test_killed_shim_with_plain_rootfs(containerd: cd.Containerd, rootfs: Path,
                                       gvisorgpu: list[str],
                                       container_id: Callable[[str], str]) -> None:
    """A --rootfs sandbox whose shim dies: cleanup also leaves the user's folder
    as it was (runsc 20240729 keeps a .gvisor.filestore.<id> file in it)."""
    ctr, cid = containerd.ctr, container_id("fskill")
    before = sorted(p.name for p in rootfs.iterdir())
    with detached(ctr, cid, *gvisorgpu, "--rootfs", str(rootfs), cid, "/bin/sleep", "600"):
        os.kill(shim_pid(containerd, cid), signal.SIGKILL)
        wait_cleaned_up(containerd, cid)
        wait_status(ctr, cid, "")
        assert ctr("containers", "rm", cid).returncode == 0
    assert sorted(p.name for p in rootfs.iterdir()) == before


def test_old_runsc_detached_task_killed_then_removed(ctr: cd.Ctr, busybox: str,
                                                     runsc_2022: Path,
                                                     runtime_config: Callable[..., Path],
                                                     container_id: Callable[[str], str]) -> None:
    config = runtime_config(runsc=runsc_2022, runsc_config={"platform": "ptrace"})
    cid = container_id("oldkill")
    with detached(ctr, cid, *cd.gvisorgpu_args(config), busybox, cid, "sleep", "600"):
        assert ctr.tasks()[cid][1] == "RUNNING"
        assert ctr("task", "kill", "-s", "SIGKILL", cid).returncode == 0
        wait_status(ctr, cid, "STOPPED")
        assert remove(ctr, cid) == 137


def sandbox_pid(containerd: cd.Containerd, cid: str) -> int:
    """The runsc-sandbox process of `cid` (its runsc root is `<root>/<ns>/<cid>`)."""
    root = f"--root={containerd.runsc_root / containerd.ctr.namespace / cid}"
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0] == "runsc-sandbox" and root in cmdline:
            return int(proc.pid)
    raise AssertionError(f"no runsc-sandbox with {root}")


def test_sandbox_killed_from_outside(containerd: cd.Containerd, rootfs: Path,
                                     gvisorgpu: list[str],
                                     container_id: Callable[[str], str]) -> None:
    """The sandbox dies under the shim (OOM killer, an operator): the task stops
    with 137, and task rm clears runsc's state and the rootfs folder."""
    ctr, cid = containerd.ctr, container_id("sbkill")
    before = sorted(p.name for p in rootfs.iterdir())
    with detached(ctr, cid, *gvisorgpu, "--rootfs", str(rootfs), cid, "/bin/sleep", "600"):
        os.kill(sandbox_pid(containerd, cid), signal.SIGKILL)
        wait_status(ctr, cid, "STOPPED")
        assert remove(ctr, cid) == 137
    assert sorted(p.name for p in rootfs.iterdir()) == before


def test_parallel_runs_keep_their_output_apart(ctr: cd.Ctr, busybox: str, gvisorgpu: list[str],
                                               container_id: Callable[[str], str]) -> None:
    """Shims started at the same moment (one containerd) each serve their own task."""
    ids = [container_id("par") for _ in range(3)]
    procs = [ctr.popen("run", "--rm", *gvisorgpu, busybox, cid, "sh", "-c",
                       f"echo {cid}; exit {n + 1}", stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True) for n, cid in enumerate(ids)]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert [(code, out) for code, out, _ in results] == [
        (n + 1, f"{cid}\n") for n, cid in enumerate(ids)], results


def test_failed_start_reports_runsc_reason_and_cleans_up(ctr: cd.Ctr, busybox: str,
                                                         gvisorgpu: list[str],
                                                         container_id: Callable[[str], str]
                                                         ) -> None:
    """runsc only finds out at start that the binary is missing; the task is then
    left CREATED, and containerd's force-remove must still clear it."""
    cid = container_id("nobin")
    run = ctr("run", *gvisorgpu, busybox, cid, "/nonexistent")
    try:
        assert run.returncode != 0
        assert "/nonexistent" in run.stderr, run.stderr
        assert "no such file or directory" in run.stderr.lower(), run.stderr
    finally:
        rm = ctr("task", "rm", "-f", cid)
        assert rm.returncode == 0 or "not found" in rm.stderr, rm.stderr
        crm = ctr("containers", "rm", cid)
    assert crm.returncode == 0, crm.stderr
    assert cid not in ctr.tasks()


@pytest.mark.parametrize("first", ["short", "long"])
def test_prefix_ids_are_never_confused(ctr: cd.Ctr, busybox: str, gvisorgpu: list[str],
                                       first: str) -> None:
    """runsc resolves ids by prefix: web-1 must not reach web-10, and with web-1
    gone, nothing addressed to web-1 may land on web-10."""
    stem = f"web-{secrets.token_hex(3)}"
    short, long_ = f"{stem}-1", f"{stem}-10"
    one, other = (short, long_) if first == "short" else (long_, short)
    with detached(ctr, long_, *gvisorgpu, busybox, long_, "sleep", "600"), \
            detached(ctr, short, *gvisorgpu, busybox, short, "sleep", "600"):
        assert ctr("task", "kill", "-s", "SIGKILL", one).returncode == 0
        wait_status(ctr, one, "STOPPED")
        assert ctr.tasks()[other][1] == "RUNNING"
        assert remove(ctr, one) == 137
        assert ctr.tasks()[other][1] == "RUNNING"
        assert ctr("task", "kill", "-s", "SIGKILL", other).returncode == 0
        wait_status(ctr, other, "STOPPED")
        assert remove(ctr, other) == 137
