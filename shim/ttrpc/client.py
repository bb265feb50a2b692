"""An asyncio ttrpc client for unary calls over a unix socket.

Used to forward events to containerd and by the tests. Like the Go client it
numbers streams 1, 3, 5, ... and keeps any number of calls in flight on one
connection; responses are matched to calls by stream id only.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import TypeVar

import betterproto

from shim.ttrpc import codec
from shim.ttrpc.status import Code, RpcError

__all__ = ["Client", "ClosedError", "DeadlineExceededError"]

log = logging.getLogger("shim.ttrpc")

_M = TypeVar("_M", bound=betterproto.Message)
_MAX_STREAM_ID = 0xFFFF_FFFF


class ClosedError(RpcError, ConnectionError):
    """The connection is gone. The text is Go's ``ErrClosed``, which containerd
    recognises ("ttrpc: closed")."""

    code = Code.UNAVAILABLE

    def __init__(self, message: str = "ttrpc: closed") -> None:
        super().__init__(message)


class DeadlineExceededError(RpcError, TimeoutError):
    """The call's ``timeout`` ran out before the response arrived."""

    code = Code.DEADLINE_EXCEEDED

    def __init__(self, message: str = "context deadline exceeded") -> None:
        super().__init__(message)


class Client:
    """One ttrpc connection. Create it with :meth:`connect`."""

    def __init__(self, protocol: _ClientProtocol) -> None:
        self._protocol = protocol
        self._next_stream_id = 1

    @classmethod
    async def connect(cls, path: str | os.PathLike[str], *, timeout: float | None = None) -> Client:
        """Dial the unix socket at ``path``.

        Raises the ``OSError`` of the dial (``FileNotFoundError``,
        ``ConnectionRefusedError``, ...) or ``TimeoutError``.
        """
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, protocol = await loop.create_unix_connection(_ClientProtocol, os.fspath(path))
        return cls(protocol)

    @property
    def closed(self) -> bool:
        return self._protocol.closed_reason is not None

    async def call(
        self,
        service: str,
        method: str,
        request: betterproto.Message,
        response_type: type[_M],
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> _M:
        """Make one unary call and return the decoded response.

        ``timeout`` (seconds) bounds the wait here and is sent as the request's
        ``timeout_nano`` so the server can stop early too. Raises
        :class:`RpcError` with the server's status on failure,
        :class:`DeadlineExceededError` on timeout and :class:`ClosedError`
        when the connection is or becomes closed.
        """
        protocol = self._protocol
        if protocol.closed_reason is not None:
            raise ClosedError(protocol.closed_reason)
        stream_id = self._next_stream_id
        if stream_id > _MAX_STREAM_ID:
            raise ClosedError("ttrpc: stream ids exhausted on this connection")
        self._next_stream_id += 2
        # Go's MD helpers lower-case keys before they go on the wire.
        pairs = [(k.lower(), v) for k, v in (metadata or {}).items()]
        timeout_nano = 0 if timeout is None else max(1, int(timeout * 1e9))
        try:
            frame = codec.encode_request(
                stream_id,
                service,
                method,
                bytes(request),
                timeout_nano=timeout_nano,
                metadata=pairs,
            )
        except codec.MessageTooLargeError as exc:
            raise RpcError(str(exc), Code.RESOURCE_EXHAUSTED) from exc
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                data = await protocol.round_trip(stream_id, frame)
        except TimeoutError:
            if scope.expired():
                raise DeadlineExceededError() from None
            raise
        return _unpack(data, response_type)

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with :class:`ClosedError`."""
        await self._protocol.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _unpack(data: bytes, response_type: type[_M]) -> _M:
    try:
        response = codec.decode_response(data)
    except codec.EnvelopeError as exc:
        raise RpcError(f"ttrpc: bad response: {exc}", Code.INTERNAL) from exc
    code = response.status.code
    if code != Code.OK:
        try:
            status = Code(code)
        except ValueError:
            status = Code.UNKNOWN
        raise RpcError(response.status.message, status)
    try:
        return codec.decode_message(response_type, response.payload)
    except codec.EnvelopeError as exc:
        raise RpcError(f"ttrpc: {exc}", Code.INTERNAL) from exc


class _ClientProtocol(asyncio.Protocol):
    """Moves frames; pending calls wait on futures keyed by stream id."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._decoder = codec.FrameDecoder()
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._writable = asyncio.Event()
        self._writable.set()
        self._lost = asyncio.get_running_loop().create_future()
        self.closed_reason: str | None = None

    async def round_trip(self, stream_id: int, frame: bytes) -> bytes:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = future
        try:
            await self._writable.wait()
            if self.closed_reason is not None:
                raise ClosedError(self.closed_reason)
            assert self._transport is not None
            self._transport.write(frame)
            return await future
        finally:
            # A late response for an abandoned call is then dropped on arrival.
            self._pending.pop(stream_id, None)
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # mark retrieved: no "never retrieved" noise

    async def close(self) -> None:
        self._fail("ttrpc: closed")
        if self._transport is not None:
            self._transport.close()
            await asyncio.shield(self._lost)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            events = self._decoder.feed(data)
        except codec.ProtocolError as exc:
            log.warning("ttrpc client: closing connection: %s", exc)
            self._fail(f"ttrpc: closed: {exc}")
            assert self._transport is not None
            self._transport.abort()
            return
        for event in events:
            self._dispatch(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("ttrpc: closed")
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _dispatch(self, event: codec.Event) -> None:
        if event.type is not codec.FrameType.RESPONSE:
            log.debug("ttrpc client: ignoring %s frame", event.type.name)
            return
        future = self._pending.get(event.stream_id)
        if future is None or future.done():
            log.debug("ttrpc client: response for unknown stream %d", event.stream_id)
            return
        if isinstance(event, codec.FrameTooLarge):
            future.set_exception(RpcError(event.message, Code.RESOURCE_EXHAUSTED))
        else:
            future.set_result(event.data)

    def _fail(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
        self._writable.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ClosedError(self.closed_reason))
