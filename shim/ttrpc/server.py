"""An asyncio ttrpc server for unary calls.

The IO here is thin: each connection is an ``asyncio.Protocol`` whose
``data_received`` feeds a :class:`~shim.ttrpc.codec.FrameDecoder` and
dispatches the events. Every accepted request runs as its own task, because
containerd keeps ``Wait`` outstanding on a connection while it sends ``Start``,
``Kill`` and the rest on the same one (shim-protocol.md §1.1, pitfall 5).

A reply is one ``transport.write`` of a whole frame, so replies never
interleave. While the transport asks us to pause writing, handler tasks wait
before writing and the connection stops reading new requests.

One peer cannot make the server hold unbounded memory: a connection runs at
most ``max_in_flight`` handlers (and their requests' bytes up to
``_MAX_IN_FLIGHT_BYTES``). Past that it stops *reading*, so the peer's writes
back up into its own socket; requests already read wait, undecoded, in a
backlog no larger than one read. Nothing is refused: containerd keeps a
``Wait`` in flight per process on one connection, so the bound is generous,
and reading resumes once the handlers drop below three quarters of it.

Errors meet the wire in :func:`shim.ttrpc.dispatch.invoke` only: an :class:`RpcError` is an
expected answer, and so is any exception the ``error_status`` function given
to the server maps to a code (the task service's domain errors); anything else
is logged with its traceback and answered Unknown with the exception text.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import betterproto

from shim.api.ttrpc import Request
from shim.ttrpc import codec
from shim.ttrpc.dispatch import (
    CallContext,
    ErrorStatus,
    Handler,
    Method,
    call_context,
    invoke,
)
from shim.ttrpc.status import Code, RpcError

__all__ = ["CallContext", "ErrorStatus", "Handler", "Server"]

log = logging.getLogger("shim.ttrpc")

_M = TypeVar("_M", bound=betterproto.Message)

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

MAX_IN_FLIGHT = 1024
"""Handlers one connection may run at once; containerd needs one per Wait."""
# Request bytes those handlers may hold (a request is at most 4 MiB).
_MAX_IN_FLIGHT_BYTES = 64 << 20


class Server:
    """Serves registered unary methods on an already listening unix socket."""

    def __init__(self, *, require_same_user: bool = True,
                 error_status: ErrorStatus | None = None,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        # Go's ttrpc server only talks to peers with its own uid and gid
        # (UnixSocketRequireSameUser); containerd and its shims always match.
        self._require_same_user = require_same_user
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self.error_status: ErrorStatus = error_status or (lambda exc: None)
        self._methods: dict[tuple[str, str], Method] = {}
        self._services: set[str] = set()
        self._listener: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._closed = asyncio.Event()
        self._closing = False

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` or :meth:`shutdown` has begun."""
        return self._closing

    # --- registration ---------------------------------------------------------

    def register(
        self,
        service: str,
        method: str,
        request_type: type[_M],
        handler: Callable[[_M, CallContext], Awaitable[betterproto.Message]],
    ) -> None:
        """Serve ``service``/``method``; a second registration of the pair is an error."""
        key = (service, method)
        if key in self._methods:
            raise ValueError(f"{service}/{method} is already registered")
        self._methods[key] = Method(request_type, handler)
        self._services.add(service)

    def register_service(
        self,
        names: Sequence[str],
        methods: Mapping[str, tuple[type[betterproto.Message], Handler]],
    ) -> None:
        """Register one method table under each of several service names."""
        for name in names:
            for method, (request_type, handler) in methods.items():
                self.register(name, method, request_type, handler)

    # --- lifecycle ------------------------------------------------------------

    async def serve_socket(self, sock: socket.socket) -> None:
        """Start accepting on ``sock`` (bound and listening) and return.

        The server takes ownership of ``sock``; :meth:`close` or
        :meth:`shutdown` closes it. Use :meth:`wait_closed` to block.
        """
        if self._listener is not None:
            raise RuntimeError("server is already serving")
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_unix_server(lambda: _Connection(self), sock=sock)

    async def wait_closed(self) -> None:
        """Block until :meth:`close` or :meth:`shutdown` has finished."""
        await self._closed.wait()

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Stop gracefully: stop accepting, answer new requests Unavailable, give
        in-flight handlers up to ``timeout`` seconds to finish and their replies
        to be written, then close every connection (cancelling what is left).

        Do not await this from inside a handler: the handler's own reply would
        be lost. Let the handler return and shut down from the outside.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        self._begin_close()
        current = asyncio.current_task()
        tasks = {t for c in self._connections for t in c.tasks if t is not current}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                log.warning("ttrpc: %d handlers still running after %.1fs", len(pending), timeout)
        conns = list(self._connections)
        for conn in conns:
            conn.close()
        await _wait_lost(conns, max(0.0, end - loop.time()))
        await self._finish(conns)

    async def close(self) -> None:
        """Stop now: stop accepting, drop every connection, cancel every handler."""
        self._begin_close()
        conns = list(self._connections)
        for conn in conns:
            conn.abort()
        await self._finish(conns)

    def _begin_close(self) -> None:
        self._closing = True
        if self._listener is not None:
            self._listener.close()

    async def _finish(self, conns: list[_Connection]) -> None:
        for conn in conns:
            conn.abort()
        tasks = {t for c in conns for t in c.tasks}
        if tasks:
            # A handler that swallows cancellation must not hold shutdown hostage.
            await asyncio.wait(tasks, timeout=_CANCEL_GRACE)
        await _wait_lost(conns, _CANCEL_GRACE)
        self._closed.set()

    # --- dispatch (called by connections) ---------------------------------------

    def lookup(self, service: str, method: str) -> Method | RpcError:
        """The method for a request, or the Unimplemented error Go's server gives."""
        found = self._methods.get((service, method))
        if found is not None:
            return found
        if service not in self._services:
            return RpcError(f"service {service}", Code.UNIMPLEMENTED)
        return RpcError(f"method {method}", Code.UNIMPLEMENTED)

    def accept_peer(self, transport: asyncio.BaseTransport) -> bool:
        """The SO_PEERCRED check of Go's UnixSocketRequireSameUser."""
        if not self._require_same_user:
            return True
        sock = transport.get_extra_info("socket")
        if sock is None:
            return True
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        except OSError as exc:
            log.warning("ttrpc: refusing connection: cannot read peer credentials: %s", exc)
            return False
        pid, uid, gid = _PEERCRED.unpack(raw)
        if (uid, gid) != (os.getuid(), os.getgid()):
            log.warning("ttrpc: refusing connection from pid %d (uid %d, gid %d)", pid, uid, gid)
            return False
        return True


# How long cancelled handlers and aborted transports get to wind down.
_CANCEL_GRACE = 1.0


async def _wait_lost(conns: Sequence[_Connection], timeout: float) -> None:
    waiting = [c.lost for c in conns if not c.lost.done()]
    if waiting:
        await asyncio.wait(waiting, timeout=timeout)


class _Connection(asyncio.Protocol):
    """One client connection: decode frames, start handler tasks, write replies."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._decoder = codec.FrameDecoder()
        self._transport: asyncio.Transport | None = None
        self._last_stream_id = 0
        self._writable = asyncio.Event()
        self._writable.set()
        self.tasks: set[asyncio.Task[None]] = set()
        # Frames read while at the in-flight bound, dispatched as handlers end.
        self._backlog: collections.deque[codec.Event] = collections.deque()
        self._in_flight_bytes = 0
        self._reading_paused = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # --- asyncio callbacks --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self._server.closing or not self._server.accept_peer(transport):
            transport.abort()
            return
        self._server._connections.add(self)
        log.debug("ttrpc: connection opened")

    def data_received(self, data: bytes) -> None:
        try:
            events = self._decoder.feed(data)
        except codec.ProtocolError as exc:
            log.warning("ttrpc: closing connection: %s", exc)
            self.abort()
            return
        self._backlog.extend(events)
        self._drain_backlog()

    def eof_received(self) -> bool:
        try:
            self._decoder.eof()
        except codec.ProtocolError as exc:
            log.debug("ttrpc: %s", exc)
        # EOF means the client is gone, as in Go's server: a half-closed and a
        # closed socket look the same here, and a gone client's Wait calls
        # must not linger. Returning False closes the transport.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        self._backlog.clear()
        for task in self.tasks:
            task.cancel()
        # Writers parked on back-pressure must wake up and see the closed transport.
        self._writable.set()
        if not self.lost.done():
            self.lost.set_result(None)
        log.debug("ttrpc: connection closed (%s)", exc or "eof")

    def pause_writing(self) -> None:
        # Stop taking requests while the peer is not reading our replies.
        self._writable.clear()
        self._update_reading()

    def resume_writing(self) -> None:
        self._writable.set()
        self._drain_backlog()

    # --- flow control ---------------------------------------------------------------

    @property
    def reading_paused(self) -> bool:
        return self._reading_paused

    def _update_reading(self) -> None:
        """Read while replies can be written and handlers are below the bound;
        once stopped for the bound, read again below three quarters of it."""
        limit = self._server.max_in_flight
        if self._reading_paused:
            busy = len(self.tasks) > limit * 3 // 4 or self._in_flight_bytes > (
                _MAX_IN_FLIGHT_BYTES // 2)
        else:
            busy = len(self.tasks) >= limit or self._in_flight_bytes >= _MAX_IN_FLIGHT_BYTES
        pause = not self._writable.is_set() or bool(self._backlog) or busy
        transport = self._transport
        if transport is None or transport.is_closing() or pause == self._reading_paused:
            return
        self._reading_paused = pause
        if pause:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _has_room(self, event: codec.Event) -> bool:
        if not self.tasks:
            return True
        size = len(event.data) if isinstance(event, codec.Frame) else 0
        return (len(self.tasks) < self._server.max_in_flight
                and self._in_flight_bytes + size <= _MAX_IN_FLIGHT_BYTES)

    def _drain_backlog(self) -> None:
        while self._backlog and self._writable.is_set() and self._has_room(self._backlog[0]):
            self._dispatch(self._backlog.popleft())
        self._update_reading()

    # --- closing ------------------------------------------------------------------

    def close(self) -> None:
        """Close after the buffered replies are written."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close now, dropping unwritten replies."""
        if self._transport is not None:
            self._transport.abort()

    # --- dispatch -------------------------------------------------------------------

    def _dispatch(self, event: codec.Event) -> None:
        if isinstance(event, codec.FrameTooLarge):
            if event.type is codec.FrameType.REQUEST:
                self._reply_now(event.stream_id, Code.RESOURCE_EXHAUSTED, event.message)
            return
        if event.type is not codec.FrameType.REQUEST:
            # Streaming data and stray responses have no place in a unary server.
            log.debug("ttrpc: ignoring %s frame on stream %d", event.type.name, event.stream_id)
            return
        stream_id = event.stream_id
        # The stream id rules of ttrpc 1.2's server, with its status texts.
        if stream_id % 2 != 1:
            msg = "StreamID must be odd for client initiated streams"
            self._reply_now(stream_id, Code.INVALID_ARGUMENT, msg)
            return
        if stream_id <= self._last_stream_id:
            msg = "StreamID cannot be re-used and must increment"
            self._reply_now(stream_id, Code.INVALID_ARGUMENT, msg)
            return
        self._last_stream_id = stream_id
        try:
            request = codec.decode_request(event.data)
        except codec.EnvelopeError as exc:
            self._reply_now(stream_id, Code.INVALID_ARGUMENT, f"unmarshal request error: {exc}")
            return
        if self._server.closing:
            # No reply: the caller learns from the connection closing, which
            # containerd reads as ttrpc.ErrClosed. That is the answer it expects
            # to a second Shutdown; an error status there makes it log a leaked
            # shim and run the delete action against a sandbox being deleted.
            log.debug("ttrpc: server closing, dropping %s/%s on stream %d",
                      request.service, request.method, stream_id)
            return
        method = self._server.lookup(request.service, request.method)
        if isinstance(method, RpcError):
            self._reply_now(stream_id, method.code, method.message)
            return
        task = asyncio.get_running_loop().create_task(
            self._serve(stream_id, request, method),
            name=f"ttrpc {request.service}/{request.method} stream {stream_id}",
        )
        size = len(event.data)
        self.tasks.add(task)
        self._in_flight_bytes += size
        task.add_done_callback(lambda t: self._task_done(t, size))

    def _reply_now(self, stream_id: int, code: Code, message: str) -> None:
        # Small error replies skip back-pressure: reading and the backlog are
        # already paused whenever writing is, so they cannot pile up.
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(codec.encode_response(stream_id, code=code, message=message))

    async def _serve(self, stream_id: int, request: Request, method: Method) -> None:
        payload, code, message = await invoke(method, call_context(stream_id, request), request,
                                               self._server.error_status)
        try:
            frame = codec.encode_response(stream_id, payload, code=code, message=message)
        except codec.MessageTooLargeError as exc:
            # Go's server drops the connection here; a status is kinder to the caller.
            log.error("ttrpc: %s/%s reply too large: %s", request.service, request.method, exc)
            frame = codec.encode_response(stream_id, code=Code.RESOURCE_EXHAUSTED, message=str(exc))
        await self._writable.wait()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame)

    def _task_done(self, task: asyncio.Task[None], size: int) -> None:
        self.tasks.discard(task)
        self._in_flight_bytes -= size
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("ttrpc: %s crashed", task.get_name(), exc_info=exc)
        self._drain_backlog()
