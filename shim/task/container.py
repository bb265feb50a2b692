"""A container: its bundle, its runsc sandbox, its init process and execs.

Create is load → plan → write → ``runsc create``; the planner decides the GPU
flags, this module only runs what it decided. The root container's exit code
comes from reaping the sandbox process named by ``--pid-file``: the shim is a
child subreaper, runsc's sandbox exits with the container's status (128+signal
when killed), and ``runsc wait`` cannot answer once the sandbox is gone.

Events whose order matters (TaskStart before TaskExit) are published here,
under the process lock, rather than in the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shim import mount, reaper
from shim.errors import FailedPrecondition, NotFound
from shim.runsc import CreateOptions, DeleteOptions, GlobalOptions, KillOptions, Runsc, RunscError
from shim.runsc import Stdio as RunscStdio
from shim.task.process import Process
from shim.task.state import Op, State
from shim.task.stdio import ProcessIO, StdioPaths

__all__ = ["STATE_FILE", "Container", "CreateParams", "ExitCallback", "StartCallback"]

log = logging.getLogger("shim.task")

# Written into the bundle at Create so that the ``delete`` action, which gets
# no runtime options, can find the same runsc binary, root and log.
STATE_FILE = "gvisorgpu-shim.json"
_PID_FILE = "init.pid"
_RUNSC_LOG = "runsc.log"

StartCallback = Callable[[Process], None]
ExitCallback = Callable[[Process], None]


@dataclass(frozen=True)
class CreateParams:
    id: str
    bundle: str
    mounts: tuple[mount.MountSpec, ...]
    stdio: StdioPaths
    runsc: GlobalOptions  # already planned: GPU flags, network, platform


class Container:
    def __init__(self, params: CreateParams, runsc: Runsc, on_start: StartCallback,
                 on_exit: ExitCallback) -> None:
        self.id = params.id
        self.bundle = params.bundle
        self.params = params
        self.runsc = runsc
        self.init = Process(params.id, "", params.stdio)
        self.execs: dict[str, Process] = {}
        self._on_start = on_start
        self._on_exit = on_exit
        self._rootfs_mounted = False
        self._monitors: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ create

    @classmethod
    async def create(cls, params: CreateParams, on_start: StartCallback,
                     on_exit: ExitCallback) -> Container:
        c = cls(params, Runsc(params.runsc, tmpdir=params.bundle), on_start, on_exit)
        try:
            await c._create()
        except BaseException:
            await c._cleanup(force=True)
            raise
        return c

    async def _create(self) -> None:
        rootfs = os.path.join(self.bundle, "rootfs")
        if self.params.mounts:
            mount.mount_rootfs(self.params.mounts, rootfs)
            self._rootfs_mounted = True
        os.makedirs(self.params.runsc.root or "", exist_ok=True)
        _write_state(self.bundle, self.params.runsc)
        pid_file = os.path.join(self.bundle, _PID_FILE)
        self.init.io = ProcessIO.open(self.params.stdio)
        fds = self.init.io.child
        await self.runsc.create(
            self.id, CreateOptions(bundle=self.bundle, pid_file=pid_file),
            RunscStdio(*fds),
        )
        self.init.io.child_spawned()
        self.init.pid = int(Path(pid_file).read_text().strip())
        # The sandbox was reparented to us when `runsc create` exited; an exit
        # before this line is held by the reaper until watched.
        self._monitor(self.init, reaper.get_reaper().watch(self.init.pid))

    # ------------------------------------------------------------------ lifecycle

    def process(self, exec_id: str) -> Process:
        if not exec_id:
            return self.init
        try:
            return self.execs[exec_id]
        except KeyError:
            raise NotFound(f"exec {exec_id} does not exist in container {self.id}") from None

    async def start(self, exec_id: str) -> int:
        proc = self.process(exec_id)
        async with proc.lock:
            proc.check(Op.START)
            if not proc.is_init:
                raise FailedPrecondition(f"cannot start {proc.what}: exec is not supported yet")
            if self.init.exited:
                raise FailedPrecondition(f"cannot start {proc.what}: its sandbox has exited")
            await self.runsc.start(self.id)
            proc.apply(Op.START)
            self._on_start(proc)
            return proc.pid

    async def kill(self, exec_id: str, sig: int, all_: bool) -> None:
        proc = self.process(exec_id)
        async with proc.lock:
            if proc.exited or proc.state in (State.STOPPED, State.DELETED):
                raise NotFound(f"cannot signal {proc.what}: process already finished")
            proc.check(Op.KILL)
            if proc.state is State.CREATED:
                # runsc refuses to signal a created container; ending the sandbox
                # is what killing a parked init means.
                if sig in (signal.SIGKILL, signal.SIGTERM):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                return
            try:
                await self.runsc.kill(self.id, KillOptions(signal=sig, all=all_))
            except RunscError as e:
                if proc.exited or e.not_found:
                    raise NotFound(f"cannot signal {proc.what}: process already finished") from e
                raise

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
            proc.state = State.DELETED
            return proc

    def pids(self) -> list[int]:
        return [p.pid for p in (self.init, *self.execs.values()) if p.pid and not p.exited]

    # ------------------------------------------------------------------ internals

    def _monitor(self, proc: Process, done: asyncio.Future[int]) -> None:
        task = asyncio.get_running_loop().create_task(self._watch_exit(proc, done))
        self._monitors.add(task)
        task.add_done_callback(self._monitors.discard)

    async def _watch_exit(self, proc: Process, done: asyncio.Future[int]) -> None:
        code = await done
        async with proc.lock:  # lets an in-flight Start publish TaskStart first
            deleted = proc.state is State.DELETED
            proc.set_exited(code)
        log.info("process exited", extra={"container_id": self.id, "exec_id": proc.exec_id,
                                           "pid": proc.pid, "exit_status": code})
        if not deleted:
            self._on_exit(proc)

    async def _cleanup(self, *, force: bool) -> None:
        """Release everything: runsc state, sandbox, rootfs mount, fds."""
        try:
            await self.runsc.delete(self.id, DeleteOptions(force=True))
        except RunscError as e:
            if not e.not_found:
                if not force:
                    raise
                log.warning("runsc delete failed during cleanup: %s", e)
        if self.init.io is not None:
            self.init.io.close()
        if self._rootfs_mounted:
            mount.unmount_all(os.path.join(self.bundle, "rootfs"))
            self._rootfs_mounted = False
        _remove_root(self.params.runsc.root)


def _write_state(bundle: str, runsc: GlobalOptions) -> None:
    state = {"binary": runsc.binary, "root": runsc.root, "log": runsc.log,
             "args": runsc.args()}
    Path(bundle, STATE_FILE).write_text(json.dumps(state))


def read_state(bundle: str) -> dict[str, object] | None:
    try:
        data = json.loads(Path(bundle, STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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

