"""A process's stdio: the fds runsc hands to the container, and the shim's
keep-alive ends.

No copying happens in the shim. runsc donates the fds it was started with to
the sandbox (the root container's stdio at ``runsc create``), so the container
writes straight into containerd's FIFOs — fewer copies than containerd's Go shim,
which pumps every byte through a pipe of its own.

What the shim still holds, and why (shim-protocol.md §6.2-6.4):
- stdout/stderr: a read-only fd on each FIFO that is never read. Without it, a
  client that goes away (``ctr run -d``, a containerd restart) would turn the
  container's next write into EPIPE. It never delays EOF: EOF is about
  writers, and the shim closes its writer copy as soon as runsc has its own.
- stdin: a keep-alive *writer*, so the container does not see EOF before the
  client has opened its end; CloseIO closes it. The container's read end is
  switched back to blocking mode after the non-blocking open.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

from shim.errors import InvalidArgument, Unimplemented, bad_path

__all__ = ["ProcessIO", "StdioPaths", "fifo_path", "opening"]


@dataclass(frozen=True)
class StdioPaths:
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


def fifo_path(uri: str, what: str) -> tuple[str, str]:
    """(scheme, path) for an IO URI; a bare path means a FIFO."""
    if uri.startswith("/"):
        return "fifo", uri
    parsed = urlparse(uri)
    if parsed.scheme in ("fifo", "file") and parsed.path:
        return parsed.scheme, parsed.path
    if parsed.scheme == "binary":
        raise Unimplemented(
            f"{what} {uri!r}: binary:// logging drivers are not supported by this shim; "
            "use FIFOs (ctr's default) or file://"
        )
    raise InvalidArgument(f"{what} {uri!r}: expected an absolute FIFO path, fifo:// or file:// URI")


@contextlib.contextmanager
def opening(what: str, path: str) -> Iterator[None]:
    """A path containerd named that cannot be opened is bad input, not a crash."""
    try:
        yield
    except OSError as e:
        refusal = bad_path(e, f"cannot open {what} {path}")
        if refusal is None:
            raise
        raise refusal from None


def _open_blocking(path: str, flags: int) -> int:
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
    os.set_blocking(fd, True)
    return fd


@dataclass
class ProcessIO:
    """Open fds for one process. ``child`` is what runsc gets as fd 0, 1, 2."""

    paths: StdioPaths
    child: tuple[int, int, int]
    _keep: list[int] = field(default_factory=list)
    _stdin_writer: int | None = None
    _child_closed: bool = False

    @classmethod
    def open(cls, paths: StdioPaths) -> ProcessIO:
        """InvalidArgument naming the stream when one of the paths cannot be opened."""
        opened: list[int] = []
        try:
            return cls._open(paths, opened)
        except BaseException:
            for fd in opened:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise

    @classmethod
    def _open(cls, paths: StdioPaths, opened: list[int]) -> ProcessIO:
        def track(fd: int) -> int:
            opened.append(fd)
            return fd

        null_in = track(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        null_out = track(os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
        keep: list[int] = []
        stdin_fd, writer = null_in, None
        if paths.stdin:
            _, path = fifo_path(paths.stdin, "stdin")
            with opening("stdin", path):
                # Reader first: O_NONBLOCK opens of a FIFO's read end never
                # block, and then the keep-alive writer's open succeeds at once.
                stdin_fd = track(_open_blocking(path, os.O_RDONLY))
                writer = track(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        outs: list[int] = []
        for uri, what in ((paths.stdout, "stdout"), (paths.stderr, "stderr")):
            if not uri or (what == "stderr" and paths.terminal):
                outs.append(null_out)
                continue
            scheme, path = fifo_path(uri, what)
            with opening(what, path):
                if scheme == "file":
                    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                    outs.append(track(os.open(path, flags, 0o644)))
                    continue
                keep.append(track(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)))
                outs.append(track(_open_blocking(path, os.O_WRONLY)))
        io = cls(paths, (stdin_fd, outs[0], outs[1]), keep, writer)
        io._keep.extend([null_in, null_out])
        return io

    def child_spawned(self) -> None:
        """runsc now holds its own copies; drop ours so EOF follows the container."""
        if self._child_closed:
            return
        self._child_closed = True
        for fd in set(self.child):
            if fd not in self._keep:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def close_stdin(self) -> None:
        """CloseIO: the client is done writing; idempotent."""
        if self._stdin_writer is not None:
            with contextlib.suppress(OSError):
                os.close(self._stdin_writer)
            self._stdin_writer = None

    def close(self) -> None:
        self.child_spawned()
        self.close_stdin()
        for fd in self._keep:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._keep.clear()
