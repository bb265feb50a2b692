"""The ``start`` action: bind the task socket, get a daemon serving it, print
the address (shim-protocol.md §3.2).

The daemon comes from the per-containerd forkserver when one is warm (it has
already paid for the daemon's imports); otherwise ``start`` forks it itself
and launches a forkserver for the next container. Either way the socket is
bound and listening before ``start`` prints its address, so containerd's
first dial never races the daemon's start-up.
"""

from __future__ import annotations

import os
import sys

from shim.manager.address import SOCKET_DIR, connectable, listen, socket_path, write_address

TYPE_CHECKING = False  # True for type checkers only
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from shim.manager.flags import ShimFlags

__all__ = ["become_daemon", "start_action"]

# What a daemon needs from start's environment (shim-protocol.md §3.2).
_DAEMON_ENV = frozenset({"TTRPC_ADDRESS", "GRPC_ADDRESS", "NAMESPACE", "MAX_SHIM_VERSION",
                         "SCHED_CORE", "PATH"})


def start_action(flags: ShimFlags) -> int:
    # The options Any on stdin is sent again in CreateTaskRequest.options.
    try:
        while os.read(0, 65536):
            pass
    except OSError:
        pass
    bundle = os.getcwd()
    group = _group(bundle, flags.id)
    path = flags.socket or socket_path(flags.address, flags.namespace, group)
    address = "unix://" + path
    if os.path.exists(path) and connectable(path):
        write_address(bundle, address)
        sys.stdout.write(address)
        return 0
    sock = listen(path)
    params = {
        "namespace": flags.namespace, "address": flags.address, "id": flags.id, "group": group,
        "socket_file": path, "debug": flags.debug, "bundle": bundle,
        "env": {k: v for k, v in os.environ.items() if k in _DAEMON_ENV},
    }
    log_fd = _open_log(bundle)
    from shim.manager import forkclient

    server = forkclient.forkserver_path(SOCKET_DIR, flags.address)
    if not forkclient.request_daemon(server, params, sock.fileno(), log_fd):
        if os.fork() == 0:
            become_daemon(params, sock.detach(), log_fd)  # never returns
        # The next start finds a warm forkserver instead of paying the imports.
        forkclient.spawn_forkserver(server, flags.address, os.getppid())
    sock.close()
    if log_fd >= 0:
        os.close(log_fd)
    write_address(bundle, address)
    sys.stdout.write(address)
    return 0


def _group(bundle: str, container_id: str) -> str:
    """One shim per pod: the group is the pod's sandbox id (``shim.kube.pod``)."""
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            data = f.read()
    except OSError:
        return container_id
    if b"sandbox-id" not in data and b"SandboxID" not in data:
        return container_id  # not a pod: no need to pay for the json import
    import json

    from shim.kube.pod import shim_group

    try:
        annotations = json.loads(data).get("annotations") or {}
    except (ValueError, AttributeError):
        return container_id
    return shim_group(container_id, annotations) if isinstance(annotations, dict) \
        else container_id


def _open_log(bundle: str) -> int:
    # containerd holds this FIFO open read-write, so opening it for writing
    # never blocks; what the daemon writes lands in containerd's log.
    try:
        return os.open(os.path.join(bundle, "log"), os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def become_daemon(params: dict[str, Any], listen_fd: int, log_fd: int) -> NoReturn:
    """In a forked child: detach, point stdio at the log FIFO, serve, exit."""
    code = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        out = log_fd if log_fd >= 0 else null
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.closerange(3, listen_fd)
        os.closerange(listen_fd + 1, 65536)
        from shim.manager.title import daemon_title, set_title

        set_title(daemon_title(params["namespace"], params["group"], params["address"]))
        import socket

        from shim.daemon.serve import serve

        code = serve(socket.socket(fileno=listen_fd), namespace=params["namespace"],
                     address=params["address"], container_id=params["id"],
                     socket_file=params["socket_file"], debug=bool(params["debug"]))
    except BaseException:  # the child must never return into start's code
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)
