"""The long-lived shim process: reaper, ttrpc server, event publisher.

Runs in the child that ``start`` forked, with stdio already on the log FIFO.
It serves until Shutdown arrives with no container left, or SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket

from shim import logfmt as shim_log
from shim.about import RUNTIME
from shim.daemon.events import Publisher
from shim.daemon.reaper import Reaper
from shim.runsc import ProbeCache
from shim.task.errors import wire_status
from shim.task.service import SERVICE_NAMES, TaskService
from shim.ttrpc.server import Server

__all__ = ["serve", "warm_up"]

log = logging.getLogger("shim")

# Time for the Shutdown reply to leave before the connection closes.
_SHUTDOWN_GRACE = 2.0


def warm_up() -> None:
    """Pay betterproto's per-class set-up once, before the forkserver forks.

    Each message class builds its field metadata (type hints, defaults, the
    classes of nested fields) on first use, and a forked daemon that does so
    pays it again, in every daemon: profiled, that was a quarter of a daemon's
    CPU for a short container. So every message class the daemon has loaded
    (task API, events, ttrpc envelope, options), every class their fields
    name, and google.protobuf's Any, Duration, Empty and Timestamp are set up
    here, and one encode/decode of each warms the rest of the path."""
    import sys
    from typing import Any

    import betterproto
    from betterproto.lib.google import protobuf

    # Timestamp and Duration stand behind datetime fields, Empty behind
    # several replies: no field names their class.
    pending: list[Any] = [protobuf.Any, protobuf.Duration, protobuf.Empty, protobuf.Timestamp]
    pending += [cls for name, module in list(sys.modules.items())
                if name.startswith("shim.api.") and module is not None
                for cls in vars(module).values()
                if isinstance(cls, type) and issubclass(cls, betterproto.Message)
                and cls.__module__ == name]
    done: set[type] = set()
    while pending:
        cls = pending.pop()
        if cls in done:
            continue
        done.add(cls)
        pending.extend(c for c in cls._betterproto.cls_by_field.values()
                       if isinstance(c, type) and issubclass(c, betterproto.Message))
        cls().parse(bytes(cls()))


def serve(sock: socket.socket, *, namespace: str, address: str, container_id: str,
          socket_file: str, debug: bool) -> int:
    shim_log.setup(logging.DEBUG if debug else logging.INFO, runtime=RUNTIME,
                   namespace=namespace)
    ttrpc_address = os.environ.get("TTRPC_ADDRESS") or f"{address}.ttrpc"
    try:
        asyncio.run(_serve(sock, namespace, ttrpc_address, socket_file))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_file)
    log.info("shim exited", extra={"id": container_id})
    return 0


async def _serve(sock: socket.socket, namespace: str, ttrpc_address: str,
                 socket_file: str) -> None:
    loop = asyncio.get_running_loop()
    reaper = Reaper()
    reaper.install(loop)
    publisher = Publisher(ttrpc_address, namespace)
    publisher.start()
    stop = asyncio.Event()
    service = TaskService(namespace, publisher, stop, reaper, ProbeCache())
    server = Server(error_status=wire_status)
    server.register_service(SERVICE_NAMES, service.handlers())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.serve_socket(sock)
    log.info("serving", extra={"socket": socket_file, "pid": os.getpid()})
    await stop.wait()
    await server.shutdown(timeout=_SHUTDOWN_GRACE)
    await publisher.close()
