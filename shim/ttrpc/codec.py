"""ttrpc framing and envelopes, without IO.

Theory of operation
-------------------
A ttrpc connection is a byte stream of frames: a 10-byte big-endian header
(data length u32, stream id u32, type u8, flags u8) followed by ``length`` data
bytes (shim-protocol.md §1.1; ttrpc ``channel.go``). A request frame carries a
``ttrpc.Request`` envelope, a response frame a ``ttrpc.Response``.

:class:`FrameDecoder` is fed whatever bytes arrive and hands back the complete
frames it found, as frozen events. It owns no socket and knows nothing about
asyncio, so the server, the client and the tests drive the same object.

The decoder is a small state machine (``_State``): read a header, then either
read the body or, for an oversized frame, skip the body. Skipping keeps the
stream in sync, and the :class:`FrameTooLarge` event lets the caller answer
ResourceExhausted on that stream, which is what the Go receiver does. Frames of
an unknown type are consumed and dropped (the 1.1 server ignores them too).

Only one thing is beyond repair: a length with the reserved top byte set. No
conforming sender can produce it (the cap is far below 16 MiB), so the peer is
not speaking ttrpc at all -- an HTTP request line, say, reads as a 1 GiB frame.
Go would try to skip that many bytes; we raise :class:`RemoteProtocolError`
instead, and the decoder refuses all further input (``ERROR`` is terminal).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

import betterproto

from shim.api.google.rpc import Status
from shim.api.ttrpc import KeyValue, Request, Response
from shim.protowire import WireFormatError, strict_parse
from shim.ttrpc.status import Code

__all__ = [
    "HEADER_LENGTH",
    "MAX_MESSAGE_LENGTH",
    "EnvelopeError",
    "Event",
    "Flags",
    "Frame",
    "FrameDecoder",
    "FrameTooLarge",
    "FrameType",
    "LocalProtocolError",
    "MessageTooLargeError",
    "ProtocolError",
    "RemoteProtocolError",
    "decode_message",
    "decode_request",
    "decode_response",
    "encode_frame",
    "encode_request",
    "encode_response",
]

# channel.go: messageHeaderLength.
HEADER_LENGTH = 10
# channel.go: messageLengthMax; a frame of exactly this many data bytes is legal.
MAX_MESSAGE_LENGTH = 4 << 20
# The header's first byte is reserved: every legal length is below 1 << 24.
_RESERVED_LENGTH = 1 << 24
_MAX_STREAM_ID = 0xFFFF_FFFF
_HEADER = struct.Struct(">IIBB")

_M = TypeVar("_M", bound=betterproto.Message)


class FrameType(enum.IntEnum):
    """channel.go: messageTypeRequest / messageTypeResponse / messageTypeData."""

    REQUEST = 1
    RESPONSE = 2
    DATA = 3


class Flags(enum.IntFlag):
    """Frame flags of ttrpc >= 1.2 (PROTOCOL.md). Unary calls send none."""

    REMOTE_CLOSED = 0x01
    REMOTE_OPEN = 0x02
    NO_DATA = 0x04


class ProtocolError(Exception):
    """The byte stream broke the ttrpc framing; the connection is unusable."""

    def __init__(self, message: str) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise RemoteProtocolError or LocalProtocolError")
        super().__init__(message)


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that cannot be ttrpc."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something ttrpc cannot carry."""


class MessageTooLargeError(LocalProtocolError):
    """A frame to send exceeds :data:`MAX_MESSAGE_LENGTH` (Go's sender refuses it too)."""

    def __init__(self, length: int) -> None:
        super().__init__(_too_large_message(length))
        self.length = length


class EnvelopeError(ValueError):
    """Bytes that do not decode as the expected message: a ``ttrpc.Request`` or
    ``ttrpc.Response`` envelope, or the payload inside one."""


def _too_large_message(length: int) -> str:
    """The status text for an oversized message (wording after Go's)."""
    return f"message length {length} exceeds maximum message size of {MAX_MESSAGE_LENGTH}"


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete frame of a known type."""

    stream_id: int
    type: FrameType
    data: bytes
    flags: int = 0


@dataclass(frozen=True, slots=True)
class FrameTooLarge:
    """A frame whose body was over the cap and has been skipped.

    For a request the server answers ResourceExhausted on ``stream_id``; for a
    response the client fails that call with ResourceExhausted.
    """

    stream_id: int
    type: FrameType
    flags: int
    length: int

    @property
    def message(self) -> str:
        return _too_large_message(self.length)


Event = Frame | FrameTooLarge


def encode_frame(stream_id: int, type: FrameType, data: bytes, flags: int = 0) -> bytes:
    """Header plus data, ready for the wire."""
    if len(data) > MAX_MESSAGE_LENGTH:
        raise MessageTooLargeError(len(data))
    if not 0 <= stream_id <= _MAX_STREAM_ID:
        raise LocalProtocolError(f"stream id {stream_id} does not fit in 32 bits")
    if not 0 <= flags <= 0xFF:
        raise LocalProtocolError(f"flags {flags:#x} do not fit in 8 bits")
    return _HEADER.pack(len(data), stream_id, int(type), flags) + data


class _State(enum.Enum):
    HEADER = "reading a header"
    BODY = "reading a body"
    DISCARD = "skipping an oversized body"
    ERROR = "broken"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class _Header:
    length: int
    stream_id: int
    type: int
    flags: int


class FrameDecoder:
    """Turns received bytes into :data:`Event` objects; see the module docstring."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._state = _State.HEADER
        self._header = _Header(0, 0, 0, 0)
        self._to_skip = 0
        self._error: str | None = None

    @property
    def mid_frame(self) -> bool:
        """Whether part of a frame has been received but not the rest."""
        return bool(self._buffer) or self._state in (_State.BODY, _State.DISCARD)

    def feed(self, data: bytes) -> list[Event]:
        """Consume ``data``; return the frames completed by it, in order.

        Raises :class:`RemoteProtocolError` on input that cannot be ttrpc
        (events completed earlier in the same call are dropped with it: the
        connection is to be closed anyway), and on any call after that.
        """
        if self._state is _State.ERROR:
            raise RemoteProtocolError(f"decoder already failed: {self._error}")
        if self._state is _State.CLOSED:
            raise RemoteProtocolError("data after end of stream")
        self._buffer += data
        events: list[Event] = []
        pos = 0
        try:
            while True:
                step = _STEPS[self._state](self, pos)
                if step is None:
                    break
                pos, event = step
                if event is not None:
                    events.append(event)
        except RemoteProtocolError as exc:
            self._fail(str(exc))
            raise
        del self._buffer[:pos]
        return events

    def eof(self) -> None:
        """The peer closed its side. Raises if it stopped in the middle of a frame."""
        if self._state is _State.ERROR:
            return
        truncated = self.mid_frame
        self._state = _State.CLOSED
        if truncated:
            self._buffer.clear()
            raise RemoteProtocolError("connection closed in the middle of a frame")

    def _fail(self, reason: str) -> None:
        self._state = _State.ERROR
        self._error = reason
        self._buffer.clear()

    # Each step looks at the buffer from ``pos`` and returns None when it needs
    # more bytes, else the new position and possibly a completed event.

    def _read_header(self, pos: int) -> tuple[int, Event | None] | None:
        if len(self._buffer) - pos < HEADER_LENGTH:
            return None
        header = _Header(*_HEADER.unpack_from(self._buffer, pos))
        if header.length >= _RESERVED_LENGTH:
            raise RemoteProtocolError(
                f"frame length {header.length:#010x} sets the reserved header byte; "
                "the peer is not speaking ttrpc"
            )
        self._header = header
        if header.length > MAX_MESSAGE_LENGTH:
            self._to_skip = header.length
            self._state = _State.DISCARD
        else:
            self._state = _State.BODY
        return pos + HEADER_LENGTH, None

    def _read_body(self, pos: int) -> tuple[int, Event | None] | None:
        header = self._header
        end = pos + header.length
        if len(self._buffer) < end:
            return None
        self._state = _State.HEADER
        if header.type not in _KNOWN_TYPES:
            return end, None
        data = bytes(self._buffer[pos:end])
        return end, Frame(header.stream_id, FrameType(header.type), data, header.flags)

    def _skip_body(self, pos: int) -> tuple[int, Event | None] | None:
        available = len(self._buffer) - pos
        if available == 0 and self._to_skip:
            return None
        skipped = min(available, self._to_skip)
        self._to_skip -= skipped
        pos += skipped
        if self._to_skip:
            return pos, None
        self._state = _State.HEADER
        header = self._header
        if header.type not in _KNOWN_TYPES:
            return pos, None
        return pos, FrameTooLarge(
            header.stream_id, FrameType(header.type), header.flags, header.length
        )


_KNOWN_TYPES = frozenset(int(t) for t in FrameType)
_STEPS = {
    _State.HEADER: FrameDecoder._read_header,
    _State.BODY: FrameDecoder._read_body,
    _State.DISCARD: FrameDecoder._skip_body,
}


# --- envelopes ------------------------------------------------------------


def encode_request(
    stream_id: int,
    service: str,
    method: str,
    payload: bytes,
    *,
    timeout_nano: int = 0,
    metadata: Iterable[tuple[str, str]] = (),
) -> bytes:
    """A complete request frame (flags 0: unary)."""
    request = Request(
        service=service,
        method=method,
        payload=payload,
        timeout_nano=timeout_nano,
        metadata=[KeyValue(key=k, value=v) for k, v in metadata],
    )
    return encode_frame(stream_id, FrameType.REQUEST, bytes(request))


def encode_response(
    stream_id: int, payload: bytes = b"", *, code: Code = Code.OK, message: str = ""
) -> bytes:
    """A complete response frame.

    Success omits the status. A failure carries no payload, because Go clients
    decode the payload before they look at the status (§1.3).
    """
    if code is Code.OK:
        response = Response(payload=payload)
    else:
        response = Response(status=Status(code=int(code), message=message))
    return encode_frame(stream_id, FrameType.RESPONSE, bytes(response))


def decode_request(data: bytes) -> Request:
    """Parse a request frame's data; :class:`EnvelopeError` if it is not one."""
    request = _parse(Request(), data)
    if not (
        isinstance(request.service, str)
        and isinstance(request.method, str)
        and isinstance(request.payload, bytes)
        and isinstance(request.timeout_nano, int)
        and all(
            isinstance(kv, KeyValue) and isinstance(kv.key, str) and isinstance(kv.value, str)
            for kv in request.metadata
        )
    ):
        raise EnvelopeError("malformed ttrpc.Request")
    return request


def decode_response(data: bytes) -> Response:
    """Parse a response frame's data; :class:`EnvelopeError` if it is not one."""
    response = _parse(Response(), data)
    status = response.status
    if not (
        isinstance(response.payload, bytes)
        and isinstance(status, Status)
        and isinstance(status.code, int)
        and isinstance(status.message, str)
    ):
        raise EnvelopeError("malformed ttrpc.Response")
    return response


def decode_message(message_type: type[_M], data: bytes) -> _M:
    """Parse a protobuf message; :class:`EnvelopeError` if ``data`` is not one."""
    return _parse(message_type(), data)


def _parse(message: _M, data: bytes) -> _M:
    try:
        return strict_parse(message, data)
    except WireFormatError as exc:
        raise EnvelopeError(str(exc)) from exc
