"""The event publisher against a real ttrpc server standing in for containerd's
Events service: order, re-dialling while containerd is away, and ``kick``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from betterproto.lib.google.protobuf import Empty

from shim.api.containerd import events as ev
from shim.api.containerd.services.events.ttrpc.v1 import ForwardRequest
from shim.daemon.events import Publisher
from shim.ttrpc.server import CallContext, Server
from tests.unit.ttrpc_helpers import listening_socket, socket_dir

pytestmark = pytest.mark.asyncio

SERVICE = "containerd.services.events.ttrpc.v1.Events"


class FakeContainerd:
    """Records (topic, namespace header, event) of every Forward."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str, bytes]] = []
        self.arrived = asyncio.Event()
        self.server = Server()
        self.server.register(SERVICE, "Forward", ForwardRequest, self.forward)

    async def forward(self, req: ForwardRequest, ctx: CallContext) -> Empty:
        self.got.append((req.envelope.topic, req.envelope.namespace, req.envelope.event.value))
        self.arrived.set()
        return Empty()

    async def serve(self, path: Path) -> None:
        await self.server.serve_socket(listening_socket(path))


def _exit(code: int) -> ev.TaskExit:
    return ev.TaskExit(container_id="c1", id="c1", pid=42, exit_status=code)


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    # The publisher logs every failed attempt; that is expected here.
    logger = logging.getLogger("shim.daemon.events")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


async def test_events_arrive_in_order() -> None:
    with socket_dir() as d:
        fake = FakeContainerd()
        await fake.serve(d / "c.ttrpc")
        pub = Publisher(f"unix://{d / 'c.ttrpc'}", "ns1")
        pub.start()
        for code in range(5):
            pub.publish("/tasks/exit", "containerd.events.TaskExit", _exit(code))
        await pub.close()
        await fake.server.close()
    assert [(t, ns) for t, ns, _ in fake.got] == [("/tasks/exit", "ns1")] * 5
    assert [ev.TaskExit().parse(v).exit_status for _, _, v in fake.got] == list(range(5))


@pytest.mark.parametrize("kicked", [True, False])
async def test_kick_ends_the_back_off_once_containerd_is_back(kicked: bool) -> None:
    """containerd is down for a while; the publisher's back-off has grown past a
    second. A kick (containerd just called the shim) sends at once; without it
    the event waits for the back-off to run out."""
    with socket_dir() as d:
        path = d / "c.ttrpc"
        pub = Publisher(str(path), "ns1")
        pub.start()
        pub.publish("/tasks/exit", "containerd.events.TaskExit", _exit(3))
        await asyncio.sleep(1.0)  # attempts at ~0, 0.1, 0.3, 0.7; next not before 1.5
        fake = FakeContainerd()
        await fake.serve(path)
        if kicked:
            pub.kick()
        try:
            await asyncio.wait_for(fake.arrived.wait(), 0.3)
            arrived = True
        except TimeoutError:
            arrived = False
        await pub.close()
        await fake.server.close()
    assert arrived is kicked
    assert len(fake.got) == 1


async def test_close_sends_what_is_queued_without_waiting_out_the_back_off() -> None:
    with socket_dir() as d:
        path = d / "c.ttrpc"
        pub = Publisher(str(path), "ns1")
        pub.start()
        pub.publish("/tasks/exit", "containerd.events.TaskExit", _exit(1))
        pub.publish("/tasks/delete", "containerd.events.TaskDelete",
                    ev.TaskDelete(container_id="c1", pid=42, exit_status=1))
        await asyncio.sleep(1.0)
        fake = FakeContainerd()
        await fake.serve(path)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await pub.close(timeout=5.0)
        took = loop.time() - started
        await fake.server.close()
    assert [t for t, _, _ in fake.got] == ["/tasks/exit", "/tasks/delete"]
    assert took < 0.3
