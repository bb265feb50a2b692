"""The rest of the task API through ctr: exec, terminals, pause/resume, pids,
metrics, OOM, checkpoint and update.

Every test runs for two runtimes, containerd's own runc shim with Debian's
runc and this project's shim, so that a failure of only the gvisorgpu variant
points at the shim and not at the test. Where gVisor and runc really differ
(an OOM kill takes the whole sandbox) the expectation says so per runtime.

Facts these tests rely on (ctr 1.6.20 and 2.1.9): `ctr task exec` needs
--exec-id; `ctr run --memory-limit BYTES`; `ctr task metrics --format json`;
there is no `ctr task update`, so Update is sent to the shim's socket directly;
`ctr task checkpoint` passes --image-path and --exit only to runc runtimes and
always pauses the task around the Checkpoint call, then stores the result as
an image named containerd.io/checkpoint/ID:DATE.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import select
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import betterproto.lib.google.protobuf as pb
import pytest

from shim.api.containerd.task import v2 as task_api
from shim.ttrpc.client import Client
from shim.ttrpc.status import Code, RpcError
from tests.e2e import containerd as cd
from tests.e2e.pty_helpers import Terminal

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


@dataclass(frozen=True)
class Runtime:
    name: str  # "runc" or "gvisorgpu"
    flags: list[str]  # what `ctr run` needs to pick it

    @property
    def gvisor(self) -> bool:
        return self.name == "gvisorgpu"


@pytest.fixture(params=["runc", "gvisorgpu"])
def runtime(request: pytest.FixtureRequest, containerd: cd.Containerd) -> Runtime:
    """runc (the reference behaviour) or this project's shim."""
    if request.param == "gvisorgpu":
        return Runtime("gvisorgpu", request.getfixturevalue("gvisorgpu"))
    if shutil.which("runc", path=cd.SYSTEM_PATH) is None:
        pytest.skip("runc is not installed (apt-get install runc)")
    # Its state goes where the leftover check looks, so a leaked runc container fails too.
    return Runtime("runc", ["--runtime", cd.RUNTIME_RUNC,
                            "--runc-root", str(containerd.runsc_root)])


# --- helpers -----------------------------------------------------------------


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true after {timeout:g} s: {what}")
        time.sleep(0.05)


def status_of(ctr: cd.Ctr, cid: str) -> str:
    return ctr.tasks().get(cid, (0, ""))[1]


def discard(ctr: cd.Ctr, cid: str) -> None:
    """Kill and remove task and container `cid`, whatever state they are in."""
    if cid in ctr.tasks():
        if status_of(ctr, cid) == "PAUSED":
            ctr("task", "resume", cid)
        ctr("task", "kill", "-a", "-s", "SIGKILL", cid)
        ctr("task", "rm", "-f", cid)
    if cid in ctr.containers():
        ctr("containers", "rm", cid)


@contextmanager
def cleaned_up(ctr: cd.Ctr, cid: str) -> Iterator[None]:
    """Make sure `cid` is gone afterwards, so that after a failed assertion the
    leftover check does not hide the real failure."""
    try:
        yield
    finally:
        discard(ctr, cid)


@contextmanager
def detached(ctr: cd.Ctr, runtime: Runtime, image: str, cid: str, *argv: str,
             flags: tuple[str, ...] = ()) -> Iterator[int]:
    """`ctr run -d` task `cid`; yields its pid; killed and removed afterwards."""
    with cleaned_up(ctr, cid):
        run = ctr("run", "-d", *runtime.flags, *flags, image, cid, *argv)
        assert run.returncode == 0, run.stderr
        assert status_of(ctr, cid) == "RUNNING"
        yield ctr.tasks()[cid][0]


def exec_with_stdin(ctr: cd.Ctr, cid: str, exec_id: str, command: str, data: bytes,
                    timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:
    """`ctr task exec` of `sh -c COMMAND` fed `data`, whose stdin closes only once
    the exec runs.

    As with tasks, containerd loses stdin's EOF if it comes before the exec has
    started (runc's shim too), so the command first says "ready" on stderr.
    """
    proc = ctr.popen("task", "exec", "--exec-id", exec_id, cid, "sh", "-c",
                     f"echo ready >&2; {command}", stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    early = b""
    try:
        while b"ready\n" not in early:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stderr], [], [], max(left, 0))
            chunk = os.read(proc.stderr.fileno(), 4096) if ready else b""
            if not chunk:
                raise AssertionError(f"the exec never said ready: {early!r}, "
                                     f"ctr returned {proc.poll()}")
            early += chunk
        out, err = proc.communicate(data, timeout=max(deadline - time.monotonic(), 1.0))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out,
                                       early.replace(b"ready\n", b"", 1) + err)


class Events:
    """`ctr events` in the background; the lines it printed so far in `lines`."""

    def __init__(self, ctr: cd.Ctr) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._proc = ctr.popen("events", stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._thread.join(timeout=10)
        assert self._proc.stdout is not None
        self._proc.stdout.close()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(map(predicate, self.lines)), timeout)

    def of(self, cid: str) -> list[tuple[str, dict[str, Any]]]:
        """(topic, event) of `cid`'s /tasks/ events; ctr prints `TIME NS TOPIC JSON`."""
        found = []
        with self._cond:
            lines = list(self.lines)
        for line in lines:
            parts = line.split(" ", 6)
            topic = next((p for p in parts if p.startswith("/tasks/")), None)
            if topic is None or "{" not in line:
                continue
            event = json.loads(line[line.index("{"):])
            if event.get("container_id") == cid:
                found.append((topic, event))
        return found


@contextmanager
def events(ctr: cd.Ctr, image: str, probe: str) -> Iterator[Events]:
    """Record `ctr events`, subscribed for sure (an event made after the start,
    the removal of container `probe`, has arrived) before the body runs."""
    recorder = Events(ctr)
    try:
        ctr("containers", "create", image, probe, "true", check=True)
        ctr("containers", "rm", probe, check=True)
        assert recorder.wait_for(lambda ln: "/containers/delete" in ln and probe in ln), \
            recorder.lines
        yield recorder
    finally:
        recorder.close()


def ps_rows(ctr: cd.Ctr, cid: str) -> list[tuple[int, str]]:
    """(pid, info) rows of `ctr task ps`; info names the exec id for execs
    (`&ProcessDetails{ExecID:X,...}` from 1.6, `exec_id:"X"` from 2.1)."""
    rows = []
    for line in ctr.lines("task", "ps", cid)[1:]:
        pid, _, info = line.partition(" ")
        rows.append((int(pid), info.strip()))
    return rows


# --- exec --------------------------------------------------------------------


@pytest.mark.parametrize(("script", "code", "stdout", "stderr"), [
    ("echo out; echo err >&2; exit 3", 3, "out\n", "err\n"),
    ("echo fine", 0, "fine\n", ""),
    ("kill -KILL $$", 137, "", ""),
], ids=["exit-3", "exit-0", "killed"])
def test_exec_output_and_exit_code(ctr: cd.Ctr, busybox: str, runtime: Runtime,
                                   container_id: Callable[[str], str], script: str,
                                   code: int, stdout: str, stderr: str) -> None:
    cid = container_id("exec")
    with detached(ctr, runtime, busybox, cid, "sleep", "600"):
        out = ctr("task", "exec", "--exec-id", "e1", cid, "sh", "-c", script, timeout=30)
        assert (out.returncode, out.stdout) == (code, stdout), out.stderr
        assert stderr in out.stderr
        # The exec is gone once ctr returns; its id can be used again.
        again = ctr("task", "exec", "--exec-id", "e1", cid, "true", timeout=30)
        assert again.returncode == 0, again.stderr
        assert status_of(ctr, cid) == "RUNNING"


_STDIN = bytes(range(256)) * 4096  # 1 MiB, many pipe buffers


@pytest.mark.parametrize(("command", "expected"), [
    ("exec cat", _STDIN),  # ends only at stdin's EOF: CloseIO must reach the exec
    ("exec wc -c", b"%d\n" % len(_STDIN)),
    ("head -c 1000 | wc -c", b"1000\n"),  # exits before EOF; the rest must not block ctr
], ids=["cat", "wc", "head"])
def test_exec_stdin(ctr: cd.Ctr, busybox: str, runtime: Runtime,
                    container_id: Callable[[str], str], command: str, expected: bytes) -> None:
    cid = container_id("stdin")
    with detached(ctr, runtime, busybox, cid, "sleep", "600"):
        out = exec_with_stdin(ctr, cid, "in1", command, _STDIN)
        assert out.returncode == 0, out.stderr
        assert out.stdout.replace(b" ", b"") == expected.replace(b" ", b"")


def test_exec_of_a_missing_binary_fails(ctr: cd.Ctr, busybox: str, runtime: Runtime,
                                        container_id: Callable[[str], str]) -> None:
    cid = container_id("nobin")
    with detached(ctr, runtime, busybox, cid, "sleep", "600"):
        out = ctr("task", "exec", "--exec-id", "missing", cid, "/no/such/binary", timeout=30)
        assert out.returncode != 0
        assert "/no/such/binary" in out.stderr, out.stderr
        # The task is unharmed, and the failed exec left nothing behind.
        assert status_of(ctr, cid) == "RUNNING"
        assert len(ps_rows(ctr, cid)) == 1
        after = ctr("task", "exec", "--exec-id", "missing", cid, "echo", "still here",
                    timeout=30)
        assert (after.returncode, after.stdout) == (0, "still here\n"), after.stderr


def test_many_concurrent_execs(ctr: cd.Ctr, busybox: str, runtime: Runtime,
                               container_id: Callable[[str], str]) -> None:
    """Probes run execs all the time, in parallel; each must see its own output
    to EOF and its own exit code, quickly."""
    cid, count = container_id("many"), 10
    with detached(ctr, runtime, busybox, cid, "sleep", "600"):
        started = time.monotonic()
        procs = [ctr.popen("task", "exec", "--exec-id", f"par{i}", cid, "sh", "-c",
                           f"echo start-{i}; sleep 1; echo end-{i}; exit {i}",
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(count)]
        try:
            results = [(*p.communicate(timeout=60), p.returncode) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        elapsed = time.monotonic() - started
        for i, (out, err, code) in enumerate(results):
            assert (code, out) == (i, f"start-{i}\nend-{i}\n"), err
        assert elapsed < 20, f"{count} execs of 1 s took {elapsed:.1f} s"
        wait_until("only the init is left", lambda: len(ps_rows(ctr, cid)) == 1)


def test_duplicate_exec_id_is_refused(ctr: cd.Ctr, busybox: str, runtime: Runtime,
                                      container_id: Callable[[str], str]) -> None:
    cid = container_id("dup")
    with detached(ctr, runtime, busybox, cid, "sleep", "600"):
        first = ctr("task", "exec", "-d", "--exec-id", "dup", cid, "sleep", "600", timeout=30)
        assert first.returncode == 0, first.stderr
        second = ctr("task", "exec", "--exec-id", "dup", cid, "echo", "no", timeout=30)
        assert second.returncode != 0
        assert second.stdout == ""
        assert "already exists" in second.stderr, second.stderr
        # The first exec still runs, untouched.
        assert sum("dup" in info for _, info in ps_rows(ctr, cid)) == 1


def test_exec_events_in_order(ctr: cd.Ctr, busybox: str, runtime: Runtime,
                              container_id: Callable[[str], str]) -> None:
    cid = container_id("execev")
    with events(ctr, busybox, container_id("probe")) as recorder, \
            detached(ctr, runtime, busybox, cid, "sleep", "600"):
        out = ctr("task", "exec", "--exec-id", "ev1", cid, "sh", "-c", "exit 3", timeout=30)
        assert out.returncode == 3, out.stderr
        assert recorder.wait_for(lambda ln: "/tasks/exit" in ln and '"id":"ev1"' in ln)
    got = [(t, e) for t, e in recorder.of(cid)
           if t.startswith("/tasks/exec-") or (t == "/tasks/exit" and e.get("id") == "ev1")]
    assert [t for t, _ in got] == ["/tasks/exec-added", "/tasks/exec-started",
                                   "/tasks/exit"], recorder.lines
    added, started, exited = (e for _, e in got)
    assert added["exec_id"] == started["exec_id"] == "ev1"
    assert started["pid"] == exited["pid"] > 0
    assert exited["exit_status"] == 3


def test_exec_killed_by_a_signal(ctr: cd.Ctr, busybox: str, runtime: Runtime,
                                 container_id: Callable[[str], str]) -> None:
    """`ctr task kill --exec-id` reaches that exec only; its ctr reports 128+signal."""
    cid = container_id("execkill")
    with detached(ctr, runtime, busybox, cid, "sleep", "600"):
        proc = ctr.popen("task", "exec", "--exec-id", "victim", cid, "sleep", "600",
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_until("the exec is listed",
                       lambda: any("victim" in info for _, info in ps_rows(ctr, cid)), 10)
            kill = ctr("task", "kill", "--exec-id", "victim", "-s", "SIGTERM", cid)
            assert kill.returncode == 0, kill.stderr
            assert proc.wait(timeout=30) == 143
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        assert status_of(ctr, cid) == "RUNNING"


def test_init_exit_ends_running_execs(ctr: cd.Ctr, busybox: str, runtime: Runtime,
                                      container_id: Callable[[str], str]) -> None:
    """When the init dies, an exec still running dies with it: its ctr returns
    (137) instead of hanging, and its TaskExit comes before the init's."""
    cid = container_id("orphan")
    with events(ctr, busybox, container_id("probe")) as recorder, \
            detached(ctr, runtime, busybox, cid, "sleep", "600"):
        proc = ctr.popen("task", "exec", "--exec-id", "left", cid, "sleep", "600",
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_until("the exec is listed",
                       lambda: any("left" in info for _, info in ps_rows(ctr, cid)), 10)
            assert ctr("task", "kill", "-s", "SIGKILL", cid).returncode == 0
            assert proc.wait(timeout=30) == 137
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        assert recorder.wait_for(lambda ln: "/tasks/exit" in ln and f'"id":"{cid}"' in ln)
    exits = [e.get("id") for t, e in recorder.of(cid) if t == "/tasks/exit"]
    assert exits == ["left", cid], recorder.lines


# --- terminals ---------------------------------------------------------------


_PROMPT = rb"# "
# Not `tty`: under runsc the terminal is a host file inside the sandbox (fd 0
# -> host:[1], also with containerd's own shim driving runsc), so ttyname()
# fails and `tty` says "not a tty" although isatty() holds.
_IS_A_TTY = b"[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo terminal"


def until_size(term: Terminal, rows: int, cols: int, timeout: float = 15.0) -> None:
    """Ask the shell for its terminal size until it reports rows x cols.

    Sizes reach the container asynchronously: ctr sends the first ResizePty
    only after Start (a shell can be quicker: then stty finds a 0x0 terminal
    and fails), and later ones from its SIGWINCH handler, which it installs
    only once the process has started; a SIGWINCH before that is lost (seen
    with containerd's own runc shim too), so the size is set again each round.
    """
    deadline = time.monotonic() + timeout
    want = re.compile(rb"\r*\n(?:\^\[\[\d+;\d+R)?%d %d\r*\n" % (rows, cols))
    while True:
        term.resize(rows, cols)
        # An unchanged size sends no SIGWINCH, so nudge ctr (the command itself).
        os.kill(term.proc.pid, signal.SIGWINCH)
        mark = len(term.output)
        term.send(b"stty size\r")
        # ash asks the terminal for the cursor position (ESC [6n) at each
        # prompt; the answer can land in the line and be echoed as ^[[1;1R.
        term.expect(rb"\r*\n(?:\^\[\[\d+;\d+R)?(\d+ \d+|stty: [^\r\n]*)\r*\n", timeout=10,
                    start=mark)
        if want.search(term.output, mark):
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"the size never became {rows} {cols}: {term.text!r}")
        time.sleep(0.2)


def test_run_with_a_terminal(ctr: cd.Ctr, busybox: str, runtime: Runtime,
                             container_id: Callable[[str], str]) -> None:
    """`ctr run -t` in a real terminal: an interactive shell as the init, the
    terminal's size on start and after a resize, and the exit status."""
    cid = container_id("tty")
    with cleaned_up(ctr, cid), Terminal(ctr.argv("run", "-t", "--rm", *runtime.flags,
                                                 busybox, cid, "sh"),
                                        rows=37, cols=113) as term:
        term.expect(_PROMPT)
        mark = len(term.output)
        term.send(b"%s; echo $((6*7))\r" % _IS_A_TTY)
        term.expect(rb"terminal\r*\n42\r*\n", start=mark)
        until_size(term, 37, 113)
        term.resize(50, 150)
        until_size(term, 50, 150)
        term.send(b"exit 5\r")
        assert term.wait() == 5, term.text
    wait_until(f"{cid} is gone", lambda: cid not in ctr.containers())


def test_exec_with_a_terminal(ctr: cd.Ctr, busybox: str, runtime: Runtime,
                              container_id: Callable[[str], str]) -> None:
    cid = container_id("etty")
    with detached(ctr, runtime, busybox, cid, "sleep", "600"), \
            Terminal(ctr.argv("task", "exec", "-t", "--exec-id", "sh1", cid, "sh"),
                     rows=33, cols=99) as term:
        term.expect(_PROMPT)
        mark = len(term.output)
        term.send(b"%s; echo $((6*7))\r" % _IS_A_TTY)
        term.expect(rb"terminal\r*\n42\r*\n", start=mark)
        until_size(term, 33, 99)
        term.resize(40, 120)
        until_size(term, 40, 120)
        term.send(b"exit 4\r")
        assert term.wait() == 4, term.text
        assert status_of(ctr, cid) == "RUNNING"


@pytest.mark.parametrize("how", ["run", "exec"])
def test_terminal_output_of_a_short_command(ctr: cd.Ctr, busybox: str, runtime: Runtime,
                                            container_id: Callable[[str], str],
                                            how: str) -> None:
    """No input at all: the command's output arrives, ctr sees EOF and returns
    the exit status promptly."""
    cid, script = container_id("tty1"), _IS_A_TTY.decode() + "; echo done; exit 6"
    ctx: AbstractContextManager[object]
    if how == "run":
        argv, ctx = ctr.argv("run", "-t", "--rm", *runtime.flags, busybox, cid,
                             "sh", "-c", script), cleaned_up(ctr, cid)
    else:
        argv = ctr.argv("task", "exec", "-t", "--exec-id", "one", cid, "sh", "-c", script)
        ctx = detached(ctr, runtime, busybox, cid, "sleep", "600")
    with ctx, Terminal(argv) as term:
        started = time.monotonic()
        assert term.wait(timeout=30) == 6, term.text
        # (Not its size: ctr sends the first ResizePty only after Start, so a
        # command this short may still see a 0x0 terminal, with runc too.)
        assert re.search(rb"terminal\r*\ndone\r*\n", term.output), term.text
        assert time.monotonic() - started < 15


# --- pause / resume ----------------------------------------------------------


def test_pause_and_resume(ctr: cd.Ctr, busybox: str, runtime: Runtime,
                          container_id: Callable[[str], str], tmp_path: Path) -> None:
    """A paused task stops running (its counter stops), says PAUSED, refuses a
    second pause and execs; resumed, it runs on. Both steps are published."""
    cid, log = container_id("pause"), tmp_path / "counter.log"
    counter = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done"
    with events(ctr, busybox, container_id("probe")) as recorder, \
            detached(ctr, runtime, busybox, cid, "sh", "-c", counter,
                     flags=("--log-uri", f"file://{log}")):
        wait_until("the counter runs", lambda: log.exists() and log.stat().st_size > 0)
        paused = ctr("task", "pause", cid)
        assert paused.returncode == 0, paused.stderr
        assert status_of(ctr, cid) == "PAUSED"
        time.sleep(0.5)  # what was written just before the pause has reached the log
        size = log.stat().st_size
        time.sleep(1.5)
        assert log.stat().st_size == size, "the paused task still runs"

        again = ctr("task", "pause", cid, timeout=30)
        assert again.returncode != 0
        assert "paused" in again.stderr, again.stderr
        refused = ctr("task", "exec", "--exec-id", "x", cid, "true", timeout=30)
        assert refused.returncode != 0
        assert "paused" in refused.stderr, refused.stderr
        assert status_of(ctr, cid) == "PAUSED"

        resumed = ctr("task", "resume", cid)
        assert resumed.returncode == 0, resumed.stderr
        assert status_of(ctr, cid) == "RUNNING"
        wait_until("the counter runs again", lambda: log.stat().st_size > size + 10, 10)
        assert recorder.wait_for(lambda ln: "/tasks/resumed" in ln and cid in ln)
    topics = [t for t, _ in recorder.of(cid) if t in ("/tasks/paused", "/tasks/resumed")]
    assert topics == ["/tasks/paused", "/tasks/resumed"], recorder.lines


def test_resume_of_a_running_task_fails(ctr: cd.Ctr, busybox: str, runtime: Runtime,
                                        container_id: Callable[[str], str]) -> None:
    cid = container_id("resume")
    with detached(ctr, runtime, busybox, cid, "sleep", "600"):
        out = ctr("task", "resume", cid, timeout=30)
        assert out.returncode != 0
        assert re.search(r"running|not paused", out.stderr), out.stderr
        assert status_of(ctr, cid) == "RUNNING"


# --- pids and metrics --------------------------------------------------------


def test_pids_lists_the_init_and_execs(ctr: cd.Ctr, busybox: str, runtime: Runtime,
                                       container_id: Callable[[str], str]) -> None:
    cid = container_id("pids")
    with detached(ctr, runtime, busybox, cid, "sleep", "600") as pid:
        assert ps_rows(ctr, cid) == [(pid, "-")]
        started = ctr("task", "exec", "-d", "--exec-id", "probe-exec", cid, "sleep", "600",
                      timeout=30)
        assert started.returncode == 0, started.stderr
        wait_until("the exec is listed",
                   lambda: any("probe-exec" in info for _, info in ps_rows(ctr, cid)), 10)
        rows = ps_rows(ctr, cid)
        assert (pid, "-") in rows, rows
        execs = [p for p, info in rows if "probe-exec" in info]
        assert len(execs) == 1 and execs[0] > 0 and execs[0] != pid, rows


def test_metrics_show_real_numbers(ctr: cd.Ctr, busybox: str, runtime: Runtime,
                                   container_id: Callable[[str], str]) -> None:
    """`ctr task metrics` decodes the shim's cgroup v1 Metrics (this host is
    cgroup v1), as a table and as JSON: memory in use, CPU time, processes."""
    cid = container_id("metrics")
    script = "sleep 600 & sleep 600 & sleep 600 & wait"  # 4 processes
    with detached(ctr, runtime, busybox, cid, "sh", "-c", script):
        def pids_current() -> int:
            out = ctr("task", "metrics", "--format", "json", cid, timeout=30)
            assert out.returncode == 0, out.stderr
            return int(json.loads(out.stdout).get("pids", {}).get("current", 0))

        wait_until("all 4 processes are counted", lambda: pids_current() >= 4, 10)
        out = ctr("task", "metrics", "--format", "json", cid, timeout=30)
        metrics = json.loads(out.stdout)
        assert metrics["memory"]["usage"]["usage"] > 0, metrics
        assert metrics["cpu"]["usage"]["total"] > 0, metrics

        table = ctr("task", "metrics", cid, timeout=30)
        assert table.returncode == 0, table.stderr
        rows = dict(line.split(None, 1) for line in table.stdout.splitlines()
                    if line.count(" ") and not line.startswith(("ID", "METRIC", cid)))
        assert int(rows["memory.usage_in_bytes"]) > 0, table.stdout
        assert int(rows["pids.current"]) >= 4, table.stdout
        assert int(rows["cpuacct.usage"]) > 0, table.stdout


def test_metrics_report_the_memory_limit(ctr: cd.Ctr, busybox: str, runtime: Runtime,
                                         container_id: Callable[[str], str]) -> None:
    cid = container_id("memlim")
    with detached(ctr, runtime, busybox, cid, "sleep", "600",
                  flags=("--memory-limit", str(96 * MiB))):
        out = ctr("task", "metrics", "--format", "json", cid, timeout=30)
        assert out.returncode == 0, out.stderr
        memory = json.loads(out.stdout)["memory"]
        assert memory["usage"]["limit"] == 96 * MiB, memory


# --- OOM ---------------------------------------------------------------------


# dd holds one block of bs bytes in memory: far more than the limit.
_HOG = ["dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"]


@pytest.mark.parametrize("who", ["init", "child"])
def test_memory_limit_oom_kill(ctr: cd.Ctr, busybox: str, runtime: Runtime,
                               container_id: Callable[[str], str], who: str) -> None:
    """A container that allocates past --memory-limit is OOM-killed; TaskOOM is
    published before the TaskExit.

    runsc applies the limit to the sandbox's host cgroup, and every page of
    the container is memory of the one sandbox process, so the host's OOM
    killer kills the whole sandbox: even when the hog is only a child, the
    container dies with 137, where under runc only the child dies.
    """
    cid = container_id("oom")
    argv = _HOG if who == "init" else ["sh", "-c", f"{' '.join(_HOG)}; echo survived"]
    with events(ctr, busybox, container_id("probe")) as recorder, cleaned_up(ctr, cid):
        out = ctr("run", "--rm", *runtime.flags, "--memory-limit", str(32 * MiB), busybox,
                  cid, *argv, timeout=60)
        if who == "child" and not runtime.gvisor:
            assert (out.returncode, out.stdout) == (0, "survived\n"), out.stderr
        else:
            assert (out.returncode, out.stdout) == (137, ""), out.stderr
        # (Not /tasks/delete: runc's shim, flooding containerd with one TaskOOM
        # per kill, sometimes exits before it has sent that one.)
        assert recorder.wait_for(lambda ln: "/tasks/exit" in ln and cid in ln)
    got = recorder.of(cid)
    topics = [t for t, _ in got]
    assert "/tasks/oom" in topics, recorder.lines
    assert "/tasks/exit" in topics, recorder.lines
    assert topics.index("/tasks/oom") < topics.index("/tasks/exit"), topics
    exit_event = dict(got)["/tasks/exit"]
    assert exit_event.get("exit_status", 0) == out.returncode, exit_event


def test_oom_kill_under_a_systemd_cgroups_path(ctr: cd.Ctr, busybox: str,
                                               container_id: Callable[[str], str],
                                               gvisorgpu: list[str]) -> None:
    """With the kubelet's systemd cgroup driver containerd writes cgroupsPath as
    slice:prefix:name. runsc without --systemd-cgroup (the only way on cgroup
    v1) makes that string a cgroup below its own, colons and all; the shim
    still finds the sandbox's OOM counter and publishes TaskOOM."""
    cid = container_id("oomsd")
    cgroups_path = f"kubepods-besteffort-pod{os.getpid()}.slice:cri-containerd:{cid}"
    with events(ctr, busybox, container_id("probe")) as recorder, cleaned_up(ctr, cid):
        out = ctr("run", "--rm", *gvisorgpu, "--memory-limit", str(32 * MiB),
                  "--cgroup", cgroups_path, busybox, cid, *_HOG, timeout=60)
        assert (out.returncode, out.stdout) == (137, ""), out.stderr
        assert recorder.wait_for(lambda ln: "/tasks/exit" in ln and cid in ln)
    topics = [t for t, _ in recorder.of(cid)]
    assert "/tasks/oom" in topics, recorder.lines
    assert topics.index("/tasks/oom") < topics.index("/tasks/exit"), topics


# --- checkpoint and update ---------------------------------------------------


_CRIU_TAR = "application/vnd.containerd.container.criu.checkpoint.criu.tar"


def test_checkpoint(ctr: cd.Ctr, busybox: str, runtime: Runtime,
                    container_id: Callable[[str], str]) -> None:
    """`ctr task checkpoint` keeps the task running and stores its state as an
    image: runsc's checkpoint.img for gVisor. runc needs criu, which this host
    may lack; then the error has to say so."""
    cid = container_id("ckpt")
    with detached(ctr, runtime, busybox, cid, "sleep", "600"):
        out = ctr("task", "checkpoint", cid, timeout=120)
        assert status_of(ctr, cid) == "RUNNING"
        if not runtime.gvisor and shutil.which("criu") is None:
            assert out.returncode != 0
            assert "criu" in out.stderr, out.stderr
            return
        assert out.returncode == 0, out.stderr
        name = out.stdout.strip().splitlines()[-1]
        assert name.startswith(f"containerd.io/checkpoint/{cid}:"), out.stdout
        try:
            files = checkpoint_files(ctr, name)
        finally:
            ctr("images", "rm", name)
    assert files and all(size > 0 for size in files.values()), files
    if runtime.gvisor:
        assert "checkpoint.img" in files, files


def checkpoint_files(ctr: cd.Ctr, image: str) -> dict[str, int]:
    """{name: size} of the regular files in the checkpoint tar of `image`."""
    rows = [line.split() for line in ctr.lines("images", "ls")[1:]]
    digest = next(row[2] for row in rows if row[0] == image)
    index = json.loads(ctr("content", "get", digest, check=True).stdout)
    layer = next(m["digest"] for m in index["manifests"] if m["mediaType"] == _CRIU_TAR)
    blob = ctr("content", "get", layer, text=False, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return {m.name: m.size for m in tar.getmembers() if m.isfile()}


_RESOURCES_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"


def update_task(containerd: cd.Containerd, cid: str, resources: dict[str, Any]) -> None:
    """The Update RPC, sent to the task's shim itself: ctr (1.6 to 2.1) has no
    update command, and CRI's UpdateContainerResources needs a kubelet."""
    bundle = (containerd.state / "io.containerd.runtime.v2.task" / containerd.ctr.namespace
              / cid)
    # containerd 2.x records the shim's address and API version in
    # bootstrap.json (only shims of API version 2 also get `address`).
    bootstrap = bundle / "bootstrap.json"
    if bootstrap.exists():
        info = json.loads(bootstrap.read_text())
        address, version = info["address"], int(info.get("version", 2))
    else:
        address, version = (bundle / "address").read_text().strip(), 2
    request = task_api.UpdateTaskRequest(
        id=cid, resources=pb.Any(type_url=_RESOURCES_URL,
                                 value=json.dumps(resources).encode()))

    async def call() -> None:
        async with await Client.connect(address.removeprefix("unix://"), timeout=10) as client:
            await client.call(f"containerd.task.v{version}.Task", "Update", request, pb.Empty,
                              timeout=30,
                              metadata={"containerd-namespace-ttrpc": containerd.ctr.namespace})

    asyncio.run(call())


def test_update_resources(containerd: cd.Containerd, busybox: str, runtime: Runtime,
                          container_id: Callable[[str], str]) -> None:
    """runc applies new limits; runsc has no update command, so the shim must
    answer Unimplemented with a message that says why, and leave the task be."""
    ctr, cid = containerd.ctr, container_id("update")
    with detached(ctr, runtime, busybox, cid, "sleep", "600",
                  flags=("--memory-limit", str(64 * MiB))):
        if not runtime.gvisor:
            update_task(containerd, cid, {"memory": {"limit": 128 * MiB}})
            out = ctr("task", "metrics", "--format", "json", cid, timeout=30)
            assert json.loads(out.stdout)["memory"]["usage"]["limit"] == 128 * MiB
            return
        with pytest.raises(RpcError) as raised:
            update_task(containerd, cid, {"memory": {"limit": 128 * MiB}})
        assert raised.value.code == Code.UNIMPLEMENTED, raised.value
        assert "update" in str(raised.value).lower(), raised.value
        assert status_of(ctr, cid) == "RUNNING"


def test_a_systemd_cgroups_path_lands_in_the_pods_slice(ctr: cd.Ctr, busybox: str,
                                                        container_id: Callable[[str], str],
                                                        gvisorgpu: list[str]) -> None:
    """Where the kubelet's systemd driver made the pod's slice, the sandbox goes
    into it (as the scope prefix-name.scope), not below runsc's own cgroup
    where the pod's limits would not hold."""
    cid = container_id("sdpod")
    pod = f"gvisorgpu{os.getpid()}"
    slice_dirs = [Path("/sys/fs/cgroup", h, f"{pod}.slice", f"{pod}-test.slice")
                  for h in ("memory", "pids", "cpu,cpuacct", "unified")
                  if Path("/sys/fs/cgroup", h).is_dir()]
    for d in slice_dirs:
        d.mkdir(parents=True, exist_ok=True)
    try:
        with cleaned_up(ctr, cid):
            out = ctr("run", "-d", *gvisorgpu, "--cgroup", f"{pod}-test.slice:cri-containerd:{cid}",
                      busybox, cid, "sleep", "60")
            assert out.returncode == 0, out.stderr
            sandbox = ctr.tasks()[cid][0]
            memory = next(ln for ln in Path(f"/proc/{sandbox}/cgroup").read_text().splitlines()
                          if ":memory:" in ln)
            assert memory.endswith(f"/{pod}.slice/{pod}-test.slice/cri-containerd-{cid}.scope")
            ctr("task", "kill", "-s", "SIGKILL", cid)
    finally:
        for d in slice_dirs:
            for leaf in sorted(d.parent.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if leaf.is_dir():
                    leaf.rmdir()
            d.parent.rmdir()
