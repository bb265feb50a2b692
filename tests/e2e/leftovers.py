"""What a finished e2e test must not leave behind, and how to clear it.

A test passes only if, after a short grace period, there is no runsc state
under the runsc root it used, nothing mounted under the session's temp dir,
and no shim or runsc process of this session still running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import psutil

from tests import paths

_MARKERS = ("containerd-shim", "runsc", "shim.manager")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(path: Path, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points at or below `path`, deepest first."""
    prefix = str(path).rstrip("/")
    found = []
    with open(mountinfo) as f:
        for line in f:
            point = _unescape(line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def runsc_state(root: Path) -> list[str]:
    """Files under a runsc root; runsc removes a container's files on delete."""
    if not root.exists():
        return []
    return sorted(str(p) for p in root.rglob("*") if not p.is_dir())


def _words(cmdline: list[str]) -> list[str]:
    # A process that set its title (the shim's daemons and forkserver) shows
    # one argument with spaces, padded with empty ones.
    return " ".join(a for a in cmdline if a).split()


def _is_runtime_process(cmdline: list[str]) -> bool:
    words = _words(cmdline)
    if is_forkserver(cmdline):
        return False  # lives as long as its containerd, by design
    # Three words: the installed launcher runs `python3 -IS <shim> ...`.
    heads = " ".join(os.path.basename(a) for a in words[:3])
    return any(m in heads for m in _MARKERS)


def is_forkserver(cmdline: list[str]) -> bool:
    """The shim's forkserver: `containerd-shim-gvisorgpu-v1 forkserver -address …`."""
    words = _words(cmdline)
    return len(words) > 1 and words[0].endswith("containerd-shim-gvisorgpu-v1") \
        and words[1] == "forkserver"


def session_processes(workdir: Path, daemon_pid: int | None = None) -> list[psutil.Process]:
    """Shim and runsc processes of this test session.

    They are recognised by their command (shim, runsc, runsc-sandbox,
    runsc-gofer) together with a tie to this session: the temp dir in their
    argv, environment or working directory, or our containerd as an ancestor
    (shims detach from containerd, so the first three are what usually matches).
    """
    mark, me = str(workdir), os.getpid()
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if proc.pid in (me, daemon_pid):
                continue
            if not _is_runtime_process(cmdline):
                continue
            ours = any(mark in a for a in cmdline)
            ours = ours or daemon_pid in {p.pid for p in proc.parents()}
            ours = ours or proc.cwd().startswith(mark)
            ours = ours or any(mark in v for v in proc.environ().values())
            if ours:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def find(workdir: Path, runsc_root: Path, daemon_pid: int | None = None) -> list[str]:
    items = [f"runsc state: {p}" for p in runsc_state(runsc_root)]
    items += [f"mount: {m}" for m in mounts_under(workdir)]
    for proc in session_processes(workdir, daemon_pid):
        with contextlib.suppress(psutil.Error):
            items.append(f"process {proc.pid}: {' '.join(proc.cmdline())[:300]}")
    return items


def wait_clean(workdir: Path, runsc_root: Path, daemon_pid: int | None = None,
              grace: float = 5.0) -> list[str]:
    """What remains after `grace` seconds (shims and sandboxes exit asynchronously)."""
    deadline = time.monotonic() + grace
    while True:
        items = find(workdir, runsc_root, daemon_pid)
        if not items or time.monotonic() >= deadline:
            return items
        time.sleep(0.1)


def kill_processes(workdir: Path, daemon_pid: int | None = None) -> None:
    """SIGKILL this session's shim/runsc processes (never anyone else's)."""
    procs = session_processes(workdir, daemon_pid)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)


def clean(workdir: Path, runsc_root: Path, daemon_pid: int | None = None) -> None:
    """Best effort: make the next test start clean after a failed one."""
    kill_processes(workdir, daemon_pid)
    runsc = paths.RUNSC_2024 or paths.RUNSC_2022
    roots = {Path(state).parent for state in runsc_state(runsc_root)}
    for root in sorted(roots) if runsc is not None else []:
        listed = subprocess.run([str(runsc), "--root", str(root), "list", "-quiet"],
                                capture_output=True, text=True, timeout=30, check=False)
        for cid in listed.stdout.split():
            subprocess.run([str(runsc), "--root", str(root), "delete", "-force", cid],
                           capture_output=True, timeout=30, check=False)
    for point in mounts_under(workdir):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30, check=False)
    for state in runsc_state(runsc_root):
        with contextlib.suppress(OSError):
            os.unlink(state)


def remove_tree(path: Path) -> None:
    """rm -rf, but only once nothing is mounted below (never delete through a mount)."""
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30, check=False)
    still = mounts_under(path)
    if still:
        raise RuntimeError(f"not removing {path}: still mounted: {still}")
    shutil.rmtree(path, ignore_errors=True)
