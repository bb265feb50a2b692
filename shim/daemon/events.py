"""Ordered event publishing to containerd (``Events.Forward`` over ttrpc).

One queue, one forwarder task: ``publish`` only enqueues, so an RPC never waits
on containerd, and events leave in the order they were published (the
TaskStart-before-TaskExit rules of shim-protocol.md §4.3 rely on that). When
containerd is away (restarting), the forwarder keeps the event and re-dials
with a capped back-off instead of dropping it; ``kick`` cuts a back-off short
when there is news that containerd is back (it has just called us).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import betterproto
from betterproto.lib.google.protobuf import Any, Empty

from shim.api.containerd.services.events.ttrpc.v1 import ForwardRequest
from shim.api.containerd.types import Envelope
from shim.ttrpc.client import Client
from shim.ttrpc.status import RpcError

__all__ = ["Publisher"]

log = logging.getLogger("shim.daemon.events")

_SERVICE = "containerd.services.events.ttrpc.v1.Events"
_NAMESPACE_KEY = "containerd-namespace-ttrpc"
_FORWARD_TIMEOUT = 5.0
_MIN_BACKOFF = 0.1
_MAX_BACKOFF = 5.0


@dataclass(frozen=True)
class _Event:
    topic: str
    type_url: str
    message: betterproto.Message
    timestamp: datetime


class Publisher:
    """Forwards events for one namespace to containerd's ttrpc socket."""

    def __init__(self, address: str, namespace: str) -> None:
        self._address = address.removeprefix("unix://")
        self._namespace = namespace
        self._queue: asyncio.Queue[_Event | None] = asyncio.Queue()
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._forward())

    def publish(self, topic: str, type_url: str, message: betterproto.Message) -> None:
        """Queue an event; type_url is the proto full name, e.g. containerd.events.TaskExit."""
        self._queue.put_nowait(_Event(topic, type_url, message, datetime.now(UTC)))

    def kick(self) -> None:
        """containerd is reachable again: retry a failed send now, from the
        shortest back-off. Without it, an exit that happened while containerd
        was down could wait out a back-off longer than containerd's whole
        reconnect-and-Shutdown sequence, and be dropped at exit."""
        self._wake.set()

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (bounded by ``timeout``), then stop."""
        if self._task is None:
            return
        self._queue.put_nowait(None)
        self.kick()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            log.warning("dropping %d unsent events at shutdown", self._queue.qsize())
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.close()

    async def _forward(self) -> None:
        while (event := await self._queue.get()) is not None:
            await self._send_until_done(event)

    async def _send_until_done(self, event: _Event) -> None:
        request = ForwardRequest(
            envelope=Envelope(
                timestamp=event.timestamp,
                namespace=self._namespace,
                topic=event.topic,
                event=Any(type_url=event.type_url, value=bytes(event.message)),
            )
        )
        delay = _MIN_BACKOFF
        while True:
            self._wake.clear()
            try:
                if self._client is None or self._client.closed:
                    self._client = await Client.connect(self._address, timeout=_FORWARD_TIMEOUT)
                await self._client.call(
                    _SERVICE, "Forward", request, Empty,
                    timeout=_FORWARD_TIMEOUT, metadata={_NAMESPACE_KEY: self._namespace},
                )
                return
            except (OSError, RpcError, TimeoutError) as e:
                log.warning("publishing %s failed, retrying in %.1fs: %s", event.topic, delay, e)
                if self._client is not None:
                    await self._client.close()
                    self._client = None
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                    delay = _MIN_BACKOFF
                except TimeoutError:
                    delay = min(delay * 2, _MAX_BACKOFF)
