"""A warm parent for shim daemons, one per containerd.

Why: containerd waits for ``start`` and then for the daemon to answer Create.
A fresh Python daemon spends ~200 ms importing asyncio, betterproto and the
generated API before it can answer; containerd's Go shim pays nothing like it.
So the first ``start`` for a containerd also launches this process, which
imports everything once and then waits. Every later ``start`` hands it the
listening socket (SCM_RIGHTS) and it forks a daemon that is ready at once.

Lifetime: it exits when the containerd that started it exits (a pidfd becomes
readable), or after ``IDLE_EXIT`` without a request. A daemon is forked once
and starts its own session; it does not depend on this process staying
alive, so it outlives a forkserver exit just as a daemon forked by ``start``
does. SIGCHLD is ignored here, so the kernel reaps daemons that exit first.

Code changes: the socket name hashes the shim's source files' mtimes, so an
upgraded shim never gets a daemon forked from old code.

Protocol (unix seqpacket, same uid only), three messages so that exactly one
side forks the daemon even when the client gives up:

1. client → server: the ``repr()`` of a dict of plain values (read back with
   ``ast.literal_eval``: no json import on the client's path) plus one or two
   fds (the listening socket, the log FIFO when there is one);
2. server → client: ``ok`` (ready to fork) or ``error: …``;
3. client → server: ``go``; the server forks and answers ``forked``.

A client that stops waiting before 3 forks its own daemon; the server then
sees the connection close instead of ``go`` and forks nothing. Every receive
is bounded in size and time, and a request that fails in any way is answered
(or dropped) without ending this process.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
from typing import Any

__all__ = ["IDLE_EXIT", "serve"]

IDLE_EXIT = 600.0
_MAX_MESSAGE = 64 * 1024
# How long one peer may hold this single-threaded server between messages:
# well under the client's 2 s, so one silent peer does not fail the next start.
PEER_TIMEOUT = 1.0


def _recv_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    import ast

    msg, fds, flags, _ = socket.recv_fds(conn, _MAX_MESSAGE, 2)
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        _close_all(fds)
        raise ValueError(f"request over {_MAX_MESSAGE} bytes or 2 fds")
    try:
        params = ast.literal_eval(msg.decode())
        if not isinstance(params, dict) or not isinstance(params.get("bundle"), str):
            raise ValueError("request is not a mapping with a bundle")
    except BaseException:
        _close_all(fds)
        raise
    return params, fds


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _same_user(conn: socket.socket) -> bool:
    import struct

    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid() and gid == os.getgid())


def _fork_daemon(params: dict[str, Any], fds: list[int], keep_closed: list[int]) -> None:
    """Fork a daemon. SIGCHLD is ignored here, so the kernel reaps the daemons
    that exit while this process lives; the daemon restores the default."""
    if os.fork():
        return
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in keep_closed:
            with contextlib.suppress(OSError):
                os.close(fd)
        os.environ.update(params.get("env") or {})
        os.chdir(params["bundle"])
        from shim.manager.start import become_daemon

        become_daemon(params, fds[0], fds[1] if len(fds) > 1 else -1)
    finally:
        os._exit(1)


def serve(path: str, address: str, containerd_pid: int) -> None:
    import fcntl
    import select

    from shim.manager.title import forkserver_title, set_title

    set_title(forkserver_title(address, containerd_pid))
    # Import what a daemon needs before the first request: that is the point.
    import shim.daemon.serve
    import shim.task.create

    shim.daemon.serve.warm_up()
    # Daemons share what is imported here copy-on-write; a collection in a
    # daemon would touch (and so copy) every object the collector tracks.
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)

    try:
        watch = os.pidfd_open(containerd_pid)
        # Two starts racing may both launch one; the lock keeps only the first.
        lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path)
    os.chmod(path, 0o600)
    server.listen(64)
    try:
        while True:
            ready, _, _ = select.select([server.fileno(), watch], [], [], IDLE_EXIT)
            if not ready or watch in ready:
                return  # idle, or containerd is gone
            conn, _ = server.accept()
            with conn:
                _handle(conn, [server.fileno(), watch, conn.fileno()])
    finally:
        for leftover in (path, path + ".lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def _handle(conn: socket.socket, keep_closed: list[int]) -> None:
    fds: list[int] = []
    try:
        if not _same_user(conn):
            return
        conn.settimeout(PEER_TIMEOUT)
        params, fds = _recv_request(conn)
        if not fds:
            conn.sendall(b"error: no socket")
            return
        conn.sendall(b"ok")
        if conn.recv(16) != b"go":
            return  # the client gave up and forks its own daemon
        _fork_daemon(params, fds, keep_closed)
        conn.sendall(b"forked")
    except Exception as e:  # one bad request (MemoryError included) must not end the server
        with contextlib.suppress(OSError):
            conn.sendall(f"error: {type(e).__name__}: {str(e)[:200]}".encode())
    finally:
        _close_all(fds)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], int(sys.argv[3]))
