"""Which processes are a shim's, what memory they hold, and CPU by cgroup.

Shim processes are found through the task's records, not by name: each
task's bundle names the unix socket containerd dials (`bootstrap.json`,
written by containerd 2.x; `address`, written by the shim for 1.x), and the
processes listening on that socket are the shim serving the task (plus its
descendants, less runsc's sandbox and gofer). A process listening in the shim
socket directory that serves no task of ours but belongs to our daemon is a
shared shim process (our forkserver). It belongs to our daemon if it carries
the daemon's address (in the TTRPC_ADDRESS/GRPC_ADDRESS containerd hands to
shims, or in its command line), or if it is the parent of one of our tasks'
shim processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["CpuGroups", "Mem", "Seen", "ShimProcs", "find_shim_procs", "memory"]

# containerd's Go shims (and ours) keep their sockets here whatever the state dir.
SOCKET_DIR = "/run/containerd/s"
_TASK_DIR = "io.containerd.runtime.v2.task"


@dataclass(frozen=True)
class Mem:
    pid: int
    rss: int
    pss: int
    uss: int

    def as_dict(self) -> dict[str, float]:
        mib = 2**20
        return {"pid": self.pid, "rss_mib": self.rss / mib, "pss_mib": self.pss / mib,
                "uss_mib": self.uss / mib}


@dataclass
class ShimProcs:
    tasks: dict[str, set[int]]  # container id -> pids serving it
    shared: set[int]            # serve the daemon, not one task (a forkserver)

    def all(self) -> set[int]:
        return self.shared.union(*self.tasks.values())


def task_socket(state_dir: Path, namespace: str, cid: str) -> str:
    bundle = state_dir / _TASK_DIR / namespace / cid
    try:
        address = str(json.loads((bundle / "bootstrap.json").read_text())["address"])
    except FileNotFoundError:
        address = (bundle / "address").read_text().strip()
    return address.removeprefix("unix://")


def _listeners() -> dict[str, set[int]]:
    """Socket path -> pids holding a socket bound to it (listening or accepted)."""
    found: dict[str, set[int]] = {}
    for c in psutil.net_connections("unix"):
        if isinstance(c.laddr, str) and c.laddr and c.pid:
            found.setdefault(c.laddr, set()).add(c.pid)
    return found


def _without_runsc(roots: Iterable[int], runsc: Path) -> set[int]:
    """`roots` and their descendants, pruning every subtree that runs runsc."""
    runsc_real = os.path.realpath(runsc)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        try:
            proc = psutil.Process(pid)
            if os.path.realpath(proc.exe()) == runsc_real:
                continue
            found.add(pid)
            todo.extend(c.pid for c in proc.children())
        except psutil.Error:
            continue
    return found


def _serves(pid: int, addresses: set[str], parents: set[int]) -> bool:
    if pid in parents:
        return True
    proc = psutil.Process(pid)
    env = proc.environ()
    # Split the joined words: a process that rewrote its title may hold
    # its whole command line in argv[0].
    words = set(" ".join(proc.cmdline()).split())
    return bool(addresses & ({env.get("TTRPC_ADDRESS"), env.get("GRPC_ADDRESS")} | words))


def find_shim_procs(state_dir: Path, namespace: str, cids: Iterable[str],
                    addresses: set[str], runsc: Path) -> ShimProcs:
    """`addresses`: the daemon's gRPC and ttrpc socket paths."""
    listeners = _listeners()
    tasks: dict[str, set[int]] = {}
    task_paths = set()
    for cid in cids:
        path = task_socket(state_dir, namespace, cid)
        task_paths.add(path)
        tasks[cid] = _without_runsc(listeners.get(path, set()), runsc)
    serving = set().union(*tasks.values()) if tasks else set()
    parents = set()
    for pid in serving:
        with contextlib.suppress(psutil.Error):
            parents.add(psutil.Process(pid).ppid())
    shared: set[int] = set()
    for path, pids in listeners.items():
        if os.path.dirname(path) != SOCKET_DIR or path in task_paths:
            continue
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                if _serves(pid, addresses, parents):
                    shared.add(pid)
    return ShimProcs(tasks, shared - serving)


class Seen:
    """Shim processes (and the sockets they listen on) met during a run:
    none may be left once the daemon is gone."""

    def __init__(self) -> None:
        self.pids: dict[int, float] = {}  # pid -> create time, against pid reuse
        self.sockets: set[str] = set()

    def note(self, pids: Iterable[int]) -> None:
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                self.pids.setdefault(pid, proc.create_time())
                paths = {str(c.laddr) for c in proc.net_connections("unix")
                         if isinstance(c.laddr, str)}
                self.sockets |= {p for p in paths if os.path.dirname(p) == SOCKET_DIR}

    def alive(self) -> list[psutil.Process]:
        found = []
        for pid, created in self.pids.items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        return found


def memory(pids: Iterable[int]) -> list[Mem]:
    out = []
    for pid in sorted(pids):
        with contextlib.suppress(psutil.Error):
            m = psutil.Process(pid).memory_full_info()
            out.append(Mem(pid, m.rss, m.pss, m.uss))
    return out


class CpuGroups:
    """CPU accounting groups under one parent that this process owns.

    cgroup v1 `cpuacct` where it is mounted on its own or with `cpu`,
    otherwise cgroup v2. Only accounting is wanted; in v1 a group that is also
    a `cpu` group gets the default weight, like a sibling at the top.
    """

    def __init__(self, name: str) -> None:
        v1, v2 = Path("/sys/fs/cgroup/cpuacct"), Path("/sys/fs/cgroup")
        if (v1 / "cpuacct.usage").exists():
            self.version, base = 1, v1
        elif (v2 / "cgroup.controllers").exists():
            self.version, base = 2, v2
        else:
            raise RuntimeError("no CPU accounting: neither a cgroup v1 cpuacct hierarchy at "
                               f"{v1} nor cgroup v2 at {v2}")
        self.parent = base / name
        self.children: list[str] = []

    def make(self, child: str) -> None:
        (self.parent / child).mkdir(parents=True)
        self.children.append(child)

    def procs_file(self, child: str) -> str:
        return str(self.parent / child / "cgroup.procs")

    def pids(self, child: str) -> set[int]:
        try:
            return {int(x) for x in Path(self.procs_file(child)).read_text().split()}
        except OSError:
            return set()

    def usage_ns(self, child: str) -> int:
        d = self.parent / child
        if self.version == 1:
            return int((d / "cpuacct.usage").read_text())
        return self._v2_stat(d)["usage_usec"] * 1000

    @staticmethod
    def _v2_stat(d: Path) -> dict[str, int]:
        rows = (line.split() for line in (d / "cpu.stat").read_text().splitlines())
        return {r[0]: int(r[1]) for r in rows if len(r) == 2}

    def remove(self, timeout: float = 10.0) -> list[str]:
        """rmdir every group (they must be empty: processes in them exit first)."""
        left = []
        for d in [*(self.parent / c for c in reversed(self.children)), self.parent]:
            deadline = time.monotonic() + timeout
            while d.exists():
                try:
                    d.rmdir()
                except OSError as e:
                    if time.monotonic() >= deadline:
                        left.append(f"cgroup {d}: {e.strerror}")
                        break
                    time.sleep(0.1)
        return left
