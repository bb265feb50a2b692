"""The containerd task service (``containerd.task.v2.Task``, also served as v3).

Every handler has one shape: check the ids, find the container (NotFound),
call one container method, publish the event, build the response.

Operations that change something (Create, Start, Delete, Kill, Exec, Pause,
Resume, Checkpoint) run as a task of their own that the RPC only waits for:
a cancelled RPC (a ``timeout_nano`` deadline, containerd dropping the
connection when it restarts) never stops an operation halfway, between runsc
having done its part and the shim recording it. The runsc call, the state
change and the event complete as one unit; a Delete that is asked again gets
the same answer.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any as AnyType
from typing import Protocol, TypeVar

import betterproto
from betterproto.lib.google.protobuf import Any, Empty

from shim.api.containerd import events as ev
from shim.api.containerd.runc.v1 import CheckpointOptions, ProcessDetails
from shim.api.containerd.task import v2 as api
from shim.api.containerd.v1.types import ProcessInfo
from shim.api.containerd.v1.types import Status as ApiStatus
from shim.errors import AlreadyExists, InvalidArgument, NotFound, Unimplemented
from shim.gpu.detect import CdiCache
from shim.oci.ids import check_id
from shim.protowire import WireFormatError, strict_parse
from shim.runsc import CommandRunner, ProbeCache, Runsc
from shim.task import stats as metrics
from shim.task.checks import (
    check_bundle,
    check_checkpoint_path,
    check_signal,
    check_terminal_size,
    exec_process,
)
from shim.task.container import Container, CreateParams
from shim.task.create import prepare
from shim.task.pod import Sandbox
from shim.task.process import Process
from shim.task.runtime import ChildWatcher, SandboxRuntime
from shim.task.state import State
from shim.task.stdio import StdioPaths
from shim.ttrpc.server import CallContext, Handler

__all__ = ["SERVICE_NAMES", "Children", "EventSink", "TaskService"]

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
# Answers to Delete kept for a retried Delete, newest last.
_DELETES_KEPT = 128

T = TypeVar("T")


class EventSink(Protocol):
    """Where events go (``shim.daemon.events.Publisher``): queued, in order."""

    def publish(self, topic: str, type_url: str, message: betterproto.Message) -> None: ...
    def kick(self) -> None: ...


class Children(CommandRunner, ChildWatcher, Protocol):
    """The daemon's reaper: it runs runsc's commands and reports exits."""


RuntimeFactory = Callable[[CreateParams], SandboxRuntime]


class TaskService:
    def __init__(self, namespace: str, events: EventSink, shutdown: asyncio.Event,
                 reaper: Children, probes: ProbeCache,
                 runtime: RuntimeFactory | None = None) -> None:
        self.namespace = namespace
        self.events = events
        self.reaper = reaper
        self.probes = probes
        # Parsed CDI spec files, re-read only when a file changes.
        self.cdi_cache = CdiCache()
        self._runtime: RuntimeFactory = runtime or (
            lambda p: Runsc(p.runsc, reaper, tmpdir=p.bundle))
        self._shutdown = shutdown
        # All of these are touched only on the event loop.
        self.containers: dict[str, Container] = {}
        self.sandboxes: dict[str, Sandbox] = {}  # pod sandbox id -> what it booted with
        self._creating: dict[str, asyncio.Future[api.CreateTaskResponse]] = {}
        self._deletes: OrderedDict[tuple[str, str], asyncio.Future[api.DeleteResponse]] = (
            OrderedDict())
        self._operations: set[asyncio.Future[AnyType]] = set()
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

    def _operation(self, work: Awaitable[T]) -> asyncio.Future[T]:
        """Run ``work`` as a task of its own, to its end."""
        task = asyncio.ensure_future(work)
        self._operations.add(task)
        task.add_done_callback(self._operation_done)
        return task

    def _complete(self, work: Awaitable[T]) -> Awaitable[T]:
        """Run ``work`` to its end even if the RPC waiting for it is cancelled."""
        return asyncio.shield(self._operation(work))

    def _operation_done(self, task: asyncio.Future[AnyType]) -> None:
        self._operations.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("operation ended with an error: %s", task.exception())

    def _idle(self) -> bool:
        return not self.containers and not self._creating and not self._operations

    # ------------------------------------------------------------------ lifecycle

    async def create(self, req: api.CreateTaskRequest, ctx: CallContext) -> api.CreateTaskResponse:
        check_id("container id", req.id)
        namespace = check_id("namespace", ctx.namespace or self.namespace)
        check_bundle(req.bundle)
        if req.id in self.containers or req.id in self._creating:
            raise AlreadyExists(f"container {req.id} already exists in this shim")
        created = self._operation(self._create(req, namespace))
        self._creating[req.id] = created
        return await asyncio.shield(created)

    async def _create(self, req: api.CreateTaskRequest,
                      namespace: str) -> api.CreateTaskResponse:
        try:
            prepared = await prepare(req, namespace=namespace, sandboxes=self.sandboxes,
                                     runner=self.reaper, probes=self.probes,
                                     cdi_cache=self.cdi_cache)
            params = prepared.params
            c = await Container.create(params, self._runtime(params), self.reaper,
                                       self._process_event)
            self.containers[req.id] = c
            for key in [k for k in self._deletes if k[0] == req.id]:
                del self._deletes[key]  # an earlier container of the same id
            if prepared.sandbox is not None:
                self.sandboxes[req.id] = prepared.sandbox
            self.events.publish("/tasks/create", "containerd.events.TaskCreate", ev.TaskCreate(
                container_id=req.id, bundle=req.bundle, rootfs=req.rootfs, pid=c.init.pid,
                io=ev.TaskIo(stdin=req.stdin, stdout=req.stdout, stderr=req.stderr,
                             terminal=req.terminal)))
            return api.CreateTaskResponse(pid=c.init.pid)
        finally:
            self._creating.pop(req.id, None)

    async def start(self, req: api.StartRequest, ctx: CallContext) -> api.StartResponse:
        c = self._get(req.id)
        pid = await self._complete(c.start(req.exec_id))
        return api.StartResponse(pid=pid)

    async def delete(self, req: api.DeleteRequest, ctx: CallContext) -> api.DeleteResponse:
        creating = self._creating.get(req.id)
        if creating is not None:
            # containerd cleans up after a Create it gave up on: let it finish first.
            await asyncio.wait([creating])
        key = (req.id, req.exec_id)
        task = self._deletes.get(key)
        if task is None or _failed(task):
            task = asyncio.ensure_future(self._delete(self._get(req.id), req.exec_id))
            self._deletes[key] = task
            while len(self._deletes) > _DELETES_KEPT:
                self._deletes.popitem(last=False)
        return await self._complete(task)

    async def _delete(self, c: Container, exec_id: str) -> api.DeleteResponse:
        proc = await c.delete(exec_id)
        exited_at = proc.exited_at or datetime.now(UTC)
        if proc.is_init:
            del self.containers[c.id]
            self.sandboxes.pop(c.id, None)
            self.events.publish("/tasks/delete", "containerd.events.TaskDelete", ev.TaskDelete(
                container_id=c.id, pid=proc.pid, exit_status=proc.exit_status,
                exited_at=exited_at))
        return api.DeleteResponse(pid=proc.pid, exit_status=proc.exit_status, exited_at=exited_at)

    async def exec(self, req: api.ExecProcessRequest, ctx: CallContext) -> Empty:
        check_id("exec id", req.exec_id)
        spec = exec_process(req.exec_id, bytes(req.spec.value))
        self._get(req.id).add_exec(
            req.exec_id, spec, StdioPaths(req.stdin, req.stdout, req.stderr, req.terminal))
        self.events.publish("/tasks/exec-added", "containerd.events.TaskExecAdded",
                            ev.TaskExecAdded(container_id=req.id, exec_id=req.exec_id))
        return Empty()

    async def kill(self, req: api.KillRequest, ctx: CallContext) -> Empty:
        check_signal(f"container {req.id}", req.signal)
        await self._complete(self._get(req.id).kill(req.exec_id, req.signal, req.all))
        return Empty()

    async def pause(self, req: api.PauseRequest, ctx: CallContext) -> Empty:
        c = self._get(req.id)
        await self._complete(self._then_publish(
            c.pause(), "/tasks/paused", "containerd.events.TaskPaused",
            ev.TaskPaused(container_id=req.id)))
        return Empty()

    async def resume(self, req: api.ResumeRequest, ctx: CallContext) -> Empty:
        c = self._get(req.id)
        await self._complete(self._then_publish(
            c.resume(), "/tasks/resumed", "containerd.events.TaskResumed",
            ev.TaskResumed(container_id=req.id)))
        return Empty()

    async def checkpoint(self, req: api.CheckpointTaskRequest, ctx: CallContext) -> Empty:
        c = self._get(req.id)
        check_checkpoint_path(f"container {req.id}", req.path)
        leave_running = not _checkpoint_options(req.options).exit
        await self._complete(self._then_publish(
            c.checkpoint(req.path, leave_running=leave_running), "/tasks/checkpointed",
            "containerd.events.TaskCheckpointed",
            ev.TaskCheckpointed(container_id=req.id, checkpoint=req.path)))
        return Empty()

    async def _then_publish(self, work: Awaitable[None], topic: str, type_url: str,
                            event: betterproto.Message) -> None:
        await work
        self.events.publish(topic, type_url, event)

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
        check_terminal_size(f"container {req.id}", req.width, req.height)
        self._get(req.id).resize_pty(req.exec_id, req.width, req.height)
        return Empty()

    async def close_io(self, req: api.CloseIoRequest, ctx: CallContext) -> Empty:
        if req.stdin:
            self._get(req.id).close_io(req.exec_id)
        return Empty()

    async def connect(self, req: api.ConnectRequest, ctx: CallContext) -> api.ConnectResponse:
        # containerd's first call after it (re)starts: events it missed can go now.
        self.events.kick()
        c = self.containers.get(req.id)
        return api.ConnectResponse(shim_pid=os.getpid(), task_pid=c.init.pid if c else 0)

    async def shutdown(self, req: api.ShutdownRequest, ctx: CallContext) -> Empty:
        """Honoured once nothing is left (no container, no operation still
        finishing); ignored otherwise, as containerd's runc shim does: containerd
        asks after every Delete, and a pod's shim serves on. A Delete whose RPC
        was cancelled still completes, so the next Shutdown finds the shim idle."""
        if self._idle():
            self._shutdown.set()
        return Empty()

    # ------------------------------------------------------------------ events

    def _process_event(self, kind: str, proc: Process) -> None:
        cid, eid = proc.container_id, proc.exec_id
        if kind == "start" and eid:
            self.events.publish("/tasks/exec-started", "containerd.events.TaskExecStarted",
                                ev.TaskExecStarted(container_id=cid, exec_id=eid, pid=proc.pid))
        elif kind == "start":
            log.info("started", extra={"container_id": cid, "pid": proc.pid})
            self.events.publish("/tasks/start", "containerd.events.TaskStart",
                                ev.TaskStart(container_id=cid, pid=proc.pid))
        elif kind == "oom":
            log.warning("out of memory", extra={"container_id": cid})
            self.events.publish("/tasks/oom", "containerd.events.TaskOOM",
                                ev.TaskOom(container_id=cid))
        elif kind == "exit":
            assert proc.exited_at is not None
            self.events.publish("/tasks/exit", "containerd.events.TaskExit", ev.TaskExit(
                container_id=cid, id=eid or cid, pid=proc.pid, exit_status=proc.exit_status,
                exited_at=proc.exited_at))
            if not eid and cid in self.sandboxes:
                for member in self.containers.values():
                    if member.params.sandbox_id == cid:
                        self._operation(member.sandbox_exited())


def _failed(task: asyncio.Future[AnyType]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)


def _checkpoint_options(options: Any) -> CheckpointOptions:
    """containerd.runc.v1.CheckpointOptions, as containerd sends them."""
    if not betterproto.serialized_on_wire(options) or not options.value:
        return CheckpointOptions()
    try:
        return strict_parse(CheckpointOptions(), bytes(options.value))
    except WireFormatError as e:
        raise InvalidArgument(f"checkpoint options: {e}") from None
