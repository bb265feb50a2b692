"""Where a shim daemon listens, and whether one still answers there.

containerd's Go shims keep their sockets in ``/run/containerd/s`` whatever
containerd's state dir is (a compile-time constant in containerd,
shim-protocol.md §3.4); the name hashes containerd's address, the namespace
and the group (the container id, or a pod's sandbox id).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # True for type checkers only
if TYPE_CHECKING:
    import socket

__all__ = ["SOCKET_DIR", "connectable", "listen", "socket_path", "write_address"]

SOCKET_DIR = "/run/containerd/s"


def socket_path(address: str, namespace: str, group: str) -> str:
    import hashlib

    digest = hashlib.sha256(f"{address}/{namespace}/{group}".encode()).hexdigest()
    return os.path.join(SOCKET_DIR, digest)


def connectable(path: str) -> bool:
    """Whether a daemon answers on this socket (a dead one leaves the file)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
        return True


def listen(path: str) -> socket.socket:
    import socket

    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def write_address(bundle: str, address: str) -> None:
    # No trailing newline: containerd 1.x reads this file verbatim (§3.5).
    tmp = os.path.join(bundle, ".address.tmp")
    with open(tmp, "w") as f:
        f.write(address)
    os.replace(tmp, os.path.join(bundle, "address"))
