"""One process (a container's init or an exec): its state and its waiters.

The process does bookkeeping only; what runsc does lives in ``container.py``.
``lock`` serialises state-changing operations on this process, and the exit
monitor takes it too, so an exit that races a Start is recorded (and its
TaskExit published) only after the Start and its TaskStart have finished.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Protocol

from shim.task.state import EXEC_TRANSITIONS, INIT_TRANSITIONS, Op, State, Table, next_state
from shim.task.stdio import StdioPaths

__all__ = ["Process", "StdioHandle"]


class StdioHandle(Protocol):
    """What a process's IO offers: plain fds (ProcessIO) or a terminal (ConsoleIO)."""

    def child_spawned(self) -> None: ...
    def close_stdin(self) -> None: ...
    def close(self) -> None: ...


class Process:
    def __init__(self, container_id: str, exec_id: str, stdio: StdioPaths) -> None:
        self.container_id = container_id
        self.exec_id = exec_id  # "" for the init process
        self.stdio = stdio
        self.io: StdioHandle | None = None
        self.state = State.CREATED
        self.pid = 0
        # An exec's pid inside the sandbox (for `runsc kill --pid`).
        self.internal_pid: int | None = None
        self.exit_status = 0
        self.exited_at: datetime | None = None
        self.lock = asyncio.Lock()
        self._exited = asyncio.Event()

    @property
    def is_init(self) -> bool:
        return not self.exec_id

    @property
    def table(self) -> Table:
        return INIT_TRANSITIONS if self.is_init else EXEC_TRANSITIONS

    @property
    def what(self) -> str:
        if self.is_init:
            return f"container {self.container_id}"
        return f"exec {self.exec_id} in container {self.container_id}"

    def check(self, op: Op) -> State:
        """The state ``op`` leads to; FailedPrecondition if it is illegal now."""
        return next_state(self.table, self.state, op, what=self.what)

    def apply(self, op: Op) -> None:
        self.state = self.check(op)

    def set_exited(self, code: int) -> None:
        """Record the exit; waiters wake only once State already says STOPPED."""
        if self._exited.is_set():
            return
        self.exit_status = code
        self.exited_at = datetime.now(UTC)
        if self.state is not State.DELETED:
            self.state = State.STOPPED
        if self.io is not None:
            self.io.close()
        self._exited.set()

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    async def wait(self) -> tuple[int, datetime]:
        await self._exited.wait()
        assert self.exited_at is not None
        return self.exit_status, self.exited_at
