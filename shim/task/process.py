"""One process (a container's init, or an exec in it): its state and its waiters.

The shape of containerd's runc shim (``pkg/process``): an init process and an
exec process, each driving its own state through its table in ``state.py``.
A process does bookkeeping only; what runsc does for each op lives in the
container (``container.py``), passed to :meth:`Process.transition` as the
action. That method is the one way a process changes state:

    take the process lock → ask the table (refuse?) → run the action →
    commit the state the table named → run ``then`` (publish the event)

The exit monitor takes the same lock, so an exit racing a Start is recorded
(and its TaskExit published) only after the Start and its TaskStart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol, TypeVar

from shim.task.state import EXEC_TRANSITIONS, INIT_TRANSITIONS, Op, State, Table, next_state
from shim.task.stdio import StdioPaths

__all__ = ["ExecProcess", "InitProcess", "Process", "StdioHandle"]

T = TypeVar("T")


class StdioHandle(Protocol):
    """What a process's IO offers: plain fds (ProcessIO) or a terminal (ConsoleIO)."""

    def child_spawned(self) -> None: ...
    def close_stdin(self) -> None: ...
    def close(self) -> None: ...


class Process:
    table: ClassVar[Table]

    def __init__(self, container_id: str, exec_id: str, stdio: StdioPaths) -> None:
        self.container_id = container_id
        self.exec_id = exec_id  # "" for the init process
        self.stdio = stdio
        self.io: StdioHandle | None = None
        self.pid = 0
        self.exit_status = 0
        self.exited_at: datetime | None = None
        self.lock = asyncio.Lock()
        self._state = State.CREATED
        self._exited = asyncio.Event()

    @property
    def state(self) -> State:
        return self._state

    @property
    def is_init(self) -> bool:
        return not self.exec_id

    @property
    def what(self) -> str:
        if self.is_init:
            return f"container {self.container_id}"
        return f"exec {self.exec_id} in container {self.container_id}"

    def check(self, op: Op) -> State:
        """The state ``op`` leads to; NotFound/FailedPrecondition if refused now."""
        return next_state(self.table, self._state, op, what=self.what)

    async def transition(self, op: Op, action: Callable[[], Awaitable[T]],
                         then: Callable[[], Any] | None = None) -> T:
        """Run ``action`` as ``op``: legal per the table, atomic per process."""
        async with self.lock:
            before, after = self._state, self.check(op)
            result = await action()
            if self._state is before:  # not if the process exited meanwhile
                self._state = after
            if then is not None:
                then()
            return result

    def record_exit(self, code: int) -> bool:
        """Record the exit once; False for a second report of the same exit.

        The state follows the table (a deleted process stays deleted); waiters
        wake only once State already says so, and the IO is released.
        """
        if self._exited.is_set():
            return False
        if Op.EXIT in self.table[self._state]:
            self._state = self.check(Op.EXIT)
        self.exit_status = code
        self.exited_at = datetime.now(UTC)
        if self.io is not None:
            self.io.close()
        self._exited.set()
        return True

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    async def wait(self) -> tuple[int, datetime]:
        await self._exited.wait()
        assert self.exited_at is not None
        return self.exit_status, self.exited_at


class InitProcess(Process):
    """A container's first process; its exit ends the container."""

    table = INIT_TRANSITIONS

    def __init__(self, container_id: str, stdio: StdioPaths) -> None:
        super().__init__(container_id, "", stdio)


class ExecProcess(Process):
    """A process added to a running container by Exec."""

    table = EXEC_TRANSITIONS

    def __init__(self, container_id: str, exec_id: str, stdio: StdioPaths,
                 spec: dict[str, Any]) -> None:
        super().__init__(container_id, exec_id, stdio)
        self.spec = spec
        # Its pid inside the sandbox (for `runsc kill --pid`); None until started.
        self.internal_pid: int | None = None
