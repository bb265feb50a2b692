"""A real ttrpc server and client over a unix socket."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from shim.errors import NotFound
from shim.task.errors import wire_status
from shim.ttrpc import codec
from shim.ttrpc import server as server_module
from shim.ttrpc.client import Client, ClosedError, DeadlineExceededError
from shim.ttrpc.server import CallContext, Server
from shim.ttrpc.status import Code, RpcError
from tests.unit.ttrpc_helpers import Echo, RawConnection, listening_socket, serving, socket_dir

SVC = "test.v1.Echo"
V3 = "test.v3.Echo"


@dataclass
class Handlers:
    """Methods of the test service; they record what they saw."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    contexts: list[CallContext] = field(default_factory=list)

    async def echo(self, req: Echo, ctx: CallContext) -> Echo:
        self.contexts.append(ctx)
        return Echo(text=req.text)

    async def block(self, req: Echo, ctx: CallContext) -> Echo:
        self.started.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return Echo(text="released")

    async def not_found(self, req: Echo, ctx: CallContext) -> Echo:
        raise NotFound("container x: not found")

    async def crash(self, req: Echo, ctx: CallContext) -> Echo:
        raise ValueError("boom")

    async def ok_error(self, req: Echo, ctx: CallContext) -> Echo:
        raise RpcError("odd", Code.OK)

    async def own_timeout(self, req: Echo, ctx: CallContext) -> Echo:
        raise TimeoutError("runsc took too long")

    async def bad_return(self, req: Echo, ctx: CallContext) -> Echo:
        return "not a message"  # type: ignore[return-value]

    async def foreign_cancel(self, req: Echo, ctx: CallContext) -> Echo:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future
        raise AssertionError("unreachable")

    async def huge(self, req: Echo, ctx: CallContext) -> Echo:
        return Echo(text="x" * (codec.MAX_MESSAGE_LENGTH + 1))

    def table(self) -> dict[str, tuple[type[Echo], server_module.Handler]]:
        return {
            "Echo": (Echo, self.echo),
            "Block": (Echo, self.block),
            "NotFound": (Echo, self.not_found),
            "Crash": (Echo, self.crash),
            "OkError": (Echo, self.ok_error),
            "OwnTimeout": (Echo, self.own_timeout),
            "BadReturn": (Echo, self.bad_return),
            "ForeignCancel": (Echo, self.foreign_cancel),
            "Huge": (Echo, self.huge),
        }


@dataclass
class Env:
    server: Server
    path: Path
    handlers: Handlers
    raws: list[RawConnection] = field(default_factory=list)

    async def client(self) -> Client:
        return await Client.connect(self.path, timeout=5)

    async def raw(self) -> RawConnection:
        """A frame-level connection, closed when the test ends."""
        raw = await RawConnection.open(self.path)
        self.raws.append(raw)
        return raw


@pytest_asyncio.fixture
async def env() -> AsyncIterator[Env]:
    handlers = Handlers()
    server = Server(error_status=wire_status)
    server.register_service([SVC, V3], handlers.table())
    async with serving(server) as path:
        env = Env(server, path, handlers)
        try:
            yield env
        finally:
            for raw in env.raws:
                await raw.close()


async def call(
    client: Client,
    method: str,
    text: str = "",
    *,
    timeout: float | None = None,
    metadata: dict[str, str] | None = None,
) -> Echo:
    return await client.call(SVC, method, Echo(text=text), Echo, timeout=timeout, metadata=metadata)


@pytest.mark.asyncio
@pytest.mark.parametrize("service", [SVC, V3])
async def test_echo_under_each_registered_name(env: Env, service: str) -> None:
    async with await env.client() as client:
        assert (await client.call(service, "Echo", Echo(text="hi"), Echo)).text == "hi"


@pytest.mark.asyncio
async def test_calls_on_one_connection_run_concurrently(env: Env) -> None:
    async with await env.client() as client:
        blocked = asyncio.create_task(call(client, "Block"))
        await env.handlers.started.wait()
        assert (await call(client, "Echo", "meanwhile")).text == "meanwhile"
        assert not blocked.done()
        env.handlers.gate.set()
        assert (await blocked).text == "released"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("service", "method", "code", "message"),
    [
        (SVC, "NotFound", Code.NOT_FOUND, "container x: not found"),
        (SVC, "Crash", Code.UNKNOWN, "ValueError: boom"),
        (SVC, "OkError", Code.UNKNOWN, "odd"),
        (SVC, "OwnTimeout", Code.UNKNOWN, "TimeoutError: runsc took too long"),
        (SVC, "BadReturn", Code.UNKNOWN, "TypeError: handler returned str, not a message"),
        (SVC, "ForeignCancel", Code.CANCELLED, "context canceled"),
        (SVC, "Huge", Code.RESOURCE_EXHAUSTED, "exceeds maximum message size"),
        ("nope.Svc", "Echo", Code.UNIMPLEMENTED, "service nope.Svc"),
        (SVC, "Nope", Code.UNIMPLEMENTED, "method Nope"),
    ],
)
async def test_errors_on_the_wire(
    env: Env, service: str, method: str, code: Code, message: str
) -> None:
    async with await env.client() as client:
        with pytest.raises(RpcError) as info:
            await client.call(service, method, Echo(), Echo)
        assert info.value.code is code
        assert message in info.value.message
        # The connection is still good afterwards.
        assert (await call(client, "Echo", "after")).text == "after"


@pytest.mark.asyncio
async def test_error_reply_has_status_and_no_payload(env: Env) -> None:
    raw = await env.raw()
    await raw.request(1, SVC, "NotFound")
    stream_id, response = await raw.response()
    assert stream_id == 1
    assert response.payload == b""
    assert (response.status.code, response.status.message) == (5, "container x: not found")


@pytest.mark.asyncio
async def test_unexpected_exception_logged_with_traceback(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="shim.ttrpc")
    async with await env.client() as client:
        with pytest.raises(RpcError) as info:
            await call(client, "Crash")
    assert "Traceback" not in info.value.message
    [record] = [r for r in caplog.records if r.name == "shim.ttrpc"]
    assert record.exc_info is not None
    assert "Crash" in record.getMessage()


@pytest.mark.asyncio
async def test_context_carries_metadata_namespace_and_deadline(env: Env) -> None:
    async with await env.client() as client:
        await call(
            client,
            "Echo",
            timeout=30,
            metadata={"containerd-namespace-ttrpc": "k8s.io", "TraceParent": "00-ab"},
        )
        await call(client, "Echo")
    with_md, without = env.handlers.contexts
    assert with_md.namespace == "k8s.io"
    assert with_md.metadata == {"containerd-namespace-ttrpc": ["k8s.io"], "traceparent": ["00-ab"]}
    assert with_md.timeout == pytest.approx(30)
    assert with_md.deadline is not None
    assert (with_md.service, with_md.method) == (SVC, "Echo")
    assert (without.namespace, without.timeout, without.deadline, without.metadata) == (
        None,
        None,
        None,
        {},
    )
    # Odd stream ids, counting up from 1 like the Go client.
    assert [with_md.stream_id, without.stream_id] == [1, 3]


@pytest.mark.asyncio
async def test_repeated_metadata_keys_keep_order(env: Env) -> None:
    raw = await env.raw()
    await raw.request(1, SVC, "Echo", metadata=[("k", "a"), ("K", "b")])
    await raw.response()
    assert env.handlers.contexts[0].metadata == {"k": ["a", "b"]}


@pytest.mark.asyncio
async def test_deadline_from_timeout_nano(env: Env) -> None:
    raw = await env.raw()
    await raw.request(1, SVC, "Block", timeout_nano=50_000_000)
    _, response = await raw.response()
    assert response.status.code == Code.DEADLINE_EXCEEDED
    assert env.handlers.cancelled.is_set()


@pytest.mark.asyncio
async def test_client_timeout(env: Env) -> None:
    async with await env.client() as client:
        with pytest.raises(RpcError) as info:
            await call(client, "Block", timeout=0.05)
        # Whichever side noticed first, the code is the same.
        assert info.value.code is Code.DEADLINE_EXCEEDED
        assert (await call(client, "Echo", "ok")).text == "ok"


@pytest.mark.asyncio
async def test_client_local_deadline_is_a_timeout_error() -> None:
    # A socket nobody accepts on: the dial succeeds, no answer ever comes.
    with socket_dir() as directory, listening_socket(directory / "s"):
        async with await Client.connect(directory / "s") as client:
            with pytest.raises(DeadlineExceededError) as info:
                await call(client, "Echo", timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert info.value.code is Code.DEADLINE_EXCEEDED


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\xff" * 10],
    ids=["http", "reserved-byte"],
)
async def test_bad_frame_closes_only_that_connection(env: Env, garbage: bytes) -> None:
    async with await env.client() as bystander:
        raw = await env.raw()
        await raw.request(1, SVC, "Block")
        await env.handlers.started.wait()
        await raw.send(garbage)
        assert await raw.closed_by_peer()
        await asyncio.wait_for(env.handlers.cancelled.wait(), 5)
        assert (await call(bystander, "Echo", "still here")).text == "still here"
        async with await env.client() as newcomer:
            assert (await call(newcomer, "Echo", "new")).text == "new"


@pytest.mark.asyncio
async def test_client_disconnect_cancels_its_calls_only(env: Env) -> None:
    client = await env.client()
    pending = asyncio.create_task(call(client, "Block"))
    await env.handlers.started.wait()
    await client.close()
    with pytest.raises(ClosedError):
        await pending
    await asyncio.wait_for(env.handlers.cancelled.wait(), 5)
    async with await env.client() as other:
        assert (await call(other, "Echo", "fine")).text == "fine"


@pytest.mark.asyncio
async def test_many_concurrent_callers(env: Env) -> None:
    clients = [await env.client() for _ in range(10)]
    try:
        results = await asyncio.gather(
            *(call(c, "Echo", f"{i}-{j}") for i, c in enumerate(clients) for j in range(30))
        )
        assert [r.text for r in results] == [f"{i}-{j}" for i in range(10) for j in range(30)]
    finally:
        for c in clients:
            await c.close()


@pytest.mark.asyncio
async def test_large_messages_both_ways(env: Env) -> None:
    text = "y" * (codec.MAX_MESSAGE_LENGTH - 100)
    async with await env.client() as client:
        assert (await call(client, "Echo", text)).text == text


@pytest.mark.asyncio
async def test_oversize_request_answered_resource_exhausted(env: Env) -> None:
    raw = await env.raw()
    too_big = codec.MAX_MESSAGE_LENGTH + 1
    await raw.send(codec.encode_frame(1, codec.FrameType.REQUEST, b"")[:0])
    await raw.send(
        too_big.to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\x01\x00" + bytes(too_big)
    )
    stream_id, response = await raw.response()
    assert (stream_id, response.status.code) == (1, Code.RESOURCE_EXHAUSTED)
    # The body was skipped, so the next frame is read in sync.
    await raw.request(3, SVC, "Echo", bytes(Echo(text="in sync")))
    stream_id, response = await raw.response()
    assert stream_id == 3
    assert Echo().parse(response.payload).text == "in sync"


@pytest.mark.asyncio
async def test_client_refuses_oversize_request(env: Env) -> None:
    async with await env.client() as client:
        with pytest.raises(RpcError) as info:
            await call(client, "Echo", "z" * codec.MAX_MESSAGE_LENGTH)
        assert info.value.code is Code.RESOURCE_EXHAUSTED
        assert (await call(client, "Echo", "ok")).text == "ok"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("stream_ids", "message"),
    [
        ([2], "StreamID must be odd for client initiated streams"),
        ([5, 5], "StreamID cannot be re-used and must increment"),
        ([5, 3], "StreamID cannot be re-used and must increment"),
    ],
)
async def test_stream_id_rules(env: Env, stream_ids: list[int], message: str) -> None:
    raw = await env.raw()
    for stream_id in stream_ids:
        await raw.request(stream_id, SVC, "Echo")
    # Replies may come in any order: the refusal is written at once, the
    # accepted call's reply when its handler task is done.
    replies = [await raw.response() for _ in stream_ids]
    assert sorted((sid, r.status.code, r.status.message) for sid, r in replies) == sorted(
        [(sid, Code.OK, "") for sid in stream_ids[:-1]]
        + [(stream_ids[-1], Code.INVALID_ARGUMENT, message)]
    )
    await raw.request(7, SVC, "Echo")
    assert (await raw.response())[1].status.code == Code.OK


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (codec.encode_frame(1, codec.FrameType.REQUEST, b"\x0a\x05ab"), "unmarshal request"),
        (codec.encode_request(1, SVC, "Echo", b"\x0a\x02\xff\xfe"), "unmarshal request"),
    ],
    ids=["envelope", "payload"],
)
async def test_undecodable_request(env: Env, frame: bytes, message: str) -> None:
    raw = await env.raw()
    await raw.send(frame)
    _, response = await raw.response()
    assert response.status.code == Code.INVALID_ARGUMENT
    assert message in response.status.message


@pytest.mark.asyncio
async def test_other_frame_types_are_ignored(env: Env) -> None:
    raw = await env.raw()
    await raw.send(codec.encode_frame(1, codec.FrameType.DATA, b"x", 0x01))
    await raw.send(codec.encode_frame(1, codec.FrameType.RESPONSE, b""))
    await raw.send(b"\x00\x00\x00\x01\x00\x00\x00\x01\x09\x00z")  # type 9
    await raw.request(1, SVC, "Echo", bytes(Echo(text="only me")))
    stream_id, response = await raw.response()
    assert (stream_id, Echo().parse(response.payload).text) == (1, "only me")


@pytest.mark.asyncio
async def test_eof_counts_as_disconnect(env: Env) -> None:
    raw = await env.raw()
    await raw.request(1, SVC, "Block")
    await env.handlers.started.wait()
    raw.writer.write_eof()
    await asyncio.wait_for(env.handlers.cancelled.wait(), 5)
    assert await raw.closed_by_peer()


@pytest.mark.asyncio
async def test_graceful_shutdown_finishes_in_flight_calls(env: Env) -> None:
    client = await env.client()
    blocked = asyncio.create_task(call(client, "Block"))
    await env.handlers.started.wait()
    shutdown = asyncio.create_task(env.server.shutdown(timeout=5))
    await asyncio.sleep(0.05)
    # A call made while closing is not answered with a status: the caller sees
    # the connection close (containerd ignores ErrClosed for a second Shutdown).
    late = asyncio.create_task(call(client, "Echo"))
    with pytest.raises(ConnectionRefusedError):
        await Client.connect(env.path)
    await asyncio.sleep(0.05)
    assert not late.done()
    env.handlers.gate.set()
    assert (await blocked).text == "released"
    await asyncio.wait_for(shutdown, 5)
    await asyncio.wait_for(env.server.wait_closed(), 1)
    with pytest.raises(ClosedError):
        await asyncio.wait_for(late, 5)
    with pytest.raises(ClosedError):
        await call(client, "Echo")
    await client.close()


@pytest.mark.asyncio
async def test_shutdown_is_bounded(env: Env) -> None:
    client = await env.client()
    blocked = asyncio.create_task(call(client, "Block"))
    await env.handlers.started.wait()
    loop = asyncio.get_running_loop()
    start = loop.time()
    await env.server.shutdown(timeout=0.1)
    assert loop.time() - start < 2
    assert env.handlers.cancelled.is_set()
    with pytest.raises(ClosedError):
        await blocked
    await client.close()


@pytest.mark.asyncio
async def test_close_is_immediate(env: Env) -> None:
    client = await env.client()
    blocked = asyncio.create_task(call(client, "Block"))
    await env.handlers.started.wait()
    await env.server.close()
    with pytest.raises(ClosedError) as info:
        await blocked
    assert info.value.code is Code.UNAVAILABLE
    assert info.value.message == "ttrpc: closed"
    assert isinstance(info.value, ConnectionError)
    assert env.handlers.cancelled.is_set()
    await client.close()


@pytest.mark.asyncio
async def test_calls_after_client_close_fail(env: Env) -> None:
    client = await env.client()
    await client.close()
    assert client.closed
    with pytest.raises(ClosedError):
        await call(client, "Echo")


@pytest.mark.asyncio
async def test_peer_of_another_user_is_refused(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.getuid", lambda: 4242)
    async with await env.client() as client:
        with pytest.raises(ClosedError):
            await call(client, "Echo")


def test_duplicate_registration_is_an_error() -> None:
    handlers = Handlers()
    server = Server()
    server.register(SVC, "Echo", Echo, handlers.echo)
    with pytest.raises(ValueError, match="already registered"):
        server.register(SVC, "Echo", Echo, handlers.echo)
