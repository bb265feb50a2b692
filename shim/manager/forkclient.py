"""The ``start`` side of the forkserver (see ``shim.manager.forkserver``): find it, ask
it for a daemon, or launch it. Only light modules: ``start`` imports this on
containerd's critical path."""

from __future__ import annotations

import os
import sys
from _socket import SOCK_SEQPACKET

from shim.manager.address import send_fds, sha256_hex, unix_socket

TYPE_CHECKING = False  # True for type checkers; `typing` costs ~5 ms at runtime
if TYPE_CHECKING:
    from typing import Any

__all__ = ["forkserver_path", "request_daemon", "spawn_forkserver"]

_REQUEST_TIMEOUT = 2.0
_FORK_TIMEOUT = 10.0


def _code_stamp() -> str:
    parts = [sys.executable]
    # The whole `shim` package: a daemon forked from old code must never serve.
    stack = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_dir() and entry.name != "__pycache__":
                    stack.append(entry.path)
                elif entry.name.endswith(".py"):
                    parts.append(f"{entry.path}:{entry.stat().st_mtime_ns}")
    return sha256_hex("\n".join(parts).encode())[:16]


def forkserver_path(socket_dir: str, address: str) -> str:
    key = sha256_hex(f"{address}|{_code_stamp()}".encode())[:32]
    return os.path.join(socket_dir, f"gvisorgpu-fs-{key}")


def request_daemon(path: str, params: dict[str, Any], listen_fd: int, log_fd: int) -> bool:
    """Ask a running forkserver for a daemon; False if there is none, it
    failed, or it did not answer in time: then the caller forks its own, and
    the forkserver (never told ``go``) forks nothing."""
    s = unix_socket(SOCK_SEQPACKET)
    try:
        s.settimeout(_REQUEST_TIMEOUT)
        s.connect(path)
        # repr() of plain str/bool/dict values: no json import on this path;
        # the server reads it back with ast.literal_eval.
        send_fds(s, repr(params).encode(), [listen_fd] + ([log_fd] if log_fd >= 0 else []))
        if s.recv(256) != b"ok":
            return False
        s.sendall(b"go")
        # Committed: the server forks as soon as it reads "go". Nothing but
        # a forkserver dying in that instant ends this without "forked".
        s.settimeout(_FORK_TIMEOUT)
        return s.recv(16) == b"forked"
    except OSError:
        return False
    finally:
        s.close()


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
