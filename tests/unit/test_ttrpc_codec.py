"""The sans-IO ttrpc codec: frames, envelopes, and what broken input does."""

from __future__ import annotations

import contextlib
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shim.api.google.rpc import Status
from shim.ttrpc.codec import (
    HEADER_LENGTH,
    MAX_MESSAGE_LENGTH,
    EnvelopeError,
    Event,
    Frame,
    FrameDecoder,
    FrameTooLarge,
    FrameType,
    LocalProtocolError,
    MessageTooLargeError,
    ProtocolError,
    RemoteProtocolError,
    decode_request,
    decode_response,
    encode_frame,
    encode_request,
    encode_response,
)
from shim.ttrpc.status import Code

REQ, RESP, DATA = FrameType.REQUEST, FrameType.RESPONSE, FrameType.DATA

# shim-protocol.md §1.3, the worked example: Connect for task "demo" in
# namespace "default" on stream 1, its reply, and an error on stream 3.
CONNECT_REQUEST = (
    bytes.fromhex("00000051 00000001 01 00")
    + b"\x0a\x17containerd.task.v2.Task"
    + b"\x12\x07Connect"
    + b"\x1a\x06\x0a\x04demo"
    + b"\x2a\x25\x0a\x1acontainerd-namespace-ttrpc\x12\x07default"
)
CONNECT_REPLY = bytes.fromhex("00000008 00000001 02 00  1206 08d209 10ae2c")
NOT_FOUND_REPLY = bytes.fromhex("0000000f 00000003 02 00 0a0d 0805 1209") + b"not found"


def header(length: int, stream_id: int, type: int, flags: int = 0) -> bytes:
    return struct.pack(">IIBB", length, stream_id, type, flags)


def decode_all(data: bytes, chunk: int | None = None) -> list[Event]:
    decoder = FrameDecoder()
    if chunk is None:
        events = decoder.feed(data)
    else:
        events = []
        for i in range(0, len(data), chunk):
            events += decoder.feed(data[i : i + chunk])
    assert not decoder.mid_frame
    decoder.eof()
    return events


TOO_BIG = MAX_MESSAGE_LENGTH + 1

FRAME_CASES = [
    pytest.param(
        CONNECT_REQUEST,
        [Frame(1, REQ, CONNECT_REQUEST[HEADER_LENGTH:])],
        id="worked-example-request",
    ),
    pytest.param(CONNECT_REPLY, [Frame(1, RESP, CONNECT_REPLY[HEADER_LENGTH:])], id="worked-reply"),
    pytest.param(header(0, 7, 1), [Frame(7, REQ, b"")], id="empty-request"),
    pytest.param(header(2, 9, 3, 0x05) + b"hi", [Frame(9, DATA, b"hi", 0x05)], id="data-flags"),
    pytest.param(
        header(1, 1, 1) + b"a" + header(1, 3, 2) + b"b",
        [Frame(1, REQ, b"a"), Frame(3, RESP, b"b")],
        id="two-frames",
    ),
    pytest.param(
        header(3, 1, 0x07) + b"xyz" + header(0, 0, 0) + header(1, 3, 1) + b"k",
        [Frame(3, REQ, b"k")],
        id="unknown-types-skipped",
    ),
    pytest.param(
        header(TOO_BIG, 5, 1, 0x02) + bytes(TOO_BIG) + header(1, 7, 1) + b"z",
        [FrameTooLarge(5, REQ, 0x02, TOO_BIG), Frame(7, REQ, b"z")],
        id="oversize-skipped-in-sync",
    ),
    pytest.param(
        header(TOO_BIG, 5, 0x09) + bytes(TOO_BIG) + header(0, 7, 2),
        [Frame(7, RESP, b"")],
        id="oversize-unknown-type-dropped",
    ),
    pytest.param(
        header(MAX_MESSAGE_LENGTH, 1, 3) + bytes(MAX_MESSAGE_LENGTH),
        [Frame(1, DATA, bytes(MAX_MESSAGE_LENGTH))],
        id="exactly-the-cap",
    ),
]


@pytest.mark.parametrize(("wire", "expected"), FRAME_CASES)
def test_decode(wire: bytes, expected: list[Event]) -> None:
    # Whole, byte by byte, and across header/body boundaries; megabyte frames
    # in coarser pieces only to save time.
    chunks = (None, 1, 3, 4096) if len(wire) < 100_000 else (None, 4093, 1 << 20)
    for chunk in chunks:
        assert decode_all(wire, chunk) == expected, f"chunk={chunk}"


def test_oversize_event_comes_once_body_is_skipped() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(header(TOO_BIG, 1, 1)) == []
    assert decoder.mid_frame
    assert decoder.feed(bytes(TOO_BIG - 1)) == []
    [event] = decoder.feed(b"\0")
    assert event == FrameTooLarge(1, REQ, 0, TOO_BIG)
    assert event.message == f"message length {TOO_BIG} exceeds maximum message size of {4 << 20}"


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", "reserved header byte", id="http"),
        pytest.param(header(1 << 24, 1, 1), "reserved header byte", id="16MiB"),
        pytest.param(header(1, 1, 1) + b"a" + b"\xff" * 10, "reserved header byte", id="after-ok"),
    ],
)
def test_malformed_input_breaks_decoder_for_good(wire: bytes, error: str) -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError, match=error):
        decoder.feed(wire)
    with pytest.raises(RemoteProtocolError, match="already failed"):
        decoder.feed(header(0, 1, 1))
    decoder.eof()  # nothing more to report


@pytest.mark.parametrize(
    "partial",
    [header(5, 1, 1)[:4], header(5, 1, 1) + b"ab", header(TOO_BIG, 1, 1) + b"ab"],
    ids=["in-header", "in-body", "in-skipped-body"],
)
def test_eof_mid_frame(partial: bytes) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(partial) == []
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        decoder.eof()
    with pytest.raises(RemoteProtocolError, match="after end of stream"):
        decoder.feed(b"")


def test_feed_after_clean_eof() -> None:
    decoder = FrameDecoder()
    decoder.eof()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(header(0, 1, 1))


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((1, REQ, bytes(TOO_BIG)), MessageTooLargeError, "exceeds maximum"),
        ((1 << 32, REQ, b""), LocalProtocolError, "32 bits"),
        ((-1, REQ, b""), LocalProtocolError, "32 bits"),
        ((1, REQ, b"", 0x100), LocalProtocolError, "8 bits"),
    ],
)
def test_encode_refuses(args: tuple, error: type[Exception], match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(error, match=match):
        encode_frame(*args)


def test_protocol_error_is_abstract() -> None:
    with pytest.raises(TypeError):
        ProtocolError("which side?")
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert MessageTooLargeError(TOO_BIG).length == TOO_BIG


# --- envelopes -----------------------------------------------------------------


def test_worked_example_request_bytes() -> None:
    wire = encode_request(
        1,
        "containerd.task.v2.Task",
        "Connect",
        b"\x0a\x04demo",
        metadata=[("containerd-namespace-ttrpc", "default")],
    )
    assert wire == CONNECT_REQUEST
    request = decode_request(wire[HEADER_LENGTH:])
    assert (request.service, request.method, request.payload) == (
        "containerd.task.v2.Task",
        "Connect",
        b"\x0a\x04demo",
    )
    assert [(kv.key, kv.value) for kv in request.metadata] == [
        ("containerd-namespace-ttrpc", "default")
    ]
    assert request.timeout_nano == 0


@pytest.mark.parametrize(
    ("wire", "stream_id", "payload", "code", "message"),
    [
        (CONNECT_REPLY, 1, bytes.fromhex("08d20910ae2c"), Code.OK, ""),
        (NOT_FOUND_REPLY, 3, b"", Code.NOT_FOUND, "not found"),
    ],
)
def test_worked_example_responses(
    wire: bytes, stream_id: int, payload: bytes, code: Code, message: str
) -> None:
    assert encode_response(stream_id, payload, code=code, message=message) == wire
    response = decode_response(wire[HEADER_LENGTH:])
    assert (response.payload, response.status.code, response.status.message) == (
        payload,
        code,
        message,
    )


def test_error_response_drops_payload() -> None:
    wire = encode_response(3, b"ignored", code=Code.NOT_FOUND, message="not found")
    assert wire == NOT_FOUND_REPLY


def test_timeout_round_trips() -> None:
    wire = encode_request(5, "s", "m", b"", timeout_nano=2_000_000_000)
    assert decode_request(wire[HEADER_LENGTH:]).timeout_nano == 2_000_000_000


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x0a\x02\xff\xfe", id="service-not-utf8"),
        pytest.param(b"\x08", id="truncated-varint"),
        pytest.param(b"\x1f", id="wire-type-7"),
        pytest.param(b"\x0a\x05ab", id="short-length"),
        pytest.param(b"\x2a\x02\x0a\x80", id="metadata-truncated"),
    ],
)
def test_undecodable_request(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        decode_request(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x0a\x03\x12\x01\xff", id="status-message-not-utf8"),
        pytest.param(b"\x17", id="wire-type-7"),
        pytest.param(b"\x12\x05ab", id="short-payload"),
    ],
)
def test_undecodable_response(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        decode_response(data)


def test_response_status_absent_means_ok() -> None:
    assert decode_response(b"").status == Status()


# --- properties ------------------------------------------------------------------

frames = st.builds(
    Frame,
    stream_id=st.integers(0, 2**32 - 1),
    type=st.sampled_from(FrameType),
    data=st.binary(max_size=80),
    flags=st.integers(0, 255),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(frames, max_size=12), st.lists(st.integers(0, 10_000), max_size=20))
def test_round_trip_in_any_chunking(sent: list[Frame], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(f.stream_id, f.type, f.data, f.flags) for f in sent)
    decoder = FrameDecoder()
    received: list[Event] = []
    for piece in split(wire, cuts):
        received += decoder.feed(piece)
    assert received == sent
    decoder.eof()


# Streams that look like ttrpc in places: well-formed headers with any type
# byte and small lengths, mixed with noise.
segments = st.one_of(
    st.builds(
        lambda sid, typ, flags, body: header(len(body), sid, typ, flags) + body,
        st.integers(0, 2**32 - 1),
        st.integers(0, 255),
        st.integers(0, 255),
        st.binary(max_size=40),
    ),
    st.binary(max_size=24),
)


@settings(max_examples=300)
@given(st.lists(segments, max_size=10).map(b"".join), st.lists(st.integers(0, 500), max_size=8))
def test_arbitrary_bytes_only_raise_protocol_error(wire: bytes, cuts: list[int]) -> None:
    whole: list[Event] | None
    try:
        whole = FrameDecoder().feed(wire)
    except RemoteProtocolError:
        whole = None

    decoder = FrameDecoder()
    pieces: list[Event] = []
    try:
        for piece in split(wire, cuts):
            pieces += decoder.feed(piece)
    except RemoteProtocolError:
        assert whole is None
        with pytest.raises(RemoteProtocolError):
            decoder.feed(b"")
        return
    assert pieces == whole
    for event in pieces:
        assert isinstance(event, Frame)
        assert len(event.data) <= MAX_MESSAGE_LENGTH


@given(st.binary(max_size=200))
def test_envelope_decoders_only_raise_envelope_error(data: bytes) -> None:
    for decode in (decode_request, decode_response):
        with contextlib.suppress(EnvelopeError):
            decode(data)
