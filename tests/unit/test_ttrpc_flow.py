"""Flow control of the ttrpc server: a peer that sends requests faster than they
finish is held at ``max_in_flight`` handlers by not reading from it, and every
request is still answered once handlers finish."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from shim.ttrpc import codec
from shim.ttrpc.client import Client
from shim.ttrpc.server import CallContext, Server
from shim.ttrpc.status import Code
from tests.unit.ttrpc_helpers import Echo, RawConnection, serving

pytestmark = pytest.mark.asyncio

SVC = "test.v1.Flow"
LIMIT = 16
# ~1 KiB requests, 8 MiB in all: far more than a unix socket buffers, so the
# sender can only finish if the server keeps reading.
COUNT = 8000
PAD = "x" * 1000


@dataclass
class Holding:
    """A handler that holds every call until ``gate`` opens; counts them."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    running: int = 0
    peak: int = 0
    started: int = 0

    async def hold(self, req: Echo, ctx: CallContext) -> Echo:
        self.running += 1
        self.started += 1
        self.peak = max(self.peak, self.running)
        if self.running == LIMIT:
            self.full.set()
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        return Echo(text=req.text[:5])

    async def echo(self, req: Echo, ctx: CallContext) -> Echo:
        return Echo(text=req.text)


def _flood() -> bytes:
    return b"".join(
        codec.encode_request(2 * i + 1, SVC, "Hold", bytes(Echo(text=f"{i:05d}{PAD}")))
        for i in range(COUNT))


async def test_a_flood_is_held_at_the_bound_then_answered_in_full() -> None:
    holding = Holding()
    server = Server(max_in_flight=LIMIT)
    server.register(SVC, "Hold", Echo, holding.hold)
    server.register(SVC, "Echo", Echo, holding.echo)
    async with serving(server) as path:
        raw = await RawConnection.open(path)
        try:
            sender = asyncio.create_task(raw.send(_flood()))
            await asyncio.wait_for(holding.full.wait(), 10)
            (conn,) = server._connections
            assert conn.reading_paused
            for _ in range(100):  # give the loop every chance to start more
                await asyncio.sleep(0)
            assert holding.running == holding.started == LIMIT
            # What was read but not started is at most one read's worth.
            assert len(conn._backlog) < COUNT // 10
            assert not sender.done()  # the rest waits in the peer's socket

            # Another connection is not held up by this one's bound.
            async with await Client.connect(path, timeout=5) as other:
                reply = await other.call(SVC, "Echo", Echo(text="other"), Echo, timeout=5)
                assert reply.text == "other"

            holding.gate.set()
            answered: dict[int, str] = {}
            for _ in range(COUNT):
                stream_id, response = await raw.response(timeout=10)
                assert response.status.code == Code.OK, response.status
                answered[stream_id] = Echo().parse(response.payload).text
            await asyncio.wait_for(sender, 10)
        finally:
            holding.gate.set()
            sender.cancel()
            raw.writer.transport.abort()  # unsent flood data must not hold up the close
            await raw.close()
    assert answered == {2 * i + 1: f"{i:05d}" for i in range(COUNT)}
    assert holding.peak == LIMIT


async def test_handlers_under_the_bound_do_not_pause_reading() -> None:
    holding = Holding()
    server = Server(max_in_flight=LIMIT)
    server.register(SVC, "Hold", Echo, holding.hold)
    server.register(SVC, "Echo", Echo, holding.echo)
    async with serving(server) as path, await Client.connect(path, timeout=5) as client:
        held = [asyncio.create_task(client.call(SVC, "Hold", Echo(text=f"{i:05d}"), Echo))
                for i in range(LIMIT - 1)]
        while holding.started < LIMIT - 1:
            await asyncio.sleep(0.01)
        (conn,) = server._connections
        assert not conn.reading_paused
        reply = await client.call(SVC, "Echo", Echo(text="still read"), Echo, timeout=5)
        assert reply.text == "still read"
        holding.gate.set()
        assert [r.text for r in await asyncio.gather(*held)] == [
            f"{i:05d}" for i in range(LIMIT - 1)]


async def test_the_bound_must_allow_one_call() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        Server(max_in_flight=0)
