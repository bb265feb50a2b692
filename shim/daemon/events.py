"""Ordered event publishing to containerd (``Events.Forward`` over ttrpc).

One queue, one forwarder task: ``publish`` only enqueues, so an RPC never waits
on containerd, and events leave in the order they were published (the
TaskStart-before-TaskExit rules of shim-protocol.md §4.3 rely on that).

A failed send is retried according to what failed:

- containerd is away or slow (a dial or socket error, a closed connection, a
  timeout, Unavailable): it is restarting, and the event is kept and re-sent
  with a capped back-off for as long as it takes; ``kick`` cuts a back-off
  short when there is news that containerd is back (it has just called us);
- containerd answered with another status (InvalidArgument for an envelope it
  will not take, ...): the same bytes will be refused again, so after
  ``_REJECTED_TRIES`` answers the event is dropped with a warning that names it,
  and the events behind it (a TaskExit that containerd waits for) go on.

An event that cannot even be encoded is dropped with its traceback logged; the
forwarder itself never stops before ``close``.
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
from shim.ttrpc.dispatch import NAMESPACE_KEY
from shim.ttrpc.status import Code, RpcError

__all__ = ["Publisher", "transient"]

log = logging.getLogger("shim.daemon.events")

_SERVICE = "containerd.services.events.ttrpc.v1.Events"
_FORWARD_TIMEOUT = 5.0
_MIN_BACKOFF = 0.1
_MAX_BACKOFF = 5.0
# Answers (not transport failures) after which an event is given up.
_REJECTED_TRIES = 5
# Statuses that say "not now" rather than "not this".
_TRANSIENT_CODES = frozenset({Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class _Event:
    topic: str
    type_url: str
    message: betterproto.Message
    timestamp: datetime


class Publisher:
    """Forwards events for one namespace to containerd's ttrpc socket."""

    def __init__(self, address: str, namespace: str, *,
                 backoff: tuple[float, float] = (_MIN_BACKOFF, _MAX_BACKOFF),
                 rejected_tries: int = _REJECTED_TRIES) -> None:
        self._address = address.removeprefix("unix://")
        self._namespace = namespace
        self._min_backoff, self._max_backoff = backoff
        self._rejected_tries = rejected_tries
        self._queue: asyncio.Queue[_Event | None] = asyncio.Queue()
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._forward(),
                                                            name="event forwarder")
        self._task.add_done_callback(self._forwarder_done)

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
        self._closing = True
        self._queue.put_nowait(None)
        self.kick()
        try:
            if not self._task.done():
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            log.warning("dropping %d unsent events at shutdown", self._queue.qsize())
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.close()

    def _forwarder_done(self, task: asyncio.Task[None]) -> None:
        # _forward catches every Exception; ending before close means the loop
        # itself is going away, and that must show in the log.
        if self._closing:
            return
        reason = "cancelled" if task.cancelled() else repr(task.exception())
        log.error("event forwarder stopped before shutdown (%s): %d events unsent",
                  reason, self._queue.qsize())

    async def _forward(self) -> None:
        while (event := await self._queue.get()) is not None:
            try:
                await self._send(event)
            except Exception:
                log.exception("dropping event %s: it could not be sent", event.topic)

    def _request(self, event: _Event) -> ForwardRequest:
        return ForwardRequest(
            envelope=Envelope(
                timestamp=event.timestamp,
                namespace=self._namespace,
                topic=event.topic,
                event=Any(type_url=event.type_url, value=bytes(event.message)),
            )
        )

    async def _send(self, event: _Event) -> None:
        """Deliver one event: retried until sent, or dropped once containerd
        has refused it ``rejected_tries`` times."""
        request = self._request(event)
        delay = self._min_backoff
        rejected = 0
        while True:
            self._wake.clear()
            try:
                await self._call(request)
                return
            except (OSError, RpcError, TimeoutError) as e:
                if transient(e):
                    await self._disconnect()
                else:
                    rejected += 1
                    if rejected >= self._rejected_tries:
                        log.warning("dropping event %s: containerd refused it %d times: %s",
                                    event.topic, rejected, e)
                        return
                log.warning("publishing %s failed, retrying in %.1fs: %s", event.topic, delay, e)
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
                delay = self._min_backoff
            except TimeoutError:
                delay = min(delay * 2, self._max_backoff)

    async def _call(self, request: ForwardRequest) -> None:
        if self._client is None or self._client.closed:
            self._client = await Client.connect(self._address, timeout=_FORWARD_TIMEOUT)
        await self._client.call(
            _SERVICE, "Forward", request, Empty,
            timeout=_FORWARD_TIMEOUT, metadata={NAMESPACE_KEY: self._namespace},
        )

    async def _disconnect(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


def transient(exc: BaseException) -> bool:
    """Whether a failed Forward is worth retrying without end: containerd is
    away, restarting or slow (a transport failure or Unavailable), rather than
    refusing this event."""
    if isinstance(exc, RpcError):  # before OSError: ClosedError is both
        return exc.code in _TRANSIENT_CODES
    return isinstance(exc, OSError | TimeoutError)
