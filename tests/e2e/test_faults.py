"""The shim daemon killed (SIGKILL) at each step of a task's life: while runsc
creates, starts, execs or deletes, and between the steps. Afterwards
containerd's own cleanup (`ctr task rm -f`, `ctr c rm`) must leave nothing:
no runsc state, sandbox, mount or shim process (the suite's leftover check).

To stop the daemon *during* a runsc call, runsc runs behind a wrapper that,
for the subcommand under test, says it got there and then waits for the test
to let it go on; everything else is the real runsc 20240729.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.e2e import containerd as cd
from tests.e2e import leftovers

pytestmark = pytest.mark.e2e

WRAPPER = """#!/bin/sh
for a; do case $a in --*) ;; *) cmd=$a; break;; esac; done
if [ "$cmd" = "$(cat {gate}/at 2>/dev/null)" ] && [ ! -e {gate}/passed ]; then
  touch {gate}/passed {gate}/reached
  while [ ! -e {gate}/go ]; do sleep 0.05; done
fi
exec {runsc} "$@"
"""


class Gate:
    """Holds the wrapped runsc at one subcommand until released."""

    def __init__(self, folder: Path, runsc: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.wrapper = folder / "runsc"
        self.wrapper.write_text(WRAPPER.format(gate=folder, runsc=runsc))
        self.wrapper.chmod(0o755)

    def hold(self, subcommand: str) -> None:
        for name in ("passed", "reached", "go"):
            (self.folder / name).unlink(missing_ok=True)
        (self.folder / "at").write_text(subcommand)

    def wait_reached(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not (self.folder / "reached").exists():
            assert time.monotonic() < deadline, "runsc never reached the gate"
            time.sleep(0.02)

    def release(self) -> None:
        (self.folder / "go").touch()


@pytest.fixture
def gate(containerd: cd.Containerd, runsc_2024: Path) -> Iterator[Gate]:
    g = Gate(containerd.workdir / "gate", runsc_2024)
    yield g
    g.release()  # never leave a runsc call waiting


def shim_daemon(address: Path, container_id: str) -> psutil.Process:
    """The daemon serving `container_id`, found by its process title."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for proc in psutil.process_iter(["cmdline"]):
            words = leftovers._words(proc.info["cmdline"] or [])
            if words[:2] == ["containerd-shim-gvisorgpu-v1", "-namespace"] \
                    and container_id in words and str(address) in words:
                return proc
        time.sleep(0.05)
    raise AssertionError(f"no shim daemon for {container_id}")


def kill_daemon(containerd: cd.Containerd, container_id: str) -> None:
    proc = shim_daemon(containerd.address, container_id)
    os.kill(proc.pid, signal.SIGKILL)
    psutil.wait_procs([proc], timeout=10)


def clean_up(ctr: cd.Ctr, container_id: str) -> None:
    """What an operator (or containerd's own recovery) does afterwards."""
    ctr("task", "kill", "-s", "SIGKILL", container_id)
    ctr("task", "rm", "-f", container_id)
    out = ctr("c", "rm", container_id)
    assert out.returncode == 0, out.stderr
    assert container_id not in ctr.tasks()


@pytest.mark.parametrize("step", ["create", "start", "exec", "delete"])
def test_daemon_killed_during_a_runsc_call(step: str, containerd: cd.Containerd, ctr: cd.Ctr,
                                           busybox: str, gate: Gate,
                                           runtime_config: Callable[..., Path],
                                           container_id: Callable[[str], str]) -> None:
    config = runtime_config(runsc=gate.wrapper)
    cid = container_id("kill")
    if step == "delete":
        out = ctr("run", "--rm", *cd.gvisorgpu_args(config), busybox, cid, "true")
        assert out.returncode == 0, out.stderr
        ctr("run", "-d", *cd.gvisorgpu_args(config), busybox, cid, "sleep", "60")
        ctr("task", "kill", "-s", "SIGKILL", cid)
        gate.hold("delete")
        pending = ctr.popen("task", "rm", cid, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    elif step == "exec":
        out = ctr("run", "-d", *cd.gvisorgpu_args(config), busybox, cid, "sleep", "60")
        assert out.returncode == 0, out.stderr
        gate.hold("exec")
        pending = ctr.popen("task", "exec", "--exec-id", "e1", cid, "sleep", "60",
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        gate.hold(step)
        pending = ctr.popen("run", "-d", *cd.gvisorgpu_args(config), busybox, cid, "sleep",
                            "60", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        gate.wait_reached()
        kill_daemon(containerd, cid)
        gate.release()
        pending.wait(timeout=60)
    finally:
        if pending.poll() is None:
            pending.kill()
            pending.wait()
    clean_up(ctr, cid)


@pytest.mark.parametrize("step", ["running", "exec-running", "exited"])
def test_daemon_killed_between_steps(step: str, containerd: cd.Containerd, ctr: cd.Ctr,
                                     busybox: str, gvisorgpu: list[str],
                                     container_id: Callable[[str], str]) -> None:
    cid = container_id("kill")
    out = ctr("run", "-d", *gvisorgpu, busybox, cid, "sleep", "60")
    assert out.returncode == 0, out.stderr
    execs = []
    if step == "exec-running":
        execs.append(ctr.popen("task", "exec", "--exec-id", "e1", cid, "sleep", "60",
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 20
        while "e1" not in ctr("task", "ps", cid).stdout and time.monotonic() < deadline:
            time.sleep(0.1)
    if step == "exited":
        ctr("task", "kill", "-s", "SIGKILL", cid)
        deadline = time.monotonic() + 20
        while ctr.tasks().get(cid, (0, ""))[1] != "STOPPED" and time.monotonic() < deadline:
            time.sleep(0.1)
    kill_daemon(containerd, cid)
    clean_up(ctr, cid)
    for proc in execs:
        proc.wait(timeout=30)


def _forkservers(address: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        words = leftovers._words(proc.info["cmdline"] or [])
        if leftovers.is_forkserver(words) and str(address) in words:
            found.append(proc)
    return found


def test_forkserver_killed_while_containers_run(containerd: cd.Containerd, ctr: cd.Ctr,
                                                busybox: str, gvisorgpu: list[str],
                                                container_id: Callable[[str], str]) -> None:
    """Daemons do not depend on the forkserver that forked them: killed, the
    running containers keep being served and the next start launches another."""
    first, second = container_id("fsk1"), container_id("fsk2")
    for cid in (first, second):
        out = ctr("run", "-d", *gvisorgpu, busybox, cid, "sleep", "60")
        assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 20
    while not (servers := _forkservers(containerd.address)):
        assert time.monotonic() < deadline, "the first start launched no forkserver"
        time.sleep(0.1)
    for proc in servers:
        proc.kill()
    psutil.wait_procs(servers, timeout=10)
    try:
        for cid in (first, second):
            out = ctr("task", "exec", "--exec-id", "after", cid, "echo", f"still {cid}")
            assert (out.returncode, out.stdout.strip()) == (0, f"still {cid}"), out.stderr
        out = ctr("run", "--rm", *gvisorgpu, busybox, container_id("fsk3"), "echo", "new")
        assert (out.returncode, out.stdout.strip()) == (0, "new"), out.stderr
        deadline = time.monotonic() + 20
        while not _forkservers(containerd.address):
            assert time.monotonic() < deadline, "no forkserver launched again"
            time.sleep(0.1)
    finally:
        for cid in (first, second):
            clean_up(ctr, cid)
