"""A container: its bundle, its runsc sandbox, its init process and execs.

Create is load → plan → write → ``runsc create``; the planner decides the GPU
flags, this module only runs what it decided.

Where exit codes come from:
- a sandbox's root container: reaping the sandbox process named by
  ``--pid-file``. The shim is a child subreaper, runsc's sandbox exits with the
  container's status (128+signal when killed), and ``runsc wait`` cannot answer
  once the sandbox is gone;
- a pod's app container (a subcontainer): ``runsc wait``, started after
  ``runsc start``; its pid file names the shared sandbox, not the container;
- an exec: reaping the ``runsc exec --detach`` process, which stays until the
  process inside exits.

Events whose order matters (TaskStart before TaskExit, exec exits before the
init's) are published here, under the process lock, rather than in the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shim import mount, reaper
from shim.errors import AlreadyExists, FailedPrecondition, NotFound
from shim.runsc import (
    CheckpointOptions,
    CreateOptions,
    DeleteOptions,
    GlobalOptions,
    KillOptions,
    Runsc,
    RunscError,
)
from shim.runsc import Stdio as RunscStdio
from shim.task import oom
from shim.task.console import ConsoleIO, ConsoleSocket
from shim.task.process import Process
from shim.task.state import Op, State
from shim.task.stdio import ProcessIO, StdioPaths

__all__ = ["STATE_FILE", "Container", "CreateParams", "EventCallback"]

log = logging.getLogger("shim.task")

# Written into the bundle at Create so that the ``delete`` action, which gets
# no runtime options, can find the same runsc binary, root and log.
STATE_FILE = "gvisorgpu-shim.json"
_PID_FILE = "init.pid"
_RUNSC_LOG = "runsc.log"
# How long an init's TaskExit waits for its execs' exits to be published.
_EXEC_EXIT_GRACE = 2.0
# runsc's answer when a subcontainer's sandbox is gone before `wait` could ask.
_SANDBOX_GONE = 128 + signal.SIGKILL

EventCallback = Callable[[str, Process], None]


@dataclass(frozen=True)
class CreateParams:
    id: str
    bundle: str
    mounts: tuple[mount.MountSpec, ...]
    stdio: StdioPaths
    runsc: GlobalOptions  # already planned: GPU flags, network, platform
    # Set for a pod's app container: the sandbox it joins (runsc subcontainer).
    sandbox_id: str | None = None
    cgroups_path: str = ""
    memory_limit: int | None = None


class Container:
    def __init__(self, params: CreateParams, on_event: EventCallback) -> None:
        self.id = params.id
        self.bundle = params.bundle
        self.params = params
        self.runsc = Runsc(params.runsc, tmpdir=params.bundle)
        self.init = Process(params.id, "", params.stdio)
        # exec id -> process; touched only on the event loop.
        self.execs: dict[str, Process] = {}
        self._exec_specs: dict[str, dict[str, Any]] = {}
        self._on_event = on_event  # ("start" | "exit" | "oom", process)
        self._rootfs_mounted = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def subcontainer(self) -> bool:
        return self.params.sandbox_id is not None

    # ------------------------------------------------------------------ create

    @classmethod
    async def create(cls, params: CreateParams, on_event: EventCallback) -> Container:
        c = cls(params, on_event)
        try:
            await c._create()
        except BaseException:
            await c._cleanup(force=True)
            raise
        return c

    async def _create(self) -> None:
        if self.params.mounts:
            mount.mount_rootfs(self.params.mounts, os.path.join(self.bundle, "rootfs"))
            self._rootfs_mounted = True
        os.makedirs(self.params.runsc.root or "", exist_ok=True)
        _write_state(self.bundle, self.params.runsc)
        pid_file = os.path.join(self.bundle, _PID_FILE)
        opts = CreateOptions(bundle=self.bundle, pid_file=pid_file)
        if self.params.stdio.terminal:
            # runsc sends the pty master during `create`, for a pod's app
            # container as for a sandbox's root container.
            await self._create_with_console(opts)
        elif self.subcontainer:
            # runsc gives a subcontainer its stdio at `start`, not here.
            self.init.io = ProcessIO.open(self.params.stdio)
            await self.runsc.create(self.id, opts)
        else:
            io = ProcessIO.open(self.params.stdio)
            self.init.io = io
            await self.runsc.create(self.id, opts, RunscStdio(*io.child))
            io.child_spawned()
        self.init.pid = int(Path(pid_file).read_text().strip())
        if not self.subcontainer:
            # The sandbox was reparented to us when `runsc create` exited; an
            # exit before this line is held by the reaper until watched.
            self._spawn(self._watch_exit(self.init, reaper.get_reaper().watch(self.init.pid)))

    async def _create_with_console(self, opts: CreateOptions) -> None:
        console = ConsoleSocket()
        try:
            master = asyncio.create_task(asyncio.to_thread(console.receive_master))
            try:
                await self.runsc.create(self.id, CreateOptions(
                    bundle=opts.bundle, pid_file=opts.pid_file, console_socket=console.path))
            except BaseException:
                master.cancel()
                raise
            self.init.io = ConsoleIO(self.params.stdio, await master)
        finally:
            console.close()

    # ------------------------------------------------------------------ lookup

    def process(self, exec_id: str) -> Process:
        if not exec_id:
            return self.init
        try:
            return self.execs[exec_id]
        except KeyError:
            raise NotFound(f"exec {exec_id} does not exist in container {self.id}") from None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, exec_id: str) -> int:
        proc = self.process(exec_id)
        async with proc.lock:
            proc.check(Op.START)
            if self.init.exited:
                raise FailedPrecondition(f"cannot start {proc.what}: the container has exited")
            if proc.is_init:
                await self._start_init(proc)
            else:
                await self._start_exec(proc)
            proc.apply(Op.START)
            self._on_event("start", proc)
            return proc.pid

    async def _start_init(self, proc: Process) -> None:
        if not self.subcontainer:
            await self.runsc.start(self.id)
            return
        io = proc.io
        if isinstance(io, ProcessIO):
            await self.runsc.start(self.id, RunscStdio(*io.child))
            io.child_spawned()
        else:  # a terminal: the console already carries its IO
            await self.runsc.start(self.id)
        self._spawn(self._watch_exit(proc, asyncio.ensure_future(self._wait_subcontainer())))

    async def _wait_subcontainer(self) -> int:
        try:
            return await self.runsc.wait(self.id)
        except RunscError as e:
            log.warning("runsc wait failed, taking the sandbox as killed: %s", e,
                        extra={"container_id": self.id})
            return _SANDBOX_GONE

    async def _start_exec(self, proc: Process) -> None:
        spec = self._exec_specs[proc.exec_id]
        pid_file = os.path.join(self.bundle, f"{proc.exec_id}.pid")
        if proc.stdio.terminal:
            console = ConsoleSocket()
            try:
                master = asyncio.create_task(asyncio.to_thread(console.receive_master))
                started = await self.runsc.exec(self.id, spec, pid_file=pid_file,
                                                console_socket=console.path)
                proc.io = ConsoleIO(proc.stdio, await master)
            finally:
                console.close()
        else:
            io = ProcessIO.open(proc.stdio)
            proc.io = io
            try:
                started = await self.runsc.exec(self.id, spec, pid_file=pid_file,
                                                stdio=RunscStdio(*io.child))
            finally:
                io.child_spawned()
        proc.pid, proc.internal_pid = started.pid, started.internal_pid
        self._spawn(self._watch_exit(proc, reaper.get_reaper().watch(started.pid)))

    def add_exec(self, exec_id: str, process_spec: Mapping[str, Any], stdio: StdioPaths) -> None:
        if exec_id in self.execs:
            raise AlreadyExists(f"exec {exec_id} already exists in container {self.id}")
        self.init.check(Op.EXEC)  # refuses a paused or stopped container
        self.execs[exec_id] = Process(self.id, exec_id, stdio)
        self._exec_specs[exec_id] = dict(process_spec)

    async def kill(self, exec_id: str, sig: int, all_: bool) -> None:
        proc = self.process(exec_id)
        async with proc.lock:
            if proc.exited or proc.state in (State.STOPPED, State.DELETED):
                raise NotFound(f"cannot signal {proc.what}: process already finished")
            if proc.state is State.CREATED and not proc.is_init:
                raise FailedPrecondition(f"cannot signal {proc.what}: it has not been started")
            proc.check(Op.KILL)
            if proc.state is State.CREATED:
                await self._kill_created(proc, sig)
                return
            opts = KillOptions(signal=sig, all=all_ and proc.is_init,
                               pid=None if proc.is_init else proc.internal_pid)
            try:
                await self.runsc.kill(self.id, opts)
            except RunscError as e:
                if proc.exited or e.not_found or "not running" in e.reason:
                    raise NotFound(f"cannot signal {proc.what}: process already finished") from e
                if self.subcontainer and proc.is_init and not _sandbox_alive(proc.pid):
                    # The pod's sandbox died and took this container with it;
                    # `runsc wait` may not have said so yet.
                    self._record_exit(proc, _SANDBOX_GONE)
                    raise NotFound(f"cannot signal {proc.what}: its sandbox has exited") from e
                raise

    async def _kill_created(self, proc: Process, sig: int) -> None:
        """runsc refuses to signal a created container; ending it is what
        killing a parked init means (containerd's delete path relies on it)."""
        if sig not in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            return
        if self.subcontainer:
            await self.runsc.delete(self.id, DeleteOptions(force=True))
            self._record_exit(proc, _SANDBOX_GONE)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)

    async def pause(self) -> None:
        async with self.init.lock:
            self.init.check(Op.PAUSE)
            await self.runsc.pause(self.id)
            self.init.apply(Op.PAUSE)

    async def resume(self) -> None:
        async with self.init.lock:
            self.init.check(Op.RESUME)
            await self.runsc.resume(self.id)
            self.init.apply(Op.RESUME)

    async def checkpoint(self, path: str, *, leave_running: bool) -> None:
        async with self.init.lock:
            self.init.check(Op.CHECKPOINT)
            await self.runsc.checkpoint(self.id, CheckpointOptions(
                image_path=path, leave_running=leave_running))

    async def stats(self) -> dict[str, Any]:
        if self.init.state not in (State.RUNNING, State.PAUSED) or self.init.exited:
            raise NotFound(f"no metrics for container {self.id}: it is not running")
        return await self.runsc.stats(self.id)

    def resize_pty(self, exec_id: str, width: int, height: int) -> None:
        proc = self.process(exec_id)
        if isinstance(proc.io, ConsoleIO) and not proc.io.resize(width, height):
            raise NotFound(f"cannot resize the terminal of {proc.what}: it has exited")

    async def wait(self, exec_id: str) -> tuple[int, object]:
        return await self.process(exec_id).wait()

    def close_io(self, exec_id: str) -> None:
        io = self.process(exec_id).io
        if io is not None:
            io.close_stdin()

    async def delete(self, exec_id: str) -> Process:
        proc = self.process(exec_id)
        async with proc.lock:
            proc.check(Op.DELETE)
            if proc.is_init:
                await self._cleanup(force=False)
            else:
                del self.execs[exec_id]
                self._exec_specs.pop(exec_id, None)
            proc.state = State.DELETED
            return proc

    def pids(self) -> list[tuple[int, str]]:
        """(pid, exec id) of live processes; "" for the init."""
        procs = (self.init, *self.execs.values())
        return [(p.pid, p.exec_id) for p in procs if p.pid and not p.exited]

    # ------------------------------------------------------------------ internals

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_exit(self, proc: Process, done: asyncio.Future[int]) -> None:
        code = await done
        if proc.is_init:
            await self._await_exec_exits()
        async with proc.lock:  # lets an in-flight Start publish TaskStart first
            self._record_exit(proc, code)

    def _record_exit(self, proc: Process, code: int) -> None:
        """Record an exit once and publish it (TaskOOM first when the OOM killer
        ended the sandbox); a second report of the same exit is ignored."""
        if proc.exited:
            return
        deleted = proc.state is State.DELETED
        proc.set_exited(code)
        log.info("process exited", extra={"container_id": self.id, "exec_id": proc.exec_id,
                                           "pid": proc.pid, "exit_status": code})
        if deleted:
            return
        if proc.is_init and code == _SANDBOX_GONE and oom.killed(self.params.cgroups_path):
            self._on_event("oom", proc)
        self._on_event("exit", proc)

    async def _await_exec_exits(self) -> None:
        """An init's TaskExit comes after its execs' (shim-protocol.md §4.3);
        they die with the sandbox, so their exits are moments away."""
        running = [p for p in self.execs.values() if p.state is State.RUNNING]
        if running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(p.wait() for p in running)), _EXEC_EXIT_GRACE)

    async def _cleanup(self, *, force: bool) -> None:
        """Release everything: runsc state, sandbox, rootfs mount, fds."""
        try:
            await self.runsc.delete(self.id, DeleteOptions(force=True))
        except RunscError as e:
            if not e.not_found:
                if not force:
                    raise
                log.warning("runsc delete failed during cleanup: %s", e)
        # Tells the `delete` action that runsc has nothing left for this id.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.bundle, STATE_FILE))
        for proc in (self.init, *self.execs.values()):
            if proc.io is not None and not proc.exited:
                proc.io.close()
        if self._rootfs_mounted:
            mount.unmount_all(os.path.join(self.bundle, "rootfs"))
            self._rootfs_mounted = False
        _remove_root(self.params.runsc.root)


def _sandbox_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().startswith(b"runsc-sandbox")
    except OSError:
        return False


def _write_state(bundle: str, runsc: GlobalOptions) -> None:
    state = {"binary": runsc.binary, "root": runsc.root, "log": runsc.log,
             "args": runsc.args()}
    Path(bundle, STATE_FILE).write_text(json.dumps(state))


def _remove_root(root: str | None) -> None:
    """Remove the sandbox's own runsc root once runsc has nothing left in it."""
    if root and os.path.isdir(root) and not os.listdir(root):
        with contextlib.suppress(OSError):
            os.rmdir(root)


def runsc_log_path(bundle: str) -> str:
    return os.path.join(bundle, _RUNSC_LOG)


def mounts_from(request_mounts: Sequence[object]) -> tuple[mount.MountSpec, ...]:
    return tuple(
        mount.MountSpec(m.type, m.source, m.target, tuple(m.options))  # type: ignore[attr-defined]
        for m in request_mounts
    )
