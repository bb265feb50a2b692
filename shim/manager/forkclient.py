"""The ``start`` side of the forkserver (see ``shim.manager.forkserver``): find it, ask
it for a daemon, or launch it. Only light modules: ``start`` imports this on
containerd's critical path."""

from __future__ import annotations

import hashlib
import os
import socket
import sys

TYPE_CHECKING = False  # True for type checkers; `typing` costs ~5 ms at runtime
if TYPE_CHECKING:
    from typing import Any

__all__ = ["forkserver_path", "request_daemon", "spawn_forkserver"]

_REQUEST_TIMEOUT = 2.0
_FORK_TIMEOUT = 10.0


def _code_stamp() -> str:
    h = hashlib.sha256(sys.executable.encode())
    # The whole `shim` package: a daemon forked from old code must never serve.
    stack = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_dir() and entry.name != "__pycache__":
                    stack.append(entry.path)
                elif entry.name.endswith(".py"):
                    h.update(f"{entry.path}:{entry.stat().st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def forkserver_path(socket_dir: str, address: str) -> str:
    key = hashlib.sha256(f"{address}|{_code_stamp()}".encode()).hexdigest()[:32]
    return os.path.join(socket_dir, f"gvisorgpu-fs-{key}")


def request_daemon(path: str, params: dict[str, Any], listen_fd: int, log_fd: int) -> bool:
    """Ask a running forkserver for a daemon; False if there is none, it
    failed, or it did not answer in time: then the caller forks its own, and
    the forkserver (never told ``go``) forks nothing."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(_REQUEST_TIMEOUT)
            s.connect(path)
            fds = [listen_fd] + ([log_fd] if log_fd >= 0 else [])
            # repr() of plain str/bool/dict values: no json import on this path;
            # the server reads it back with ast.literal_eval.
            socket.send_fds(s, [repr(params).encode()], fds)
            if s.recv(256) != b"ok":
                return False
            s.sendall(b"go")
            # Committed: the server forks as soon as it reads "go". Nothing but
            # a forkserver dying in that instant ends this without "forked".
            s.settimeout(_FORK_TIMEOUT)
            return s.recv(16) == b"forked"
    except OSError:
        return False


def spawn_forkserver(path: str, address: str, containerd_pid: int) -> None:
    """Start one in the background (detached, nothing inherited); never waits."""
    import contextlib
    import subprocess

    with contextlib.suppress(OSError):
        subprocess.Popen(
            [sys.executable, "-m", "shim.manager.forkserver", path, address, str(containerd_pid)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True, cwd="/",
        )
