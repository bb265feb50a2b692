"""What a container needs from runsc, as a protocol.

:class:`shim.runsc.Runsc` is the real implementation; the unit tests drive
every state-by-operation pair of a container against a fake that records its
calls, and the e2e suite proves the real one. ``ChildWatcher`` is the part of
the daemon's reaper a container uses: a future for a host pid's exit code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

from shim.runsc import (
    CheckpointOptions,
    CreateOptions,
    DeleteOptions,
    ExecStarted,
    GlobalOptions,
    KillOptions,
    Stdio,
    WaitOptions,
)

__all__ = ["ChildWatcher", "SandboxRuntime"]


class SandboxRuntime(Protocol):
    """runsc bound to one sandbox's global flags."""

    @property
    def options(self) -> GlobalOptions: ...

    async def create(self, container_id: str, opts: CreateOptions,
                     stdio: Stdio | None = None) -> None: ...
    async def start(self, container_id: str, stdio: Stdio | None = None) -> None: ...
    async def wait(self, container_id: str, opts: WaitOptions | None = None) -> int: ...
    async def kill(self, container_id: str, opts: KillOptions | None = None) -> None: ...
    async def delete(self, container_id: str, opts: DeleteOptions | None = None) -> None: ...
    async def pause(self, container_id: str) -> None: ...
    async def resume(self, container_id: str) -> None: ...
    async def checkpoint(self, container_id: str, opts: CheckpointOptions) -> None: ...
    async def stats(self, container_id: str) -> dict[str, Any]: ...
    async def exec(self, container_id: str, process: Mapping[str, Any], *,
                   pid_file: str | None = None, internal_pid_file: str | None = None,
                   console_socket: str | None = None,
                   stdio: Stdio | None = None) -> ExecStarted: ...


class ChildWatcher(Protocol):
    def watch(self, pid: int) -> asyncio.Future[int]: ...
