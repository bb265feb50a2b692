"""The containerd task service (``containerd.task.v2.Task``, also served as v3).

Every handler has one shape: find the container (NotFound), call one container
method, publish the event, build the response. Planning and runsc argv live in
``create.py`` and ``container.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime

import betterproto
from betterproto.lib.google.protobuf import Empty

from shim.api.containerd import events as ev
from shim.api.containerd.task import v2 as api
from shim.api.containerd.v1.types import ProcessInfo
from shim.api.containerd.v1.types import Status as ApiStatus
from shim.errors import AlreadyExists, NotFound, Unimplemented
from shim.events import Publisher
from shim.task.container import Container
from shim.task.create import prepare
from shim.task.process import Process
from shim.task.state import State
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


class TaskService:
    def __init__(self, namespace: str, publisher: Publisher, shutdown: asyncio.Event) -> None:
        self.namespace = namespace
        self.publisher = publisher
        self._shutdown = shutdown
        # id -> container; only handlers on the event loop touch it.
        self.containers: dict[str, Container] = {}
        self._creating: set[str] = set()

    def handlers(self) -> Mapping[str, tuple[type[betterproto.Message], Handler]]:
        return {
            "Create": (api.CreateTaskRequest, self.create),
            "Start": (api.StartRequest, self.start),
            "Delete": (api.DeleteRequest, self.delete),
            "State": (api.StateRequest, self.state),
            "Wait": (api.WaitRequest, self.wait),
            "Kill": (api.KillRequest, self.kill),
            "Connect": (api.ConnectRequest, self.connect),
            "Pids": (api.PidsRequest, self.pids),
            "CloseIO": (api.CloseIoRequest, self.close_io),
            "Shutdown": (api.ShutdownRequest, self.shutdown),
            "Stats": (api.StatsRequest, self.stats),
            **{name: (req, self.unimplemented) for name, req in (
                ("Pause", api.PauseRequest), ("Resume", api.ResumeRequest),
                ("Checkpoint", api.CheckpointTaskRequest), ("Exec", api.ExecProcessRequest),
                ("ResizePty", api.ResizePtyRequest), ("Update", api.UpdateTaskRequest),
            )},
        }

    def _get(self, container_id: str) -> Container:
        try:
            return self.containers[container_id]
        except KeyError:
            raise NotFound(f"container {container_id} does not exist in this shim") from None

    # ------------------------------------------------------------------ RPCs

    async def create(self, req: api.CreateTaskRequest, ctx: CallContext) -> api.CreateTaskResponse:
        if req.id in self.containers or req.id in self._creating:
            raise AlreadyExists(f"container {req.id} already exists in this shim")
        self._creating.add(req.id)
        try:
            params = await prepare(req, namespace=ctx.namespace or self.namespace)
            c = await asyncio.shield(
                Container.create(params, self._started, self._exited))
        finally:
            self._creating.discard(req.id)
        self.containers[req.id] = c
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
            self.publisher.publish("/tasks/delete", "containerd.events.TaskDelete", ev.TaskDelete(
                container_id=req.id, pid=proc.pid, exit_status=proc.exit_status,
                exited_at=exited_at))
        return api.DeleteResponse(pid=proc.pid, exit_status=proc.exit_status, exited_at=exited_at)

    async def state(self, req: api.StateRequest, ctx: CallContext) -> api.StateResponse:
        c = self._get(req.id)
        p = c.process(req.exec_id)
        return api.StateResponse(
            id=req.exec_id or req.id, bundle=c.bundle, pid=p.pid,
            status=ApiStatus(_STATUS[p.state]),
            stdin=p.stdio.stdin, stdout=p.stdio.stdout, stderr=p.stdio.stderr,
            terminal=p.stdio.terminal, exit_status=p.exit_status,
            exited_at=p.exited_at or _GO_ZERO_TIME, exec_id=req.exec_id)

    async def wait(self, req: api.WaitRequest, ctx: CallContext) -> api.WaitResponse:
        code, exited_at = await self._get(req.id).process(req.exec_id).wait()
        return api.WaitResponse(exit_status=code, exited_at=exited_at)

    async def kill(self, req: api.KillRequest, ctx: CallContext) -> Empty:
        await asyncio.shield(self._get(req.id).kill(req.exec_id, req.signal, req.all))
        return Empty()

    async def connect(self, req: api.ConnectRequest, ctx: CallContext) -> api.ConnectResponse:
        # containerd's first call after it (re)starts: events it missed can go now.
        self.publisher.kick()
        c = self.containers.get(req.id)
        return api.ConnectResponse(shim_pid=os.getpid(), task_pid=c.init.pid if c else 0)

    async def pids(self, req: api.PidsRequest, ctx: CallContext) -> api.PidsResponse:
        pids = self._get(req.id).pids()
        return api.PidsResponse(processes=[ProcessInfo(pid=p) for p in pids])

    async def close_io(self, req: api.CloseIoRequest, ctx: CallContext) -> Empty:
        if req.stdin:
            self._get(req.id).close_io(req.exec_id)
        return Empty()

    async def shutdown(self, req: api.ShutdownRequest, ctx: CallContext) -> Empty:
        if not self.containers and not self._creating:
            self._shutdown.set()
        return Empty()

    async def stats(self, req: api.StatsRequest, ctx: CallContext) -> api.StatsResponse:
        self._get(req.id)
        raise NotFound(f"no metrics for container {req.id}: stats are not collected yet")

    async def unimplemented(self, req: betterproto.Message, ctx: CallContext) -> Empty:
        raise Unimplemented(f"{ctx.method} is not supported by containerd-shim-gvisorgpu-v1 yet")

    # ------------------------------------------------------------------ events

    def _started(self, proc: Process) -> None:
        log.info("started", extra={"container_id": proc.container_id, "pid": proc.pid})
        self.publisher.publish("/tasks/start", "containerd.events.TaskStart",
                               ev.TaskStart(container_id=proc.container_id, pid=proc.pid))

    def _exited(self, proc: Process) -> None:
        assert proc.exited_at is not None
        self.publisher.publish("/tasks/exit", "containerd.events.TaskExit", ev.TaskExit(
            container_id=proc.container_id, id=proc.exec_id or proc.container_id, pid=proc.pid,
            exit_status=proc.exit_status, exited_at=proc.exited_at))
