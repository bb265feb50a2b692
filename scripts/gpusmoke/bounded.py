"""Every outside command of the smoke run, bounded: a hung runsc, nvidia-smi or
containerd costs at most its timeout, and the run as a whole keeps to a time
budget, with a reserve for the cleanup that must always happen."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Budget", "Outcome", "run"]

_DRAIN_TIMEOUT = 5.0


@dataclass
class Outcome:
    """What a command did. ``returncode`` is None when it was killed at its timeout."""

    argv: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def text(self) -> str:
        return self.stdout + self.stderr

    def why(self) -> str:
        """One line for a failed command."""
        if self.timed_out:
            return f"no result after {self.seconds:.0f} s (killed)"
        last = (self.stderr.strip() or self.stdout.strip() or "no output").splitlines()[-1]
        return f"exited {self.returncode}: {last}"


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def run(argv: Sequence[str], timeout: float, *, env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None) -> Outcome:
    """Run to completion in a new session; at the timeout the whole process
    group is killed. A missing binary reads as exit 127, like a shell."""
    args, start = [str(a) for a in argv], time.monotonic()
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace",
                                start_new_session=True, cwd=cwd,
                                env=dict(env) if env is not None else None)
    except OSError as e:
        return Outcome(args, 127, "", str(e))
    try:
        out, err = proc.communicate(timeout=max(timeout, 0.1))
        return Outcome(args, proc.returncode, out, err, False, time.monotonic() - start)
    except subprocess.TimeoutExpired as first:
        _kill_group(proc)
        try:
            out, err = proc.communicate(timeout=_DRAIN_TIMEOUT)
        except subprocess.TimeoutExpired:
            # Something that left the group (a sandbox) still holds the pipes.
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait()
            out, err = _text(first.output), _text(first.stderr)
        return Outcome(args, None, out, err, True, time.monotonic() - start)
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise


class Budget:
    """Seconds left for the run's steps, keeping ``reserve`` seconds back for
    cleanup and the log bundle."""

    def __init__(self, seconds: float, reserve: float) -> None:
        self.seconds, self.reserve = seconds, reserve
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - self.reserve - time.monotonic())

    def cap(self, seconds: float) -> float:
        """A step's timeout: its own limit, or what is left, whichever is less."""
        return max(1.0, min(seconds, self.left()))

    def spent(self, need: float = 5.0) -> bool:
        return self.left() < need
