"""Where a shim daemon listens, and whether one still answers there.

containerd's Go shims keep their sockets in ``/run/containerd/s`` whatever
containerd's state dir is (a compile-time constant in containerd,
shim-protocol.md §3.4); the name hashes containerd's address, the namespace
and the group (the container id, or a pod's sandbox id).

``start`` and ``delete`` run at every container's start and teardown, so this
uses the C modules under ``socket`` and ``hashlib`` directly: ``socket``
imports enum and selectors, ``hashlib`` loads OpenSSL, ~9 ms together per
process against well under 1 ms for ``_socket`` and the builtin sha256.
"""

from __future__ import annotations

import _socket
import os
import sys

__all__ = ["SOCKET_DIR", "connectable", "listen", "send_fds", "sha256_hex", "socket_path",
           "unix_socket", "write_address"]

SOCKET_DIR = "/run/containerd/s"


def sha256_hex(data: bytes) -> str:
    # CPython's builtin sha256: `_sha256` up to 3.11, `_sha2` from 3.12.
    for name in ("_sha256", "_sha2"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        return str(module.sha256(data).hexdigest())
    import hashlib

    return hashlib.sha256(data).hexdigest()


def socket_path(address: str, namespace: str, group: str) -> str:
    digest = sha256_hex(f"{address}/{namespace}/{group}".encode())
    return os.path.join(SOCKET_DIR, digest)


def unix_socket(kind: int = _socket.SOCK_STREAM) -> _socket.socket:
    return _socket.socket(_socket.AF_UNIX, kind | _socket.SOCK_CLOEXEC)


def connectable(path: str) -> bool:
    """Whether a daemon answers on this socket (a dead one leaves the file)."""
    s = unix_socket()
    try:
        s.connect(path)
    except OSError:
        return False
    finally:
        s.close()
    return True


def listen(path: str) -> _socket.socket:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = unix_socket()
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def send_fds(sock: _socket.socket, data: bytes, fds: list[int]) -> None:
    """``socket.send_fds`` without importing ``socket`` (and ``array``)."""
    rights = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)
    sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])


def write_address(bundle: str, address: str) -> None:
    # No trailing newline: containerd 1.x reads this file verbatim (§3.5).
    tmp = os.path.join(bundle, ".address.tmp")
    with open(tmp, "w") as f:
        f.write(address)
    os.replace(tmp, os.path.join(bundle, "address"))
