"""A stand-in for runsc behind the task layer's ``SandboxRuntime`` protocol.

It records every call, can be told to fail a subcommand, and plays the part of
the processes runsc would leave: ``create`` writes a pid file naming a real
(sleeping) child of the test, so that killing or reaping "the sandbox" acts on
a process the test owns; ``exec`` reports host and sandbox pids the test picks.
Exits are futures the test resolves (:class:`Exits`), as the daemon's reaper
would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shim.runsc import (
    CheckpointOptions,
    CreateOptions,
    DeleteOptions,
    ExecStarted,
    GlobalOptions,
    KillOptions,
    RunscError,
    Stdio,
    WaitOptions,
)


@dataclass
class Call:
    command: str
    container_id: str
    options: Any = None


@dataclass
class FakeRunsc:
    options: GlobalOptions = field(default_factory=lambda: GlobalOptions(binary="/fake/runsc"))
    calls: list[Call] = field(default_factory=list)
    # subcommand -> the runsc error it should answer with
    failures: dict[str, str] = field(default_factory=dict)
    exec_internal_pid: int | None = 7
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    waiting: dict[str, asyncio.Future[int]] = field(default_factory=dict)
    _next_exec_pid: int = 900_000

    def _record(self, command: str, container_id: str, options: Any = None) -> None:
        self.calls.append(Call(command, container_id, options))
        reason = self.failures.get(command)
        if reason is not None:
            raise RunscError(["runsc", command, container_id], 128, reason.encode())

    def commands(self) -> list[str]:
        return [c.command for c in self.calls]

    async def create(self, container_id: str, opts: CreateOptions,
                     stdio: Stdio | None = None) -> None:
        self._record("create", container_id, opts)
        # Named as runsc names its sandbox process, which is how the shim tells
        # a live sandbox from a dead one.
        child = subprocess.Popen(["runsc-sandbox", "60"], executable="sleep",
                                 start_new_session=True)
        self.children.append(child)
        assert opts.pid_file is not None
        with open(opts.pid_file, "w") as f:
            f.write(str(child.pid))

    async def start(self, container_id: str, stdio: Stdio | None = None) -> None:
        self._record("start", container_id, stdio)

    async def wait(self, container_id: str, opts: WaitOptions | None = None) -> int:
        self._record("wait", container_id, opts)
        fut = self.waiting.setdefault(container_id, asyncio.get_running_loop().create_future())
        return await fut

    async def kill(self, container_id: str, opts: KillOptions | None = None) -> None:
        self._record("kill", container_id, opts)

    async def delete(self, container_id: str, opts: DeleteOptions | None = None) -> None:
        self._record("delete", container_id, opts)

    async def pause(self, container_id: str) -> None:
        self._record("pause", container_id)

    async def resume(self, container_id: str) -> None:
        self._record("resume", container_id)

    async def checkpoint(self, container_id: str, opts: CheckpointOptions) -> None:
        self._record("checkpoint", container_id, opts)

    async def stats(self, container_id: str) -> dict[str, Any]:
        self._record("stats", container_id)
        return {"pids": {"current": 1}}

    async def exec(self, container_id: str, process: Mapping[str, Any], *,
                   pid_file: str | None = None, internal_pid_file: str | None = None,
                   console_socket: str | None = None,
                   stdio: Stdio | None = None) -> ExecStarted:
        self._record("exec", container_id, dict(process))
        self._next_exec_pid += 1
        return ExecStarted(self._next_exec_pid, self.exec_internal_pid)

    def close(self) -> None:
        for child in self.children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()


class Exits:
    """The reaper's part: a future per pid, resolved by the test."""

    def __init__(self) -> None:
        self.futures: dict[int, asyncio.Future[int]] = {}

    def watch(self, pid: int) -> asyncio.Future[int]:
        return self.futures.setdefault(pid, asyncio.get_running_loop().create_future())

    def exit(self, pid: int, code: int) -> None:
        self.watch(pid).set_result(code)
