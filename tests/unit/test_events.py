"""The event publisher against a real ttrpc server standing in for containerd's
Events service: order, re-dialling while containerd is away, ``kick``, and
what happens to an event containerd refuses or the shim cannot encode."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import betterproto
import pytest
from betterproto.lib.google.protobuf import Empty

from shim.api.containerd import events as ev
from shim.api.containerd.services.events.ttrpc.v1 import ForwardRequest
from shim.daemon.events import Publisher, transient
from shim.ttrpc.client import ClosedError, DeadlineExceededError
from shim.ttrpc.server import CallContext, Server
from shim.ttrpc.status import Code, RpcError
from tests.unit.ttrpc_helpers import listening_socket, socket_dir

pytestmark = pytest.mark.asyncio

SERVICE = "containerd.services.events.ttrpc.v1.Events"


class FakeContainerd:
    """Records (topic, namespace header, event) of every Forward it accepts;
    ``refuse`` may answer a request with an error status instead."""

    def __init__(self, refuse: Callable[[ForwardRequest], Code | None] = lambda r: None) -> None:
        self.got: list[tuple[str, str, bytes]] = []
        self.attempts: list[bytes] = []
        self.arrived = asyncio.Event()
        self.refuse = refuse
        self.server = Server()
        self.server.register(SERVICE, "Forward", ForwardRequest, self.forward)

    async def forward(self, req: ForwardRequest, ctx: CallContext) -> Empty:
        self.attempts.append(req.envelope.event.value)
        code = self.refuse(req)
        if code is not None:
            raise RpcError(f"refused by the test ({code.name})", code)
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
        # A back-off far longer than close's own bound: only the kick close
        # gives the forwarder can get the events out in time.
        pub = Publisher(str(path), "ns1", backoff=(60.0, 60.0))
        pub.start()
        pub.publish("/tasks/exit", "containerd.events.TaskExit", _exit(1))
        pub.publish("/tasks/delete", "containerd.events.TaskDelete",
                    ev.TaskDelete(container_id="c1", pid=42, exit_status=1))
        await asyncio.sleep(1.0)
        fake = FakeContainerd()
        await fake.serve(path)
        await pub.close(timeout=5.0)
        await fake.server.close()
    assert [t for t, _, _ in fake.got] == ["/tasks/exit", "/tasks/delete"]


# --- what a failure means ------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "retry_forever"),
    [
        (ConnectionRefusedError(111, "refused"), True),  # containerd restarting
        (FileNotFoundError(2, "no socket"), True),
        (BrokenPipeError(32, "broken pipe"), True),
        (TimeoutError(), True),  # the dial timed out
        (ClosedError(), True),  # the connection dropped mid-call
        (DeadlineExceededError(), True),
        (RpcError("shutting down", Code.UNAVAILABLE), True),
        (RpcError("bad envelope", Code.INVALID_ARGUMENT), False),
        (RpcError("no such namespace", Code.NOT_FOUND), False),
        (RpcError("panic in handler", Code.UNKNOWN), False),
        (RpcError("too big", Code.RESOURCE_EXHAUSTED), False),
        (RpcError("no events service", Code.UNIMPLEMENTED), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
async def test_which_failures_are_retried_without_end(error: BaseException,
                                                retry_forever: bool) -> None:
    assert transient(error) is retry_forever


FAST = (0.01, 0.02)  # back-off bounds: the behaviour does not depend on them


def _statuses(got: list[tuple[str, str, bytes]]) -> list[int]:
    return [ev.TaskExit().parse(v).exit_status for _, _, v in got]


async def test_a_refused_event_is_dropped_and_the_rest_arrive_in_order(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="shim.daemon.events")
    poison = bytes(_exit(99))
    with socket_dir() as d:
        fake = FakeContainerd(lambda r: Code.INVALID_ARGUMENT
                              if r.envelope.event.value == poison else None)
        await fake.serve(d / "c.ttrpc")
        pub = Publisher(str(d / "c.ttrpc"), "ns1", backoff=FAST)
        pub.start()
        for code in (0, 1, 99, 2, 3):
            pub.publish("/tasks/exit", "containerd.events.TaskExit", _exit(code))
        await pub.close()
        await fake.server.close()
    assert _statuses(fake.got) == [0, 1, 2, 3]
    assert fake.attempts.count(poison) == 5
    dropped = [r.getMessage() for r in caplog.records if "dropping event" in r.getMessage()]
    assert len(dropped) == 1, caplog.text
    assert "/tasks/exit" in dropped[0] and "INVALID_ARGUMENT" in dropped[0], dropped


async def test_unavailable_is_retried_past_the_refusal_bound() -> None:
    """containerd answering Unavailable (going down) is not refusing the event."""
    answers = [Code.UNAVAILABLE] * 8

    def refuse(r: ForwardRequest) -> Code | None:
        return answers.pop() if answers else None

    with socket_dir() as d:
        fake = FakeContainerd(refuse)
        await fake.serve(d / "c.ttrpc")
        pub = Publisher(str(d / "c.ttrpc"), "ns1", backoff=FAST)
        pub.start()
        pub.publish("/tasks/exit", "containerd.events.TaskExit", _exit(7))
        pub.publish("/tasks/exit", "containerd.events.TaskExit", _exit(8))
        await pub.close()
        await fake.server.close()
    assert _statuses(fake.got) == [7, 8]
    assert len(fake.attempts) == 10


@dataclass(eq=False, repr=False)
class Unencodable(betterproto.Message):
    """An event whose serialisation fails (a bug in the shim, say)."""

    def __bytes__(self) -> bytes:
        raise ValueError("cannot encode this")


async def test_an_event_that_cannot_be_encoded_does_not_stop_the_forwarder(
        caplog: pytest.LogCaptureFixture) -> None:
    with socket_dir() as d:
        fake = FakeContainerd()
        await fake.serve(d / "c.ttrpc")
        pub = Publisher(str(d / "c.ttrpc"), "ns1", backoff=FAST)
        pub.start()
        pub.publish("/tasks/exit", "containerd.events.TaskExit", _exit(1))
        pub.publish("/tasks/oom", "containerd.events.TaskOOM", Unencodable())
        pub.publish("/tasks/exit", "containerd.events.TaskExit", _exit(2))
        await pub.close()
        await fake.server.close()
    assert _statuses(fake.got) == [1, 2]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "/tasks/oom" in errors[0].getMessage(), caplog.text
    assert errors[0].exc_info is not None  # the traceback is in the log


async def test_a_forwarder_that_stops_before_close_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    with socket_dir() as d:
        pub = Publisher(str(d / "nobody.ttrpc"), "ns1", backoff=FAST)
        pub.start()
        pub.publish("/tasks/exit", "containerd.events.TaskExit", _exit(1))
        assert pub._task is not None
        pub._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pub._task
        await pub.close()
    stopped = [r.getMessage() for r in caplog.records if "forwarder stopped" in r.getMessage()]
    assert len(stopped) == 1 and "(cancelled)" in stopped[0], caplog.text
