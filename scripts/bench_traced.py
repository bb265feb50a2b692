"""The timeline and cpu rows: traced `ctr run --rm … echo` in a daemon of their own.

That daemon finds trace wrappers (bench_trace) first on its PATH, in front of
both shim binaries, and both runtimes run runsc through a trace wrapper. The
wrappers also sort processes into CPU accounting groups:

  ours   our shim's start and delete and all they spawn: its daemons and forkserver
  go     the Go shim's start and delete, and its daemons
  runsc  every runsc call (the sandbox and gofer then go to the container's own
         cgroup, as runsc puts them there)
  watch  the wrappers' watchers, which log when a shim action ends

So a run's CPU for a runtime is the growth of its group, less what each
runsc wrapper used before it left the shim's group (it logs that, from
getrusage). The wrappers are not in the plain daemon, so they cost the other
rows nothing.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench_procs import CpuGroups, Seen
from bench_rows import GO, OURS, Result, Session
from bench_trace import Overhead, Timeline, calibrate, read_log, write_wrapper

from tests import paths
from tests.e2e import containerd as cd

__all__ = ["GROUPS", "TraceSetup", "TracedRows", "prepare"]

GROUPS = ("ours", "go", "runsc", "watch")


@dataclass(frozen=True)
class TraceSetup:
    log: Path
    ours_runsc: Path
    go_runsc: Path
    overhead: Overhead


def prepare(daemon: cd.Containerd, groups: CpuGroups, runsc: Path,
            flags: list[str]) -> TraceSetup:
    """Write the wrappers and put the shim wrappers first on the daemon's PATH
    (before it starts); calibrate what a wrapper costs."""
    for g in GROUPS:
        groups.make(g)
    work = daemon.workdir
    log = work / "trace.log"
    tbin = work / "tbin"
    tbin.mkdir(exist_ok=True)
    to_runsc = groups.procs_file("runsc")
    ours_runsc = write_wrapper(work / "runsc-ours", "run", runsc, log, cgroup=to_runsc)
    go_runsc = write_wrapper(work / "runsc-go", "run", runsc, log, flags=flags, cgroup=to_runsc)
    for name, target, group in (
            (paths.SHIM.name, paths.SHIM, OURS),
            ("containerd-shim-runc-v2", daemon.bindir / "containerd-shim-runc-v2", GO)):
        write_wrapper(tbin / name, "shim", target, log, cgroup=groups.procs_file(group),
                      aux_cgroup=groups.procs_file("watch"))
    daemon.path_dirs.insert(0, tbin)
    overhead = calibrate(work, to_runsc)
    return TraceSetup(log, ours_runsc, go_runsc, overhead)


class TracedRows(Session):
    """Traced runs, alternating the runtimes; each gives a timeline and a CPU sample."""

    def __init__(self, daemon: cd.Containerd, result: Result, runsc: Path, flags: list[str],
                 tag: str, seen: Seen, *, groups: CpuGroups,
                 setup: TraceSetup) -> None:
        super().__init__(daemon, result, runsc, flags, tag, setup.ours_runsc, setup.go_runsc,
                         seen)
        self.groups, self.setup = groups, setup
        self.baseline: dict[str, set[int]] = {OURS: set(), GO: set()}
        self.timelines = {OURS: Timeline(), GO: Timeline()}
        self.wrapper_cpu_ns: list[int] = []

    def run(self, rounds: int) -> None:
        first: dict[str, float] = {}
        for v in (OURS, GO):
            cpu = self.attempt(v, "timeline", partial(self._traced, v, record=False))
            if cpu is not None:
                first[v] = cpu
        self.result.extra["cpu_first_ms"] = first
        self.interleave("cpu", [OURS, GO], rounds, lambda v: self._traced(v, record=True),
                        warm=False)
        self.result.extra["timeline"] = self.timelines
        self.result.extra["overhead"] = self.setup.overhead
        if self.wrapper_cpu_ns:
            self.result.extra["wrapper_cpu_ms"] = (
                sum(self.wrapper_cpu_ns) / len(self.wrapper_cpu_ns) / 1e6)

    def _traced(self, variant: str, record: bool) -> float:
        """One `ctr run --rm … echo`; returns the CPU ms its shim processes used."""
        group = variant
        before = self.groups.usage_ns(group)
        t0 = time.monotonic_ns()
        cid = self.next_id(variant)
        out = self.ctr("run", "--rm", *self.args[variant], self.image_ref, cid, "echo", "hello",
                       timeout=60)
        t_exit = time.monotonic_ns()
        if out.returncode != 0 or out.stdout != "hello\n":
            self.remove([cid])
            raise RuntimeError(f"exit {out.returncode}, stdout {out.stdout!r}, "
                               f"stderr {out.stderr.strip()[-600:]!r}")
        t_quiet = self._settle(group, adopt=not record)
        used = self.groups.usage_ns(group) - before
        calls = [c for c in read_log(self.setup.log)
                 if t0 <= c.begin_ns <= t_quiet or cid in c.argv]
        runsc = [c for c in calls if c.mode == "run"]
        if record:
            self.timelines[variant].add(calls, t0, t_exit)
            self.result.add("runsc-cpu", variant, self.round,
                            sum(c.child_cpu_ns for c in runsc) / 1e6)
            self.wrapper_cpu_ns += [c.own_cpu_ns for c in runsc]
        return (used - sum(c.own_cpu_ns for c in runsc)) / 1e6

    def _settle(self, group: str, adopt: bool, timeout: float = 15.0) -> int:
        """Wait until the run is over: no runsc call or shim action in flight,
        no process of the group beyond its baseline, and its CPU counter still
        for a while. `adopt`: what is left then is the new baseline (a
        forkserver the first run started). Returns when that was (ns)."""
        quiet_for = 0.5 if adopt else 0.15
        deadline = time.monotonic() + timeout
        last: tuple[int, frozenset[int]] | None = None
        since = time.monotonic()
        while time.monotonic() < deadline:
            pids = frozenset(self.groups.pids(group))
            busy = self.groups.pids("runsc") or self.groups.pids("watch") or (
                not adopt and pids - self.baseline[group])
            now = (self.groups.usage_ns(group), pids)
            if busy or now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_for:
                break
            time.sleep(0.02)
        else:
            print(f"  {group}: still busy after {timeout:.0f}s; counting what it used so far",
                  file=sys.stderr)
        if adopt:
            self.baseline[group] = set(self.groups.pids(group))
            self.seen.note(self.baseline[group])
        return time.monotonic_ns()
