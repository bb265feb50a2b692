"""The daemon under what containerd does only by accident and an attacker on
purpose: cancelled calls, hostile ids, garbage on its socket. "Nothing lost":
the retried call gets the answer, every event is sent once, Shutdown is
honoured, no sandbox, fd or process is left, and the daemon still serves."""

from __future__ import annotations

import asyncio
import os
import random
import struct

import pytest
from betterproto.lib.google.protobuf import Any, Empty

from shim.api.containerd.task import v2 as api
from shim.api.containerd.v1.types import Status
from shim.ttrpc.client import DeadlineExceededError
from shim.ttrpc.status import Code, RpcError
from tests.e2e import leftovers
from tests.integration.shim_daemon import ShimDaemon, shim_daemon, wait_gone

pytestmark = pytest.mark.integration


async def _run_to_exit(daemon: ShimDaemon, cid: str) -> None:
    await daemon.create(cid, ["true"])
    await daemon.call("Start", api.StartRequest(id=cid), api.StartResponse)
    await daemon.call("Wait", api.WaitRequest(id=cid), api.WaitResponse)


@pytest.mark.asyncio
async def test_a_delete_whose_call_times_out_still_completes_once() -> None:
    async with shim_daemon() as daemon:
        await _run_to_exit(daemon, "c1")
        with pytest.raises(DeadlineExceededError):
            await daemon.call("Delete", api.DeleteRequest(id="c1"), api.DeleteResponse,
                              timeout=0.001)
        again = await daemon.call("Delete", api.DeleteRequest(id="c1"), api.DeleteResponse)
        third = await daemon.call("Delete", api.DeleteRequest(id="c1"), api.DeleteResponse)
        assert (again.pid, again.exit_status) == (third.pid, third.exit_status)
        assert again.exit_status == 0
        await asyncio.sleep(0.2)
        assert daemon.events.topics().count("/tasks/delete") == 1
        assert leftovers.runsc_state(daemon.runsc_root) == []
        await daemon.call("Shutdown", api.ShutdownRequest(id="c1"), Empty)
        assert await wait_gone(daemon.pid), "Shutdown after the delete must end the daemon"


@pytest.mark.asyncio
async def test_a_create_whose_call_times_out_is_tracked_and_deletable() -> None:
    async with shim_daemon() as daemon:
        with pytest.raises(DeadlineExceededError):
            await daemon.call("Create", daemon.create_request("c2", ["sleep", "60"]),
                              api.CreateTaskResponse, timeout=0.05)
        # What containerd does after a Create it gave up on: Delete, then Shutdown.
        deleted = await daemon.call("Delete", api.DeleteRequest(id="c2"), api.DeleteResponse)
        assert deleted.pid > 0
        assert daemon.events.topics() == ["/tasks/create", "/tasks/delete"]
        assert leftovers.runsc_state(daemon.runsc_root) == []
        await daemon.call("Shutdown", api.ShutdownRequest(id="c2"), Empty)
        assert await wait_gone(daemon.pid)


@pytest.mark.asyncio
@pytest.mark.parametrize("cid", [".", "..", "x/../../y", "a b", "-x", "x" * 77, ""])
async def test_hostile_container_ids_are_refused_before_any_path_is_made(cid: str) -> None:
    async with shim_daemon() as daemon:
        request = daemon.create_request("valid", ["true"])
        request.id = cid
        with pytest.raises(RpcError) as info:
            await daemon.call("Create", request, api.CreateTaskResponse)
        assert info.value.code == Code.INVALID_ARGUMENT, info.value
        assert "container id" in info.value.message
        assert list(daemon.runsc_root.iterdir()) == []
        assert daemon.events.seen == []


@pytest.mark.asyncio
async def test_hostile_exec_ids_are_refused() -> None:
    async with shim_daemon() as daemon:
        await daemon.create("c3", ["sleep", "60"])
        await daemon.call("Start", api.StartRequest(id="c3"), api.StartResponse)
        for exec_id in ("../../etc/x", ".", ""):
            with pytest.raises(RpcError) as info:
                await daemon.call("Exec", api.ExecProcessRequest(id="c3", exec_id=exec_id),
                                  Empty)
            assert info.value.code == Code.INVALID_ARGUMENT, exec_id
        await daemon.call("Kill", api.KillRequest(id="c3", signal=9), Empty)
        await daemon.call("Wait", api.WaitRequest(id="c3"), api.WaitResponse)
        await daemon.call("Delete", api.DeleteRequest(id="c3"), api.DeleteResponse)


@pytest.mark.asyncio
async def test_bad_input_is_invalid_argument_and_leaves_nothing() -> None:
    """The real daemon and runsc: a stdio FIFO that is not there, an exec with
    no command, a signal number past SIGRTMAX. Each is InvalidArgument naming
    what is wrong, runsc keeps nothing, and the daemon goes on serving."""
    async with shim_daemon() as daemon:
        request = daemon.create_request("c5", ["true"])
        request.stdout = str(daemon.workdir / "no-such-fifo")
        with pytest.raises(RpcError) as info:
            await daemon.call("Create", request, api.CreateTaskResponse)
        assert info.value.code == Code.INVALID_ARGUMENT, info.value
        assert "stdout" in info.value.message and "no-such-fifo" in info.value.message
        assert leftovers.runsc_state(daemon.runsc_root) == []
        assert daemon.events.seen == []

        await daemon.create("c6", ["sleep", "60"])
        await daemon.call("Start", api.StartRequest(id="c6"), api.StartResponse)
        no_args = api.ExecProcessRequest(id="c6", exec_id="e1", spec=Any(
            type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
            value=b'{"cwd": "/", "env": ["PATH=/bin"]}'))
        for method, call in (("Exec", no_args), ("Kill", api.KillRequest(id="c6", signal=99)),
                             ("Kill", api.KillRequest(id="c6", signal=0))):
            with pytest.raises(RpcError) as info:
                await daemon.call(method, call, Empty)
            assert info.value.code == Code.INVALID_ARGUMENT, info.value
        state = await daemon.call("State", api.StateRequest(id="c6"), api.StateResponse)
        assert state.status == Status.RUNNING
        await daemon.call("Kill", api.KillRequest(id="c6", signal=9), Empty)
        await daemon.call("Wait", api.WaitRequest(id="c6"), api.WaitResponse)
        await daemon.call("Delete", api.DeleteRequest(id="c6"), api.DeleteResponse)
        assert leftovers.runsc_state(daemon.runsc_root) == []


def _frame(stream_id: int, kind: int, payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">IIBB", len(payload), stream_id, kind, flags) + payload


@pytest.mark.asyncio
async def test_garbage_on_the_socket_leaves_the_daemon_serving() -> None:
    """Thousands of random, truncated, oversized and wrong-type frames, each on
    its own connection; afterwards State and Exec still work and the daemon's
    fd count is where it was."""
    rng = random.Random(7)
    async with shim_daemon() as daemon:
        await daemon.create("c4", ["sleep", "60"])
        await daemon.call("Start", api.StartRequest(id="c4"), api.StartResponse)
        socket_path = daemon.socket_path
        baseline = daemon.fds()
        valid = bytes(api.StateRequest(id="c4"))
        for i in range(2000):
            kind = i % 6
            if kind == 0:
                data = rng.randbytes(rng.randrange(1, 64))
            elif kind == 1:  # a header that promises more than comes
                data = _frame(1, 1, rng.randbytes(8))[:-4]
            elif kind == 2:  # a frame over the 4 MiB message cap
                data = struct.pack(">IIBB", 5 << 20, 1, 1, 0) + b"x" * 1024
            elif kind == 3:  # a request that is not a ttrpc.Request
                data = _frame(1, 1, rng.randbytes(rng.randrange(1, 200)))
            elif kind == 4:  # an even stream id, a response frame, an unknown type
                data = _frame(2, 1, valid) + _frame(3, 2, valid) + _frame(5, 9, valid)
            else:  # a well-formed request for a method with a garbage payload
                data = _frame(1, 1, b"\n\x1bcontainerd.task.v2.Task\x12\x05State"
                              b"\x1a\x03\xff\xff\xff")
            reader, writer = await asyncio.open_unix_connection(socket_path)
            writer.write(data)
            with_eof = rng.random() < 0.5
            if with_eof:
                writer.write_eof()
            await writer.drain()
            if with_eof:
                await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await writer.wait_closed()
        state = await daemon.call("State", api.StateRequest(id="c4"), api.StateResponse)
        assert state.status == 2  # RUNNING
        await daemon.call("Exec", api.ExecProcessRequest(
            id="c4", exec_id="e1", spec=Any(type_url="types.containerd.io/opencontainers/"
                                               "runtime-spec/1/Process",
                                               value=b'{"args":["true"],"cwd":"/"}')), Empty)
        await daemon.call("Start", api.StartRequest(id="c4", exec_id="e1"), api.StartResponse)
        waited = await daemon.call("Wait", api.WaitRequest(id="c4", exec_id="e1"),
                                   api.WaitResponse)
        assert waited.exit_status == 0
        await daemon.call("Delete", api.DeleteRequest(id="c4", exec_id="e1"), api.DeleteResponse)
        await asyncio.sleep(0.5)  # connections the daemon is still closing
        assert daemon.fds() <= baseline, os.listdir(f"/proc/{daemon.pid}/fd")
        await daemon.call("Kill", api.KillRequest(id="c4", signal=9), Empty)
        await daemon.call("Wait", api.WaitRequest(id="c4"), api.WaitResponse)
        await daemon.call("Delete", api.DeleteRequest(id="c4"), api.DeleteResponse)
