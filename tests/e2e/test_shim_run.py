"""containerd runs containers in gVisor through containerd-shim-gvisorgpu-v1.

Each test runs once per containerd version (1.6 and 2.1 by default). ctr from
2.1 waits for EOF on the task's stdout before it sends Delete, so a shim that
holds its FIFO writers too long hangs there; ctr's time-outs turn such a hang
into a failure.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e import containerd as cd
from tests.e2e.test_task_api import events

pytestmark = pytest.mark.e2e

TASK_TOPICS = ("/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete")


def test_run_rm_prints_output(ctr: cd.Ctr, busybox: str, gvisorgpu: list[str],
                              container_id: Callable[[str], str]) -> None:
    out = ctr("run", "--rm", *gvisorgpu, busybox, container_id("echo"), "echo", "hello gvisor")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello gvisor\n"


@pytest.mark.parametrize(("script", "code"), [
    ("exit 0", 0),
    ("exit 7", 7),
    ("exit 255", 255),
    ("kill -KILL $$", 137),  # pid 1 can kill itself; the shell dies of the signal
])
def test_exit_code_propagates(ctr: cd.Ctr, busybox: str, gvisorgpu: list[str],
                              container_id: Callable[[str], str], script: str,
                              code: int) -> None:
    out = ctr("run", "--rm", *gvisorgpu, busybox, container_id("exit"), "sh", "-c", script)
    assert out.returncode == code, out.stderr


def test_background_child_does_not_hold_the_run_open(ctr: cd.Ctr, busybox: str,
                                                     gvisorgpu: list[str],
                                                     container_id: Callable[[str], str]) -> None:
    """The init exits while a child it left behind still has stdout open. The
    sandbox ends with its init, so stdout reaches EOF and ctr (2.x waits for
    that EOF before Delete) returns at once rather than after the child."""
    started = time.monotonic()
    out = ctr("run", "--rm", *gvisorgpu, busybox, container_id("bg"),
              "sh", "-c", "sleep 600 & echo parent-done", timeout=30)
    assert (out.returncode, out.stdout) == (0, "parent-done\n"), out.stderr
    assert time.monotonic() - started < 20


def test_stdout_and_stderr_stay_apart(ctr: cd.Ctr, busybox: str, gvisorgpu: list[str],
                                      container_id: Callable[[str], str]) -> None:
    out = ctr("run", "--rm", *gvisorgpu, busybox, container_id("split"),
              "sh", "-c", "echo to-out; echo to-err >&2")
    assert (out.returncode, out.stdout) == (0, "to-out\n"), out.stderr
    assert "to-err\n" in out.stderr


def test_null_io_runs_and_reports_the_exit(ctr: cd.Ctr, busybox: str, gvisorgpu: list[str],
                                           container_id: Callable[[str], str]) -> None:
    # No FIFOs at all: the container's stdio is /dev/null.
    out = ctr("run", "--rm", "--null-io", *gvisorgpu, busybox, container_id("null"),
              "sh", "-c", "echo lost; read line; exit 4")
    assert (out.returncode, out.stdout) == (4, ""), out.stderr


def test_log_uri_file_gets_stdout_and_stderr(ctr: cd.Ctr, busybox: str, gvisorgpu: list[str],
                                             container_id: Callable[[str], str],
                                             tmp_path: Path) -> None:
    log = tmp_path / "logs" / "task.log"
    out = ctr("run", "--rm", "--log-uri", f"file://{log}", *gvisorgpu, busybox,
              container_id("file"), "sh", "-c", "echo to-out; echo to-err >&2")
    assert out.returncode == 0, out.stderr
    assert sorted(log.read_text().splitlines()) == ["to-err", "to-out"]


_STDIN = bytes(range(256)) * 4096  # 1 MiB: many times a pipe's buffer


@pytest.mark.parametrize(("argv", "expected"), [
    (["cat"], _STDIN),
    (["sha256sum"], f"{hashlib.sha256(_STDIN).hexdigest()}  -\n".encode()),
    (["wc", "-c"], f"{len(_STDIN)}\n".encode()),
], ids=["cat", "sha256sum", "wc"])
def test_stdin_reaches_the_container(ctr: cd.Ctr, busybox: str, gvisorgpu: list[str],
                                     container_id: Callable[[str], str], argv: list[str],
                                     expected: bytes) -> None:
    cid = container_id("stdin")
    out = ctr.run_with_stdin("run", "--rm", *gvisorgpu, busybox, cid, *argv, data=_STDIN,
                             task=cid, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.replace(b" ", b"") == expected.replace(b" ", b"")


def test_run_from_a_plain_rootfs(ctr: cd.Ctr, rootfs: Path, gvisorgpu: list[str],
                                 container_id: Callable[[str], str]) -> None:
    before = sorted(p.name for p in rootfs.iterdir())
    out = ctr("run", "--rm", *gvisorgpu, "--rootfs", str(rootfs), container_id("fs"),
              "/bin/sh", "-c", "echo from-rootfs > /tmp/marker; cat /tmp/marker; exit 3")
    assert (out.stdout, out.returncode) == ("from-rootfs\n", 3), out.stderr
    # The sandbox's writes stay inside it (an overlay over the folder), and
    # runsc's own file store for that overlay is gone with the sandbox.
    assert not (rootfs / "tmp/marker").exists()
    assert sorted(p.name for p in rootfs.iterdir()) == before


def test_run_from_the_imported_image_uses_its_config(ctr: cd.Ctr, busybox: str,
                                                     gvisorgpu: list[str],
                                                     container_id: Callable[[str], str]
                                                     ) -> None:
    # No command given: the image's Cmd (/bin/sh) reads the script from stdin.
    cid = container_id("img")
    out = ctr.run_with_stdin("run", "--rm", *gvisorgpu, busybox, cid,
                             data=b'printf "%s|" "$PATH"; uname -r\n', task=cid)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode() == "/usr/sbin:/usr/bin:/sbin:/bin|4.4.0\n"


def test_large_stdout_arrives_intact(ctr: cd.Ctr, busybox: str, gvisorgpu: list[str],
                                     container_id: Callable[[str], str]) -> None:
    size = 50 * 1024 * 1024
    started = time.monotonic()
    out = ctr("run", "--rm", *gvisorgpu, busybox, container_id("big"),
              "sh", "-c", f"yes abc | head -c {size}", text=False, timeout=180)
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert len(out.stdout) == size
    expected = hashlib.sha256(b"abc\n" * (size // 4)).hexdigest()
    assert hashlib.sha256(out.stdout).hexdigest() == expected, f"{elapsed:.1f} s"


def test_old_runsc_smoke(ctr: cd.Ctr, busybox: str, runsc_2022: Path,
                         runtime_config: Callable[..., Path],
                         container_id: Callable[[str], str]) -> None:
    # runsc 20221219 predates systrap; ptrace is what it has here.
    config = runtime_config(runsc=runsc_2022, runsc_config={"platform": "ptrace"})
    out = ctr("run", "--rm", *cd.gvisorgpu_args(config), busybox, container_id("old"),
              "sh", "-c", "uname -r; exit 5")
    assert (out.returncode, out.stdout) == (5, "4.4.0\n"), out.stderr


def test_task_events_reach_containerd_in_order(ctr: cd.Ctr, busybox: str,
                                               gvisorgpu: list[str],
                                               container_id: Callable[[str], str]) -> None:
    cid = container_id("ev")
    with events(ctr, busybox, container_id("evprobe")) as recorder:
        out = ctr("run", "--rm", *gvisorgpu, busybox, cid, "sh", "-c", "exit 7")
        assert out.returncode == 7, out.stderr
        recorder.wait_for(lambda ln: "/tasks/delete" in ln and cid in ln, 15)
    got = [(topic, ev) for topic, ev in recorder.of(cid) if topic in TASK_TOPICS]
    assert [topic for topic, _ in got] == list(TASK_TOPICS), recorder.lines
    exits = {topic: ev for topic, ev in got}
    assert exits["/tasks/exit"]["exit_status"] == 7
    assert exits["/tasks/delete"]["exit_status"] == 7
    assert exits["/tasks/start"]["pid"] == exits["/tasks/exit"]["pid"] != 0


_LOGFMT = re.compile(r'^time="[^"]+" level=(debug|info|warn|error) msg=\S')


def test_shim_logs_reach_containerd_log_as_logfmt(containerd: cd.Containerd, busybox: str,
                                                  gvisorgpu: list[str],
                                                  container_id: Callable[[str], str]) -> None:
    cid = container_id("log")
    out = containerd.ctr("run", "--rm", *gvisorgpu, busybox, cid, "true")
    assert out.returncode == 0, out.stderr
    ours = [line for line in containerd.log_path.read_text(errors="replace").splitlines()
            if f"container_id={cid}" in line and f"runtime={cd.RUNTIME_GVISORGPU}" in line]
    assert ours, containerd.log_tail(40)
    assert all(_LOGFMT.match(line) for line in ours), ours
    assert any("msg=started" in line for line in ours), ours
    assert any('msg="process exited"' in line and "exit_status=0" in line for line in ours), ours
