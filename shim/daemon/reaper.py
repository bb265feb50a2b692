"""The daemon's one child reaper.

The shim is a child subreaper (PR_SET_CHILD_SUBREAPER), so besides the runsc
commands it starts it also inherits runsc's sandbox and gofer processes when
their parent exits. One SIGCHLD handler calls ``waitpid(-1, WNOHANG)`` until
nothing is left, and hands each exit to whoever watches that pid.

Everything the daemon runs must go through :meth:`Reaper.spawn` or
:meth:`Reaper.run`. Mixing in ``subprocess.Popen.wait()`` or asyncio's child
watchers would race this loop: whichever loses gets ECHILD, which
``subprocess`` reports as exit code 0 (shim-protocol.md §7 pitfall 9).

Ordering: SIGCHLD is delivered through ``loop.add_signal_handler``, so reaping
runs as a loop callback. ``spawn`` forks and registers the pid in the same
synchronous step, hence no exit can be reaped between the two.

One instance is made by whoever owns the event loop (the daemon, a command,
a test) and passed to what needs it; there is no module-level reaper.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import tempfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

__all__ = ["Completed", "Reaper", "exit_code"]

_PR_SET_CHILD_SUBREAPER = 36
# Exits nobody asked for (orphaned sandboxes) are kept briefly in case a
# watcher arrives late; the cap keeps a long-lived shim from growing.
_UNCLAIMED_LIMIT = 256


def exit_code(status: int) -> int:
    """A wait status as containerd reports it: the code, or 128+signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 255


@dataclass(frozen=True)
class Completed:
    """A finished command. ``returncode`` is None when it was killed after its
    time-out; ``stdout``/``stderr`` are empty when they went somewhere else."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: bytes
    stderr: bytes


StdioArg = int | IO[bytes] | None


class Reaper:
    """Owns ``waitpid(-1)`` for the process while installed on an event loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        # pid -> future resolved with the exit code; touched only on the loop.
        self._watchers: dict[int, asyncio.Future[int]] = {}
        self._unclaimed: OrderedDict[int, int] = OrderedDict()

    def install(self, loop: asyncio.AbstractEventLoop, *, subreaper: bool = True) -> None:
        self._loop = loop
        if subreaper:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self.reap()

    def uninstall(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGCHLD)
            self._loop = None

    def watch(self, pid: int) -> asyncio.Future[int]:
        """A future for ``pid``'s exit code; resolves at once if already reaped."""
        assert self._loop is not None, "reaper not installed"
        fut = self._watchers.get(pid)
        if fut is None:
            fut = self._loop.create_future()
            if pid in self._unclaimed:
                fut.set_result(self._unclaimed.pop(pid))
            else:
                self._watchers[pid] = fut
        return fut

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = exit_code(status)
            fut = self._watchers.pop(pid, None)
            if fut is not None:
                if not fut.done():
                    fut.set_result(code)
            else:
                self._unclaimed[pid] = code
                while len(self._unclaimed) > _UNCLAIMED_LIMIT:
                    self._unclaimed.popitem(last=False)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        stdin: StdioArg = subprocess.DEVNULL,
        stdout: StdioArg = subprocess.DEVNULL,
        stderr: StdioArg = subprocess.DEVNULL,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        pass_fds: Sequence[int] = (),
        start_new_session: bool = False,
    ) -> tuple[int, asyncio.Future[int]]:
        """Start ``argv``; return its pid and a future for its exit code."""
        proc = subprocess.Popen(
            list(argv), stdin=stdin, stdout=stdout, stderr=stderr,
            env=dict(env) if env is not None else None, cwd=cwd, pass_fds=tuple(pass_fds),
            start_new_session=start_new_session, close_fds=True,
        )
        # Popen must never wait() on this child: the reaper owns it.
        proc.returncode = 0
        return proc.pid, self.watch(proc.pid)

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: StdioArg = subprocess.DEVNULL,
        stdout: StdioArg = None,
        stderr: StdioArg = None,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Completed:
        """Run ``argv`` to completion; capture stdout/stderr where not given.

        Output goes through unlinked temporary files rather than pipes: no
        reader task is needed, and a child that leaves a grandchild holding the
        pipe open (``runsc create`` forks the sandbox) cannot stall us. The
        child is killed when ``timeout`` passes (``returncode`` None) and when
        the caller is cancelled (which matters for a long ``runsc wait``).
        """
        with (
            tempfile.TemporaryFile() as out,
            tempfile.TemporaryFile() as err,
            contextlib.ExitStack() as stack,
        ):
            if input is not None:
                src = stack.enter_context(tempfile.TemporaryFile())
                src.write(input)
                src.seek(0)
                stdin = src
            pid, done = self.spawn(argv, stdin=stdin, stdout=out if stdout is None else stdout,
                                   stderr=err if stderr is None else stderr, env=env)
            code: int | None
            try:
                code = await asyncio.wait_for(asyncio.shield(done), timeout)
            except (TimeoutError, asyncio.CancelledError) as exc:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if not isinstance(exc, TimeoutError):
                    raise
                await done
                code = None
            out.seek(0)
            err.seek(0)
            return Completed(tuple(argv), code, out.read(), err.read())
