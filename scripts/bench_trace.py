"""Trace wrappers for the timeline and CPU rows, and what their log says.

One wrapper program, written out per target with its settings baked in, sits
in front of runsc (for both shims) and in front of each shim binary. It is
Perl because perl-base is on every Debian system and needs no build step; a
Python wrapper would add ~20 ms to every call it traces. What it does cost is
measured (`calibrate`) and printed with the results.

- `run` mode (runsc): moves itself into a cgroup, runs the target as its
  child with fixed extra flags, waits, and logs begin and end
  (CLOCK_MONOTONIC, the clock of Python's time.monotonic), the CPU it used
  itself before it left the cgroup it was started in (getrusage, so the cpu
  row can take exactly that back out of the shim's share) and its child's CPU.
  Signals it gets are passed on to the child.
- `shim` mode (shim binaries): must *exec* the shim, because containerd's
  ppid is what our `start` hands to the forkserver to watch. So it forks a
  watcher first, which holds a pidfd of the wrapper and logs the end when the
  exec'd shim exits; the wrapper moves into the shim's cgroup and execs.

Log lines, tab-separated: mode, pid, begin ns, end ns, wait status, CPU ns
before the move, child CPU ns ("-" where a shim action has none), argv.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Call", "Overhead", "Timeline", "calibrate", "read_log", "write_wrapper"]

# (clock_gettime, getrusage) on x86_64 and aarch64; pidfd_open is 434 on both.
_SYSCALLS = {"x86_64": (228, 98), "aarch64": (113, 165)}
_PIDFD_OPEN = 434

_TEMPLATE = r"""#!/usr/bin/perl
# Trace wrapper written by scripts/bench (see scripts/bench_trace.py).
my $MODE = @MODE@; my $TARGET = @TARGET@; my @FLAGS = (@FLAGS@);
my $LOG = @LOG@; my $CG_SELF = @CG_SELF@; my $CG_AUX = @CG_AUX@;
my @FWD = qw(TERM INT HUP QUIT USR1 USR2);
my $ME = $$;
sub now { my $b = "\0" x 16; syscall(@CLOCK@, 1, $b) == 0 or return -1;
          my ($s, $n) = unpack('q q', $b); return $s * 1000000000 + $n; }
sub cpu { my $b = "\0" x 144; syscall(@RUSAGE@, shift, $b) == 0 or return -1;
          my ($us, $uu, $ss, $su) = unpack('q4', $b);
          return ($us + $ss) * 1000000000 + ($uu + $su) * 1000; }
sub join_cg { my $f = shift;
              if ($f ne '' && open(my $h, '>', $f)) { syswrite($h, "$$\n"); close($h); } }
sub note { if (open(my $h, '>>', $LOG)) {
               syswrite($h, join("\t", $MODE, $ME, @_, @ARGV) . "\n"); close($h); } }
my $t0 = now();
if ($MODE eq 'shim') {
    my $pfd = syscall(@PIDFD_OPEN@, $$, 0);
    my $pid = $pfd >= 0 ? fork() : undef;
    if (defined($pid) && $pid == 0) {
        open(STDIN, '<', '/dev/null'); open(STDOUT, '>', '/dev/null');
        open(STDERR, '>', '/dev/null');
        join_cg($CG_AUX);
        my $rin = ''; vec($rin, $pfd, 1) = 1; select($rin, undef, undef, 300);
        note($t0, now(), '-', '-', '-');
        exit(0);
    }
    join_cg($CG_SELF);
    exec { $TARGET } $TARGET, @ARGV;
    exit(127);
}
join_cg($CG_SELF);
my $pre = cpu(0);
my $pid;
for my $s (@FWD) { $SIG{$s} = sub { kill($s, $pid) if $pid; }; }
$pid = fork();
if (!$pid) {
    $SIG{$_} = 'DEFAULT' for @FWD;
    exec { $TARGET } $TARGET, @FLAGS, @ARGV;
    exit(127);
}
waitpid($pid, 0);
my $st = $?;
note($t0, now(), $st, $pre, cpu(-1));
if ($st & 127) { $SIG{$_} = 'DEFAULT' for @FWD; kill($st & 127, $$); }
exit($st >> 8);
"""


def _perl(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def write_wrapper(path: Path, mode: str, target: Path | str, log: Path, *,
                  flags: Sequence[str] = (), cgroup: str = "", aux_cgroup: str = "") -> Path:
    """Write a wrapper. `cgroup`/`aux_cgroup` are cgroup.procs files ("" for none):
    run mode joins `cgroup`; shim mode execs the shim in `cgroup` and its
    watcher lives in `aux_cgroup`."""
    machine = os.uname().machine
    if machine not in _SYSCALLS:
        raise RuntimeError(f"trace wrapper: no syscall numbers for {machine}; the timeline "
                           "and cpu rows run on x86_64 and aarch64 only (--only to skip them)")
    if mode not in ("run", "shim"):
        raise ValueError(f"trace wrapper mode {mode!r}: use 'run' or 'shim'")
    values = {
        "@MODE@": _perl(mode), "@TARGET@": _perl(str(target)),
        "@FLAGS@": ", ".join(_perl(f) for f in flags), "@LOG@": _perl(str(log)),
        "@CG_SELF@": _perl(cgroup), "@CG_AUX@": _perl(aux_cgroup),
        "@CLOCK@": str(_SYSCALLS[machine][0]), "@RUSAGE@": str(_SYSCALLS[machine][1]),
        "@PIDFD_OPEN@": str(_PIDFD_OPEN),
    }
    text = _TEMPLATE
    for key, value in values.items():
        text = text.replace(key, value)
    path.write_text(text)
    path.chmod(0o755)
    return path


# runsc's subcommands, to find the one in an argv that starts with global flags.
_RUNSC_COMMANDS = frozenset((
    "boot", "checkpoint", "create", "debug", "delete", "do", "events", "exec", "flags", "gofer",
    "help", "install", "kill", "list", "pause", "port-forward", "ps", "restore", "resume", "run",
    "spec", "start", "state", "statefile", "symbolize", "syscalls", "tar", "uninstall", "usage",
    "wait"))
_SHIM_ACTIONS = ("start", "delete")


@dataclass(frozen=True)
class Call:
    """One traced call: `runsc SUBCOMMAND` or `shim ACTION`."""

    mode: str
    pid: int
    begin_ns: int
    end_ns: int
    status: str
    own_cpu_ns: int    # the wrapper's, before it left the caller's cgroup
    child_cpu_ns: int  # runsc's own CPU for this call
    argv: tuple[str, ...]

    @property
    def name(self) -> str:
        if self.mode == "shim":
            action = next((a for a in reversed(self.argv) if a in _SHIM_ACTIONS), "?")
            return f"shim {action}"
        sub = next((a for a in self.argv if a in _RUNSC_COMMANDS), None)
        return f"runsc {sub or ' '.join(self.argv[:1]) or '(no args)'}"


def read_log(path: Path) -> list[Call]:
    calls = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        parts = line.split("\t")
        if len(parts) < 7:
            continue
        try:
            own, child = (0 if x == "-" else int(x) for x in parts[5:7])
            calls.append(Call(parts[0], int(parts[1]), int(parts[2]), int(parts[3]), parts[4],
                              own, child, tuple(parts[7:])))
        except ValueError:
            continue
    return calls


@dataclass
class Run:
    """The calls of one traced `ctr run`, in ms from when ctr was started."""

    events: list[tuple[str, float, float]]
    ctr_exit_ms: float


class Timeline:
    """Traced runs of one runtime; medians of each event's begin and end.

    A call repeated within a run gets `#2`, `#3`… so that runs line up event
    by event even when, say, `runsc state` is called twice.
    """

    def __init__(self) -> None:
        self.runs: list[Run] = []

    def add(self, calls: Sequence[Call], t0_ns: int, ctr_exit_ns: int) -> None:
        seen: dict[str, int] = {}
        events = []
        for c in sorted(calls, key=lambda c: c.begin_ns):
            seen[c.name] = seen.get(c.name, 0) + 1
            label = c.name if seen[c.name] == 1 else f"{c.name} #{seen[c.name]}"
            events.append((label, (c.begin_ns - t0_ns) / 1e6, (c.end_ns - t0_ns) / 1e6))
        self.runs.append(Run(events, (ctr_exit_ns - t0_ns) / 1e6))

    def rows(self) -> dict[str, tuple[float, float, int]]:
        """label -> (median begin ms, median end ms, runs that had it)."""
        by_label: dict[str, list[tuple[float, float]]] = {}
        for run in self.runs:
            for label, b, e in run.events:
                by_label.setdefault(label, []).append((b, e))
        return {label: (statistics.median(b for b, _ in xs), statistics.median(e for _, e in xs),
                        len(xs)) for label, xs in by_label.items()}

    def ctr_exit_ms(self) -> float | None:
        xs = [r.ctr_exit_ms for r in self.runs]
        return statistics.median(xs) if xs else None

    def tail_ms(self) -> float | None:
        """Median time from the end of the last runsc call before ctr returned to its return."""
        xs = []
        for r in self.runs:
            ends = [e for label, _, e in r.events
                    if label.startswith("runsc ") and e <= r.ctr_exit_ms]
            if ends:
                xs.append(r.ctr_exit_ms - max(ends))
        return statistics.median(xs) if xs else None

    def as_dict(self) -> dict[str, object]:
        return {"runs": [{"events": r.events, "ctr_exit_ms": r.ctr_exit_ms} for r in self.runs],
                "median": {k: {"begin_ms": b, "end_ms": e, "runs": n}
                           for k, (b, e, n) in self.rows().items()},
                "ctr_exit_ms": self.ctr_exit_ms(),
                "last_runsc_to_ctr_exit_ms": self.tail_ms()}


@dataclass(frozen=True)
class Overhead:
    """Extra wall time per traced call, against the target alone."""

    run_ms: float   # a runsc call
    shim_ms: float  # before a shim action starts


def calibrate(workdir: Path, cgroup_procs: str, rounds: int = 20) -> Overhead:
    """Time both wrappers around /bin/true against /bin/true alone,
    interleaved, moving into `cgroup_procs` as the real ones move."""
    log = workdir / "calibrate.log"
    true = "/bin/true"
    run = write_wrapper(workdir / "cal-run", "run", true, log, cgroup=cgroup_procs)
    shim = write_wrapper(workdir / "cal-shim", "shim", true, log, cgroup=cgroup_procs,
                         aux_cgroup=cgroup_procs)

    def wall(argv: list[str]) -> float:
        t0 = time.monotonic()
        subprocess.run(argv, check=True, timeout=30)
        return time.monotonic() - t0

    plain, traced, shimmed = [], [], []
    for _ in range(rounds):
        plain.append(wall([true]))
        traced.append(wall([str(run)]))
        shimmed.append(wall([str(shim)]))
    base = statistics.median(plain)
    return Overhead(run_ms=(statistics.median(traced) - base) * 1e3,
                    shim_ms=(statistics.median(shimmed) - base) * 1e3)
