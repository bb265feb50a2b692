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
    """Pay betterproto's per-class set-up once, before the forkserver forks:
    each message class builds its field metadata on first use (~2 ms in all)."""
    from shim.api.containerd.task import v2 as api

    for name in dir(api):
        cls = getattr(api, name)
        if isinstance(cls, type) and cls.__module__ == api.__name__ and name.endswith(
                ("Request", "Response")):
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
