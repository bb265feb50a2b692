"""Terminals: the pty master runsc hands over, and the copies to the FIFOs.

runsc allocates the pty itself and sends its master over ``--console-socket``
(SCM_RIGHTS) during ``create`` (init) or ``exec``. The socket is served on the
event loop, so giving up on it (runsc failed) cancels cleanly and a master
that arrives too late is closed, not leaked.

The shim then copies stdin FIFO → master and master → stdout FIFO, and
applies ResizePty to the master. The copies are two threads doing blocking
IO: a pty and a FIFO each block on their own, and a thread per direction keeps
the event loop free of both without a hand-made buffer. Each pump works on
its own duplicate of the master, so no lock is held across a write that may
block (a process that stops reading its terminal must not stall ResizePty or
CloseIO on the event loop). When the process exits the slave side closes,
reading the master fails with EIO, and closing the stdout writer then gives
the client its EOF (shim-protocol.md §6.5).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import tempfile
import termios
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from shim.task.stdio import StdioPaths, fifo_path, opening

__all__ = ["ConsoleIO", "ConsoleSocket", "with_console"]

# runsc hands the pty master over before `create`/`exec` returns; a bound in
# case it never does.
_CONSOLE_WAIT = 10.0

_CHUNK = 32 * 1024


class ConsoleSocket:
    """A listening socket in a short private directory (sun_path is 108 bytes;
    bundle paths under /run/containerd are already close to that)."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="gvisorgpu-pty-")
        self.path = os.path.join(self._dir, "console.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.setblocking(False)
        self._sock.bind(self.path)
        self._sock.listen(1)

    async def receive_master(self) -> int:
        """Wait for runsc to connect and send the pty master; cancellable."""
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self._sock)
        with conn:
            conn.setblocking(False)
            received: asyncio.Future[list[int]] = loop.create_future()

            def readable() -> None:
                error: OSError | None = None
                try:
                    fds = _recv_fds(conn)
                except BlockingIOError:
                    return
                except OSError as e:
                    fds, error = [], e
                loop.remove_reader(conn.fileno())
                if received.done():  # we stopped waiting: nobody will close them
                    for fd in fds:
                        os.close(fd)
                elif error is not None:
                    received.set_exception(error)
                else:
                    received.set_result(fds)

            loop.add_reader(conn.fileno(), readable)
            try:
                fds = await received
            finally:
                loop.remove_reader(conn.fileno())
        if not fds:
            raise OSError("runsc connected to the console socket but sent no terminal")
        for extra in fds[1:]:
            os.close(extra)
        return fds[0]

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)


def _recv_fds(conn: socket.socket) -> list[int]:
    fds = array.array("i")
    _, ancdata, _, _ = conn.recvmsg(1024, socket.CMSG_SPACE(16 * fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return list(fds)


class ConsoleIO:
    """The shim's side of a process with a terminal. Same face as ProcessIO."""

    def __init__(self, paths: StdioPaths, master: int) -> None:
        self.paths = paths
        self.master = master
        self._stdin: int | None = None
        self._stdin_writer: int | None = None
        self._stdout: int | None = None
        self._stdout_keep: int | None = None
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._open_fifos(paths)
        except BaseException:
            for fd in (self._stdin, self._stdin_writer, self._stdout_keep, self._stdout):
                if fd is not None:
                    os.close(fd)
            raise
        self._threads = [threading.Thread(target=self._pump_out, args=(os.dup(master),),
                                          daemon=True)]
        if self._stdin is not None:
            self._threads.append(threading.Thread(target=self._pump_in, args=(os.dup(master),),
                                                  daemon=True))
        for t in self._threads:
            t.start()

    def _open_fifos(self, paths: StdioPaths) -> None:
        if paths.stdin:
            _, path = fifo_path(paths.stdin, "stdin")
            with opening("stdin", path):
                self._stdin = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                self._stdin_writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.set_blocking(self._stdin, True)
        if paths.stdout:
            _, path = fifo_path(paths.stdout, "stdout")
            with opening("stdout", path):
                self._stdout_keep = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                self._stdout = os.open(path, os.O_WRONLY | os.O_CLOEXEC)

    def resize(self, width: int, height: int) -> bool:
        """False once the terminal is closed. The master's fd number is only
        used under the lock while it is open: after close the number may
        already name another container's file."""
        with self._lock:
            if self.master < 0:
                return False
            fcntl.ioctl(self.master, termios.TIOCSWINSZ,
                        struct.pack("HHHH", height, width, 0, 0))
            return True

    def _pump_out(self, master: int) -> None:
        stdout = self._stdout
        try:
            while chunk := os.read(master, _CHUNK):
                if stdout is not None:
                    os.write(stdout, chunk)
        except OSError:
            pass  # EIO: the slave side is gone, the process has exited
        finally:
            os.close(master)
            with self._lock:
                if self._stdout is not None:
                    os.close(self._stdout)
                    self._stdout = None

    def _pump_in(self, master: int) -> None:
        assert self._stdin is not None
        with contextlib.suppress(OSError):
            while chunk := os.read(self._stdin, _CHUNK):
                os.write(master, chunk)
        # EOF: the client closed its end and CloseIO dropped our keep-alive;
        # or EIO: the process is gone.
        os.close(master)
        with contextlib.suppress(OSError):
            os.close(self._stdin)

    def child_spawned(self) -> None:
        """Nothing to drop: runsc never had our FIFO fds."""

    def close_stdin(self) -> None:
        with self._lock:
            if self._stdin_writer is not None:
                os.close(self._stdin_writer)
                self._stdin_writer = None

    def close(self) -> None:
        """The process has exited. The output pump drains what the terminal
        still holds and then closes the stdout writer itself (that is the
        client's EOF); here the shim lets go of its own ends."""
        self.close_stdin()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for fd in (self._stdout_keep, self.master):
                if fd is not None and fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._stdout_keep = None
            self.master = -1


async def with_console(stdio: StdioPaths, run: Callable[[str], Awaitable[Any]]) -> ConsoleIO:
    """Run a runsc command (given the console socket's path) that sends a pty
    master; the terminal's IO. A master that arrives when the command failed
    is closed, never leaked."""
    console = ConsoleSocket()
    # Accepting runs beside the runsc command, which connects while it runs.
    master = asyncio.ensure_future(console.receive_master())
    try:
        await run(console.path)
        fd = await asyncio.wait_for(master, _CONSOLE_WAIT)
    except BaseException:
        if master.done() and not master.cancelled() and master.exception() is None:
            os.close(master.result())
        master.cancel()
        raise
    finally:
        console.close()
    try:
        return ConsoleIO(stdio, fd)
    except BaseException:
        os.close(fd)
        raise
