"""A container: its bundle, its runsc sandbox, its init process and execs.

Every operation has one shape: find the process, and call
:meth:`~shim.task.process.Process.transition` with the op and the runsc work
to do (a ``_do_*`` method here). The process's table decides whether the op
is legal; this module only performs it. runsc comes in as a
:class:`~shim.task.runtime.SandboxRuntime`, exits as futures from a
:class:`~shim.task.runtime.ChildWatcher`.

Where exit codes come from:
- a sandbox's root container: reaping the sandbox process named by
  ``--pid-file``. The shim is a child subreaper, runsc's sandbox exits with the
  container's status (128+signal when killed), and ``runsc wait`` cannot answer
  once the sandbox is gone;
- a pod's app container (a subcontainer): ``runsc wait``, started after
  ``runsc start``; its pid file names the shared sandbox, not the container.
  When it exits, whatever it forked is killed (``runsc kill --all``), as
  containerd's runc shim does for a container whose PID namespace is shared:
  a forked child would otherwise keep the container's stdout open and the
  container would never be seen to exit;
- an exec: reaping the ``runsc exec --detach`` process, which stays until the
  process inside exits.

Events whose order matters (TaskStart before TaskExit, exec exits before the
init's) are published under the process lock, by ``on_event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shim.errors import AlreadyExists, FailedPrecondition, NotFound
from shim.oci import mount, runsc_root
from shim.oci.layout import PID_FILE, STATE_FILE
from shim.runsc import (
    CheckpointOptions,
    CreateOptions,
    DeleteOptions,
    GlobalOptions,
    KillOptions,
    RunscError,
)
from shim.runsc import Stdio as RunscStdio
from shim.task import host, oom
from shim.task.console import ConsoleIO, with_console
from shim.task.process import ExecProcess, InitProcess, Process
from shim.task.runtime import ChildWatcher, SandboxRuntime
from shim.task.state import Op, State
from shim.task.stdio import ProcessIO, StdioPaths

__all__ = ["Container", "CreateParams", "EventCallback", "mounts_from"]

log = logging.getLogger("shim.task")

# How long an init's TaskExit waits for its execs' exits to be published.
_EXEC_EXIT_GRACE = 2.0
# runsc's answer when a subcontainer's sandbox is gone before `wait` could ask;
# also the status of a process deleted before it ever ran.
_SANDBOX_GONE = 128 + signal.SIGKILL
# An exec whose start failed never ran; its Wait still returns.
_START_FAILED = 255

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
    # The container has a seccomp profile, and what to do about processes
    # started by Exec, which runsc (20240729) does not put under it: "refuse"
    # them, or "warn" and run them unconfined (config key `seccomp`).
    seccomp_profile: bool = False
    exec_seccomp: str = "refuse"


class Container:
    def __init__(self, params: CreateParams, runtime: SandboxRuntime, watcher: ChildWatcher,
                 on_event: EventCallback) -> None:
        self.id = params.id
        self.bundle = params.bundle
        self.params = params
        self.runtime = runtime
        self.watcher = watcher
        self.init = InitProcess(params.id, params.stdio)
        # exec id -> process; touched only on the event loop.
        self.execs: dict[str, ExecProcess] = {}
        self._on_event = on_event  # ("start" | "exit" | "oom", process)
        self._rootfs_mounted = False
        self._tasks: set[asyncio.Task[None]] = set()
        # The sandbox process's cgroup, read while it runs: where its OOM kills count.
        self._sandbox_cgroup: oom.ProcCgroup | None = None

    @property
    def subcontainer(self) -> bool:
        return self.params.sandbox_id is not None

    # ------------------------------------------------------------------ create

    @classmethod
    async def create(cls, params: CreateParams, runtime: SandboxRuntime, watcher: ChildWatcher,
                     on_event: EventCallback) -> Container:
        c = cls(params, runtime, watcher, on_event)
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
        host.write_state(self.bundle, self.params.runsc)
        pid_file = os.path.join(self.bundle, PID_FILE)
        opts = CreateOptions(bundle=self.bundle, pid_file=pid_file)
        if self.params.stdio.terminal:
            # runsc sends the pty master during `create`, for a pod's app
            # container as for a sandbox's root container.
            self.init.io = await with_console(
                self.init.stdio, lambda path: self.runtime.create(
                    self.id, CreateOptions(bundle=self.bundle, pid_file=pid_file,
                                           console_socket=path)))
        elif self.subcontainer:
            # runsc gives a subcontainer its stdio at `start`, not here.
            self.init.io = ProcessIO.open(self.params.stdio)
            await self.runtime.create(self.id, opts)
        else:
            io = ProcessIO.open(self.params.stdio)
            self.init.io = io
            await self.runtime.create(self.id, opts, RunscStdio(*io.child))
            io.child_spawned()
        self.init.pid = int(Path(pid_file).read_text().strip())
        if not self.subcontainer:
            if host.sandbox_alive(self.init.pid):  # not a reaped pid that is reused
                self._sandbox_cgroup = oom.sandbox_cgroup(self.init.pid)
            # The sandbox was reparented to us when `runsc create` exited; an
            # exit before this line is held by the reaper until watched.
            self._spawn(self._watch_exit(self.init, self.watcher.watch(self.init.pid)))

    # ------------------------------------------------------------------ lookup

    def process(self, exec_id: str) -> Process:
        if not exec_id:
            return self.init
        try:
            return self.execs[exec_id]
        except KeyError:
            raise NotFound(f"exec {exec_id} does not exist in container {self.id}") from None

    # ------------------------------------------------------------------ operations

    async def start(self, exec_id: str) -> int:
        proc = self.process(exec_id)
        action: Callable[[], Awaitable[None]]
        if isinstance(proc, ExecProcess):
            if self.init.exited:
                raise FailedPrecondition(f"cannot start {proc.what}: the container has exited")
            action = lambda: self._do_start_exec(proc)  # noqa: E731
        else:
            action = self._do_start_init
        await proc.transition(Op.START, action, then=lambda: self._on_event("start", proc))
        return proc.pid

    def add_exec(self, exec_id: str, process_spec: Mapping[str, Any], stdio: StdioPaths) -> None:
        if exec_id in self.execs:
            raise AlreadyExists(f"exec {exec_id} already exists in container {self.id}")
        self.init.check(Op.EXEC)  # refuses a paused or stopped container
        if self.params.seccomp_profile:
            self._exec_outside_profile(exec_id)
        self.execs[exec_id] = ExecProcess(self.id, exec_id, stdio, dict(process_spec))

    def _exec_outside_profile(self, exec_id: str) -> None:
        """runsc applies a container's seccomp profile to its own processes, but
        not to those ``runsc exec`` starts (measured with runsc 20240729:
        ``Seccomp: 0`` in /proc/self/status). An exec, an exec probe included,
        would run outside the profile the pod was admitted with."""
        cause = (f"exec {exec_id} in container {self.id} would run outside the container's "
                 "seccomp profile: runsc does not apply it to processes started by exec")
        if self.params.exec_seccomp == "warn":
            log.warning("%s; running it anyway (seccomp = \"warn\")", cause,
                        extra={"container_id": self.id})
            return
        raise FailedPrecondition(
            f"{cause}. Fix: run the pod without a seccomp profile, or set seccomp = \"warn\" "
            "in the shim's runtime config to allow exec without it")

    async def kill(self, exec_id: str, sig: int, all_: bool) -> None:
        proc = self.process(exec_id)
        await proc.transition(Op.KILL, lambda: self._do_kill(proc, sig, all_))

    async def pause(self) -> None:
        await self.init.transition(Op.PAUSE, lambda: self.runtime.pause(self.id))

    async def resume(self) -> None:
        await self.init.transition(Op.RESUME, lambda: self.runtime.resume(self.id))

    async def checkpoint(self, path: str, *, leave_running: bool) -> None:
        opts = CheckpointOptions(image_path=path, leave_running=leave_running)
        await self.init.transition(Op.CHECKPOINT, lambda: self.runtime.checkpoint(self.id, opts))

    async def delete(self, exec_id: str) -> Process:
        proc = self.process(exec_id)
        if isinstance(proc, ExecProcess):
            await proc.transition(Op.DELETE, _nothing)
            del self.execs[exec_id]
        else:
            await proc.transition(Op.DELETE, lambda: self._cleanup(force=False))
        # Deleted before it ran: whoever waits for it must not wait forever.
        proc.record_exit(_SANDBOX_GONE)
        return proc

    async def stats(self) -> dict[str, Any]:
        if self.init.state not in (State.RUNNING, State.PAUSED):
            raise NotFound(f"no metrics for container {self.id}: it is not running")
        return await self.runtime.stats(self.id)

    def resize_pty(self, exec_id: str, width: int, height: int) -> None:
        proc = self.process(exec_id)
        if isinstance(proc.io, ConsoleIO) and not proc.io.resize(width, height):
            raise NotFound(f"cannot resize the terminal of {proc.what}: it has exited")

    def close_io(self, exec_id: str) -> None:
        io = self.process(exec_id).io
        if io is not None:
            io.close_stdin()

    def pids(self) -> list[tuple[int, str]]:
        """(pid, exec id) of live processes; "" for the init."""
        procs: tuple[Process, ...] = (self.init, *self.execs.values())
        return [(p.pid, p.exec_id) for p in procs if p.pid and not p.exited]

    # ------------------------------------------------------------------ runsc work

    async def _do_start_init(self) -> None:
        if not self.subcontainer:
            await self.runtime.start(self.id)
            return
        io = self.init.io
        if isinstance(io, ProcessIO):
            await self.runtime.start(self.id, RunscStdio(*io.child))
            io.child_spawned()
        else:  # a terminal: the console already carries its IO
            await self.runtime.start(self.id)
        self._spawn(self._watch_exit(self.init, asyncio.ensure_future(self._wait_subcontainer())))

    async def _wait_subcontainer(self) -> int:
        try:
            return await self.runtime.wait(self.id)
        except RunscError as e:
            log.warning("runsc wait failed, taking the sandbox as killed: %s", e,
                        extra={"container_id": self.id})
            return _SANDBOX_GONE

    async def _do_start_exec(self, proc: ExecProcess) -> None:
        try:
            await self._exec(proc)
        except BaseException:
            # It never ran: release its stdio and answer its Wait (no TaskExit).
            proc.record_exit(_START_FAILED)
            raise
        self._spawn(self._watch_exit(proc, self.watcher.watch(proc.pid)))

    async def _exec(self, proc: ExecProcess) -> None:
        pid_file = os.path.join(self.bundle, f"{proc.exec_id}.pid")
        if proc.stdio.terminal:
            results = []

            async def run(console: str) -> None:
                results.append(await self.runtime.exec(
                    self.id, proc.spec, pid_file=pid_file, console_socket=console))

            proc.io = await with_console(proc.stdio, run)
            started = results[0]
        else:
            io = ProcessIO.open(proc.stdio)
            proc.io = io
            try:
                started = await self.runtime.exec(self.id, proc.spec, pid_file=pid_file,
                                                  stdio=RunscStdio(*io.child))
            finally:
                io.child_spawned()
        proc.pid, proc.internal_pid = started.pid, started.internal_pid

    async def _do_kill(self, proc: Process, sig: int, all_: bool) -> None:
        if proc.state is State.CREATED:  # only an init: the exec table refuses it
            await self._kill_created(sig)
            return
        pid = None
        if isinstance(proc, ExecProcess):
            if proc.internal_pid is None:
                # Without it, `runsc kill` would signal the container's init.
                raise FailedPrecondition(
                    f"cannot signal {proc.what}: runsc did not report its pid in the sandbox")
            pid = proc.internal_pid
        try:
            await self.runtime.kill(self.id, KillOptions(signal=sig, all=all_ and proc.is_init,
                                                         pid=pid))
        except RunscError as e:
            if e.not_found:
                raise NotFound(f"cannot signal {proc.what}: process already finished") from e
            if self.subcontainer and proc.is_init and not host.sandbox_alive(proc.pid):
                # The pod's sandbox died and took this container with it;
                # `runsc wait` may not have said so yet.
                self._record_exit(proc, _SANDBOX_GONE)
                raise NotFound(f"cannot signal {proc.what}: its sandbox has exited") from e
            raise

    async def _kill_created(self, sig: int) -> None:
        """runsc refuses to signal a created container; ending it is what
        killing a parked init means (containerd's delete path relies on it)."""
        if sig not in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            return
        if self.subcontainer:
            await self._runsc_delete()
            self._record_exit(self.init, _SANDBOX_GONE)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ exits

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_exit(self, proc: Process, done: asyncio.Future[int]) -> None:
        code = await done
        if proc.is_init:
            if self.subcontainer:
                await self._kill_the_rest()
            await self._await_exec_exits()
        async with proc.lock:  # lets an in-flight Start publish TaskStart first
            self._record_exit(proc, code)

    async def _kill_the_rest(self) -> None:
        """What the container's init forked dies with it (containerd's runc shim
        kills every process of a container whose init exits in a shared PID
        namespace); otherwise they keep its stdout open and outlive it."""
        if not host.sandbox_alive(self.init.pid):
            return  # the whole sandbox is gone, and everything in it
        with contextlib.suppress(RunscError):
            await self.runtime.kill(self.id, KillOptions(signal=signal.SIGKILL, all=True))

    async def sandbox_exited(self) -> None:
        """This pod member's sandbox is gone, and the member with it: its exit
        is known now, before ``runsc wait`` gets round to failing, so that
        containerd (which refuses to delete a running task) can remove it."""
        if self.init.exited:
            return
        async with self.init.lock:
            self._record_exit(self.init, _SANDBOX_GONE)

    def _record_exit(self, proc: Process, code: int) -> None:
        """Record an exit once and publish it (TaskOOM first when the OOM killer
        ended the sandbox); a second report of the same exit is ignored."""
        deleted = proc.state is State.DELETED
        if not proc.record_exit(code):
            return
        log.info("process exited", extra={"container_id": self.id, "exec_id": proc.exec_id,
                                           "pid": proc.pid, "exit_status": code})
        if deleted:
            return
        if proc.is_init and code == _SANDBOX_GONE and oom.killed(
                self.params.cgroups_path, sandbox=self._sandbox_cgroup):
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

    # ------------------------------------------------------------------ cleanup

    async def _cleanup(self, *, force: bool) -> None:
        """Release everything: runsc state, sandbox, rootfs mount, fds."""
        try:
            await self._runsc_delete()
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
        if self.params.runsc.root:
            # Also the lock a racing `delete` action's runsc may have left.
            runsc_root.remove_stale_locks(self.params.runsc.root, self.id)
        host.remove_cgroup(self.params.cgroups_path)


    async def _runsc_delete(self) -> None:
        """``runsc delete --force``. When the sandbox has just died (a crash),
        runsc may still see its process and fail to reach its control socket
        ("connection refused"); once the process is gone, runsc deletes the
        state without asking the sandbox, so that is worth one more try."""
        try:
            await self.runtime.delete(self.id, DeleteOptions(force=True))
        except RunscError as e:
            if e.not_found or not await host.gone_soon(self.init.pid):
                raise
            log.info("runsc delete failed while the sandbox was dying; trying again: %s", e,
                     extra={"container_id": self.id})
            await self.runtime.delete(self.id, DeleteOptions(force=True))


async def _nothing() -> None:
    return None


def mounts_from(request_mounts: Sequence[object]) -> tuple[mount.MountSpec, ...]:
    return tuple(
        mount.MountSpec(m.type, m.source, m.target, tuple(m.options))  # type: ignore[attr-defined]
        for m in request_mounts
    )
