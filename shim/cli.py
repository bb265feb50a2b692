"""Command line: the shim protocol's actions and the commands for people.

containerd runs ``containerd-shim-gvisorgpu-v1 [Go-style flags] start|delete``
(shim-protocol.md §3). ``start`` is on containerd's critical path, so this
module imports only the standard library's light modules; the daemon's heavy
imports (asyncio, betterproto, the generated API) happen after the fork, in the
child, while containerd is already dialling the socket that ``start`` bound.

People run ``plan``, ``doctor`` and ``version`` with ordinary ``--long`` options.
"""

from __future__ import annotations

import os
import sys

# Set to True by type checkers only: `typing` alone costs ~5 ms at every start,
# `socket` ~7 ms at every delete, which needs it only for a leftover socket.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Any, NoReturn

__all__ = ["ShimFlags", "main", "parse_shim_flags", "socket_path"]

NAME = "containerd-shim-gvisorgpu-v1"
VERSION = "0.1.0"
# containerd's Go shims keep their sockets here whatever containerd's state dir
# is (a compile-time constant in containerd, shim-protocol.md §3.4).
SOCKET_DIR = "/run/containerd/s"
_BOOL_FLAGS = frozenset({"debug", "v", "version", "info", "h", "help"})
# What a daemon needs from start's environment (shim-protocol.md §3.2).
_DAEMON_ENV = frozenset({"TTRPC_ADDRESS", "GRPC_ADDRESS", "NAMESPACE", "MAX_SHIM_VERSION",
                         "SCHED_CORE", "PATH"})
_USER_COMMANDS = frozenset({"plan", "doctor", "version", "help", "--help", "-h", "--version"})


class ShimFlags:
    """The Go shim library's flags. A plain class: ``dataclasses`` would add
    ~10 ms of imports to every ``start`` and ``delete``."""

    def __init__(self) -> None:
        self.namespace = ""
        self.address = ""
        self.publish_binary = ""
        self.id = ""
        self.bundle = ""
        self.socket = ""
        self.debug = False
        self.version = False
        self.info = False
        self.action = ""
        self.args: list[str] = []
        self.unknown: list[str] = []


def parse_shim_flags(argv: list[str]) -> ShimFlags:
    """Go ``flag`` rules: ``-name value``, ``-name=value``, ``--name``; booleans
    take no value; parsing stops at the first non-flag. Unknown flags are kept
    aside rather than fatal, so a newer containerd's extra flag cannot break us."""
    flags = ShimFlags()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            flags.args = argv[i + 1:] if arg == "--" else argv[i:]
            break
        name, eq, value = arg.lstrip("-").partition("=")
        key = name.replace("-", "_")
        if name in _BOOL_FLAGS:
            truthy = not eq or value.lower() in ("1", "t", "true")
            attr = {"v": "version", "h": "version", "help": "version"}.get(name, name)
            setattr(flags, attr, truthy)
        elif hasattr(flags, key) and key not in ("action", "args", "unknown"):
            if not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            setattr(flags, key, value)
        else:
            flags.unknown.append(arg)
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("-") \
                    and argv[i + 1] not in ("start", "delete", "serve"):
                i += 1
                flags.unknown.append(argv[i])
        i += 1
    if flags.args:
        flags.action, flags.args = flags.args[0], flags.args[1:]
    return flags


def socket_path(address: str, namespace: str, group: str) -> str:
    import hashlib

    digest = hashlib.sha256(f"{address}/{namespace}/{group}".encode()).hexdigest()
    return os.path.join(SOCKET_DIR, digest)


def connectable(path: str) -> bool:
    """Whether a shim daemon answers on this socket (a dead one leaves the file)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
        return True


def _listen(path: str) -> socket.socket:
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


def _write_address(bundle: str, address: str) -> None:
    # No trailing newline: containerd 1.x reads this file verbatim (§3.5).
    tmp = os.path.join(bundle, ".address.tmp")
    with open(tmp, "w") as f:
        f.write(address)
    os.replace(tmp, os.path.join(bundle, "address"))


def _start(flags: ShimFlags) -> int:
    # The options Any on stdin is sent again in CreateTaskRequest.options.
    try:
        while os.read(0, 65536):
            pass
    except OSError:
        pass
    bundle = os.getcwd()
    path = flags.socket or socket_path(flags.address, flags.namespace, _group(bundle, flags.id))
    address = "unix://" + path
    if os.path.exists(path) and connectable(path):
        _write_address(bundle, address)
        sys.stdout.write(address)
        return 0
    sock = _listen(path)
    params = {
        "namespace": flags.namespace, "address": flags.address, "id": flags.id,
        "socket_file": path, "debug": flags.debug, "bundle": bundle,
        "env": {k: v for k, v in os.environ.items() if k in _DAEMON_ENV},
    }
    log_fd = _open_log(bundle)
    from shim import forkclient

    server = forkclient.forkserver_path(SOCKET_DIR, flags.address)
    if not forkclient.request_daemon(server, params, sock.fileno(), log_fd):
        if os.fork() == 0:
            run_daemon(params, sock, log_fd)  # never returns
        # The next start finds a warm forkserver instead of paying the imports.
        forkclient.spawn_forkserver(server, os.getppid())
    sock.close()
    if log_fd >= 0:
        os.close(log_fd)
    _write_address(bundle, address)
    sys.stdout.write(address)
    return 0


def _group(bundle: str, container_id: str) -> str:
    """One shim per pod: CRI marks every container of a pod with its sandbox id
    (shim-protocol.md §3.8), so they all reach the daemon that booted it."""
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            data = f.read()
    except OSError:
        return container_id
    if b"io.kubernetes.cri.sandbox-id" not in data:
        return container_id  # not a pod: no need to pay for the json import
    import json

    try:
        annotations = json.loads(data).get("annotations") or {}
    except (ValueError, AttributeError):
        return container_id
    if annotations.get("io.kubernetes.cri.container-type") in ("sandbox", "container"):
        return str(annotations.get("io.kubernetes.cri.sandbox-id") or container_id)
    return container_id


def _open_log(bundle: str) -> int:
    # containerd holds this FIFO open read-write, so opening it for writing
    # never blocks; what the daemon writes lands in containerd's log.
    try:
        return os.open(os.path.join(bundle, "log"), os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def run_daemon(params: dict[str, Any], sock: socket.socket, log_fd: int) -> NoReturn:
    """In a forked child: detach, point stdio at the log FIFO, serve, exit."""
    code = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        out = log_fd if log_fd >= 0 else null
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.closerange(3, sock.fileno())
        os.closerange(sock.fileno() + 1, 65536)
        from shim.daemon import serve

        code = serve(sock, namespace=params["namespace"], address=params["address"],
                     container_id=params["id"], socket_file=params["socket_file"],
                     debug=bool(params["debug"]))
    except BaseException:  # the child must never return into start's code
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _delete(flags: ShimFlags) -> int:
    from shim.cleanup import delete_action

    bundle = flags.bundle or os.getcwd()
    sys.stdout.buffer.write(delete_action(
        bundle, flags.id, socket_file=socket_path(flags.address, flags.namespace, flags.id)))
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _USER_COMMANDS:
        from shim.commands import run_command

        return run_command(argv)
    flags = parse_shim_flags(argv)
    if flags.version:
        print(f"{NAME}:\n  Version: {VERSION}\n  Runtime: io.containerd.gvisorgpu.v1")
        return 0
    if flags.info:
        sys.stderr.write(f"{NAME}: -info is not supported\n")
        return 1
    if flags.action == "start":
        return _start(flags)
    if flags.action == "delete":
        return _delete(flags)
    sys.stderr.write(
        f"{NAME}: unknown action {flags.action!r}; containerd runs `start` and `delete`; "
        "people can run `plan BUNDLE`, `doctor` or `version`\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
