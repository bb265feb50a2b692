"""Test doubles for the ttrpc tests: a tiny message type, a listening socket in a
short temporary directory, and a raw connection that speaks frames directly."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import betterproto

from shim.api.ttrpc import Response
from shim.ttrpc import codec
from shim.ttrpc.server import Server


@dataclass(eq=False, repr=False)
class Echo(betterproto.Message):
    """Field 1 is a string, like ConnectRequest.id and most task API requests."""

    text: str = betterproto.string_field(1)


@contextmanager
def socket_dir() -> Iterator[Path]:
    """A fresh short directory: sun_path holds only 108 bytes, and pytest's
    tmp_path with a parametrized test name can be longer than that."""
    path = Path(tempfile.mkdtemp(prefix="ttrpc-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def listening_socket(path: Path) -> socket.socket:
    """What the shim's ``start`` does before it hands the fd to the daemon."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.fspath(path))
    sock.listen(16)
    return sock


@asynccontextmanager
async def serving(server: Server) -> AsyncIterator[Path]:
    """Run ``server`` on a fresh socket; yield the socket path; close it after."""
    with socket_dir() as directory:
        path = directory / "s"
        await server.serve_socket(listening_socket(path))
        try:
            yield path
        finally:
            await server.close()


class RawConnection:
    """A client that writes arbitrary bytes and reads frames back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._decoder = codec.FrameDecoder()
        self._events: list[codec.Event] = []

    @classmethod
    async def open(cls, path: Path) -> RawConnection:
        reader, writer = await asyncio.open_unix_connection(os.fspath(path))
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(
        self,
        stream_id: int,
        service: str,
        method: str,
        payload: bytes = b"",
        *,
        timeout_nano: int = 0,
        metadata: Iterable[tuple[str, str]] = (),
    ) -> None:
        frame = codec.encode_request(
            stream_id, service, method, payload, timeout_nano=timeout_nano, metadata=metadata
        )
        await self.send(frame)

    async def next_event(self, timeout: float = 5.0) -> codec.Event:
        async with asyncio.timeout(timeout):
            while not self._events:
                data = await self.reader.read(1 << 16)
                if not data:
                    raise EOFError("server closed the connection")
                self._events.extend(self._decoder.feed(data))
        return self._events.pop(0)

    async def response(self, timeout: float = 5.0) -> tuple[int, Response]:
        """The next frame, which must be a response: (stream id, envelope)."""
        event = await self.next_event(timeout)
        assert isinstance(event, codec.Frame)
        assert event.type is codec.FrameType.RESPONSE
        return event.stream_id, codec.decode_response(event.data)

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:
        async with asyncio.timeout(timeout):
            return await self.reader.read() == b""

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError):
            await self.writer.wait_closed()
