"""The containerd task service (``containerd.task.v2.Task``, also served as v3).

Every handler has one shape: find the container (NotFound), call one container
method, publish the event, build the response. Planning and runsc argv live in
``create.py`` and ``container.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime

import betterproto
from betterproto.lib.google.protobuf import Any, Empty

from shim.api.containerd import events as ev
from shim.api.containerd.runc.v1 import ProcessDetails
from shim.api.containerd.task import v2 as api
from shim.api.containerd.v1.types import ProcessInfo
from shim.api.containerd.v1.types import Status as ApiStatus
from shim.errors import AlreadyExists, InvalidArgument, NotFound, Unimplemented
from shim.events import Publisher
from shim.task import stats as metrics
from shim.task.container import Container
from shim.task.create import prepare
from shim.task.pod import Sandbox
from shim.task.process import Process
from shim.task.state import State
from shim.task.stdio import StdioPaths
from shim.ttrpc.server import CallContext, Handler

__all__ = ["SERVICE_NAMES", "TaskService"]

log = logging.getLogger("shim.task")

SERVICE_NAMES = ("containerd.task.v2.Task", "containerd.task.v3.Task")

_STATUS = {
    State.CREATED: ApiStatus.CREATED,
    State.RUNNING: ApiStatus.RUNNING,
    State.PAUSED: ApiStatus.PAUSED,
    State.STOPPED: ApiStatus.STOPPED,
    State.DELETED: ApiStatus.STOPPED,
}
# Go's zero time: what containerd expects for "not exited" (shim-protocol.md §2.4).
_GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
_PROCESS_DETAILS = "containerd.runc.v1.ProcessDetails"


class TaskService:
    def __init__(self, namespace: str, publisher: Publisher, shutdown: asyncio.Event) -> None:
        self.namespace = namespace
        self.publisher = publisher
        self._shutdown = shutdown
        # Both maps are touched only by handlers on the event loop.
        self.containers: dict[str, Container] = {}
        self.sandboxes: dict[str, Sandbox] = {}  # pod sandbox id -> what it booted with
        self._creating: set[str] = set()
        self._cgroup_v2 = metrics.read_cgroup_v2()

    def handlers(self) -> Mapping[str, tuple[type[betterproto.Message], Handler]]:
        return {
            "Create": (api.CreateTaskRequest, self.create),
            "Start": (api.StartRequest, self.start),
            "Delete": (api.DeleteRequest, self.delete),
            "State": (api.StateRequest, self.state),
            "Wait": (api.WaitRequest, self.wait),
            "Kill": (api.KillRequest, self.kill),
            "Exec": (api.ExecProcessRequest, self.exec),
            "ResizePty": (api.ResizePtyRequest, self.resize_pty),
            "CloseIO": (api.CloseIoRequest, self.close_io),
            "Pause": (api.PauseRequest, self.pause),
            "Resume": (api.ResumeRequest, self.resume),
            "Pids": (api.PidsRequest, self.pids),
            "Stats": (api.StatsRequest, self.stats),
            "Checkpoint": (api.CheckpointTaskRequest, self.checkpoint),
            "Update": (api.UpdateTaskRequest, self.update),
            "Connect": (api.ConnectRequest, self.connect),
            "Shutdown": (api.ShutdownRequest, self.shutdown),
        }

    def _get(self, container_id: str) -> Container:
        try:
            return self.containers[container_id]
        except KeyError:
            raise NotFound(f"container {container_id} does not exist in this shim") from None

    # ------------------------------------------------------------------ lifecycle

    async def create(self, req: api.CreateTaskRequest, ctx: CallContext) -> api.CreateTaskResponse:
        if req.id in self.containers or req.id in self._creating:
            raise AlreadyExists(f"container {req.id} already exists in this shim")
        self._creating.add(req.id)
        try:
            prepared = await prepare(req, namespace=ctx.namespace or self.namespace,
                                     sandboxes=self.sandboxes)
            c = await asyncio.shield(Container.create(prepared.params, self._process_event))
        finally:
            self._creating.discard(req.id)
        self.containers[req.id] = c
        if prepared.sandbox is not None:
            self.sandboxes[req.id] = prepared.sandbox
        self.publisher.publish("/tasks/create", "containerd.events.TaskCreate", ev.TaskCreate(
            container_id=req.id, bundle=req.bundle, rootfs=req.rootfs, pid=c.init.pid,
            io=ev.TaskIo(stdin=req.stdin, stdout=req.stdout, stderr=req.stderr,
                         terminal=req.terminal)))
        return api.CreateTaskResponse(pid=c.init.pid)

    async def start(self, req: api.StartRequest, ctx: CallContext) -> api.StartResponse:
        pid = await asyncio.shield(self._get(req.id).start(req.exec_id))
        return api.StartResponse(pid=pid)

    async def delete(self, req: api.DeleteRequest, ctx: CallContext) -> api.DeleteResponse:
        c = self._get(req.id)
        proc = await asyncio.shield(c.delete(req.exec_id))
        exited_at = proc.exited_at or datetime.now(UTC)
        if proc.is_init:
            del self.containers[req.id]
            self.sandboxes.pop(req.id, None)
            self.publisher.publish("/tasks/delete", "containerd.events.TaskDelete", ev.TaskDelete(
                container_id=req.id, pid=proc.pid, exit_status=proc.exit_status,
                exited_at=exited_at))
        return api.DeleteResponse(pid=proc.pid, exit_status=proc.exit_status, exited_at=exited_at)

    async def exec(self, req: api.ExecProcessRequest, ctx: CallContext) -> Empty:
        try:
            spec = json.loads(bytes(req.spec.value))
        except ValueError as e:
            raise InvalidArgument(f"exec {req.exec_id}: process spec is not JSON: {e}") from None
        self._get(req.id).add_exec(
            req.exec_id, spec, StdioPaths(req.stdin, req.stdout, req.stderr, req.terminal))
        self.publisher.publish("/tasks/exec-added", "containerd.events.TaskExecAdded",
                               ev.TaskExecAdded(container_id=req.id, exec_id=req.exec_id))
        return Empty()

    async def kill(self, req: api.KillRequest, ctx: CallContext) -> Empty:
        await asyncio.shield(self._get(req.id).kill(req.exec_id, req.signal, req.all))
        return Empty()

    async def pause(self, req: api.PauseRequest, ctx: CallContext) -> Empty:
        await asyncio.shield(self._get(req.id).pause())
        self.publisher.publish("/tasks/paused", "containerd.events.TaskPaused",
                               ev.TaskPaused(container_id=req.id))
        return Empty()

    async def resume(self, req: api.ResumeRequest, ctx: CallContext) -> Empty:
        await asyncio.shield(self._get(req.id).resume())
        self.publisher.publish("/tasks/resumed", "containerd.events.TaskResumed",
                               ev.TaskResumed(container_id=req.id))
        return Empty()

    async def checkpoint(self, req: api.CheckpointTaskRequest, ctx: CallContext) -> Empty:
        # CheckpointOptions field 1 is `exit`: stop the container after the image is taken.
        leave_running = not _checkpoint_exits(req.options)
        await asyncio.shield(self._get(req.id).checkpoint(req.path, leave_running=leave_running))
        self.publisher.publish("/tasks/checkpointed", "containerd.events.TaskCheckpointed",
                               ev.TaskCheckpointed(container_id=req.id, checkpoint=req.path))
        return Empty()

    async def update(self, req: api.UpdateTaskRequest, ctx: CallContext) -> Empty:
        self._get(req.id)
        raise Unimplemented(
            f"cannot update container {req.id}: runsc has no `update` command, so a gVisor "
            "sandbox's resources are fixed when it is created; recreate the container with "
            "the new limits")

    # ------------------------------------------------------------------ queries and IO

    async def state(self, req: api.StateRequest, ctx: CallContext) -> api.StateResponse:
        c = self._get(req.id)
        p = c.process(req.exec_id)
        return api.StateResponse(
            id=req.exec_id or req.id, bundle=c.bundle, pid=p.pid,
            status=ApiStatus(_STATUS[p.state]), stdin=p.stdio.stdin, stdout=p.stdio.stdout,
            stderr=p.stdio.stderr, terminal=p.stdio.terminal, exit_status=p.exit_status,
            exited_at=p.exited_at or _GO_ZERO_TIME, exec_id=req.exec_id)

    async def wait(self, req: api.WaitRequest, ctx: CallContext) -> api.WaitResponse:
        code, exited_at = await self._get(req.id).process(req.exec_id).wait()
        return api.WaitResponse(exit_status=code, exited_at=exited_at)

    async def pids(self, req: api.PidsRequest, ctx: CallContext) -> api.PidsResponse:
        return api.PidsResponse(processes=[
            ProcessInfo(pid=pid, info=Any(_PROCESS_DETAILS, bytes(ProcessDetails(exec_id=eid))))
            if eid else ProcessInfo(pid=pid)
            for pid, eid in self._get(req.id).pids()])

    async def stats(self, req: api.StatsRequest, ctx: CallContext) -> api.StatsResponse:
        c = self._get(req.id)
        data = await c.stats()
        return api.StatsResponse(stats=metrics.metrics_any(
            data, cgroup_v2=self._cgroup_v2, memory_limit=c.params.memory_limit))

    async def resize_pty(self, req: api.ResizePtyRequest, ctx: CallContext) -> Empty:
        self._get(req.id).resize_pty(req.exec_id, req.width, req.height)
        return Empty()

    async def close_io(self, req: api.CloseIoRequest, ctx: CallContext) -> Empty:
        if req.stdin:
            self._get(req.id).close_io(req.exec_id)
        return Empty()

    async def connect(self, req: api.ConnectRequest, ctx: CallContext) -> api.ConnectResponse:
        # containerd's first call after it (re)starts: events it missed can go now.
        self.publisher.kick()
        c = self.containers.get(req.id)
        return api.ConnectResponse(shim_pid=os.getpid(), task_pid=c.init.pid if c else 0)

    async def shutdown(self, req: api.ShutdownRequest, ctx: CallContext) -> Empty:
        if not self.containers and not self._creating:
            self._shutdown.set()
        return Empty()

    # ------------------------------------------------------------------ events

    def _process_event(self, kind: str, proc: Process) -> None:
        cid, eid = proc.container_id, proc.exec_id
        if kind == "start" and eid:
            self.publisher.publish("/tasks/exec-started", "containerd.events.TaskExecStarted",
                                   ev.TaskExecStarted(container_id=cid, exec_id=eid, pid=proc.pid))
        elif kind == "start":
            log.info("started", extra={"container_id": cid, "pid": proc.pid})
            self.publisher.publish("/tasks/start", "containerd.events.TaskStart",
                                   ev.TaskStart(container_id=cid, pid=proc.pid))
        elif kind == "oom":
            log.warning("out of memory", extra={"container_id": cid})
            self.publisher.publish("/tasks/oom", "containerd.events.TaskOOM",
                                   ev.TaskOom(container_id=cid))
        elif kind == "exit":
            assert proc.exited_at is not None
            self.publisher.publish("/tasks/exit", "containerd.events.TaskExit", ev.TaskExit(
                container_id=cid, id=eid or cid, pid=proc.pid, exit_status=proc.exit_status,
                exited_at=proc.exited_at))


def _checkpoint_exits(options: Any) -> bool:
    """CheckpointOptions.exit (field 1, bool), read without the full message type."""
    value = bytes(options.value) if betterproto.serialized_on_wire(options) else b""
    return value[:2] == b"\x08\x01"
