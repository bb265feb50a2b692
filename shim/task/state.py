"""Process lifecycles as data.

Theory of operation
-------------------
Every process the shim manages (a container's init, or an exec inside it) is
in exactly one :class:`State`. Each RPC that changes a process is an
:class:`Op`, and so is the reaper's news that it exited (``EXIT``).
``INIT_TRANSITIONS`` and ``EXEC_TRANSITIONS`` say, for each state, which ops
are legal and which state follows; this file is the only place a transition
is decided. An op that is missing from a table is refused with
FailedPrecondition naming the process, its state and the op. Queries (State,
Wait, Pids, Stats, Connect) are legal in every state and are not in the tables.

Rules, after containerd's runc shim (``process/init_state.go``,
``exec_state.go``):
- ``EXIT`` is legal from every live state. A second exit of the same process is
  not a transition (the table has no STOPPED → EXIT entry); callers ignore it.
- Signalling a process that has finished is :data:`GONE`: NotFound ("process
  already finished"), because containerd's delete and CRI's stop paths treat
  NotFound as "already exited" (shim-protocol.md §1.4), where a
  FailedPrecondition would fail the user's ``kubectl delete``.
- An exec cannot be paused on its own (the container is paused as a whole),
  and signalling one that has not started is refused.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from shim.errors import FailedPrecondition, NotFound

__all__ = ["EXEC_TRANSITIONS", "GONE", "INIT_TRANSITIONS", "Gone", "Op", "State", "next_state"]


class State(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    DELETED = "deleted"


class Op(enum.Enum):
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    KILL = "kill"
    EXIT = "exit"
    DELETE = "delete"
    EXEC = "exec"
    UPDATE = "update"
    CHECKPOINT = "checkpoint"


class Gone(enum.Enum):
    """The op addresses a process that has already finished: NotFound."""

    GONE = "gone"


GONE = Gone.GONE

Table = Mapping[State, Mapping[Op, State | Gone]]

INIT_TRANSITIONS: Table = {
    State.CREATED: {
        Op.START: State.RUNNING,
        Op.KILL: State.CREATED,
        Op.EXIT: State.STOPPED,
        Op.DELETE: State.DELETED,
        Op.EXEC: State.CREATED,
        Op.UPDATE: State.CREATED,
    },
    State.RUNNING: {
        Op.PAUSE: State.PAUSED,
        Op.KILL: State.RUNNING,
        Op.EXIT: State.STOPPED,
        Op.EXEC: State.RUNNING,
        Op.UPDATE: State.RUNNING,
        Op.CHECKPOINT: State.RUNNING,
    },
    State.PAUSED: {
        Op.RESUME: State.RUNNING,
        Op.KILL: State.PAUSED,
        Op.EXIT: State.STOPPED,
        Op.UPDATE: State.PAUSED,
        Op.CHECKPOINT: State.PAUSED,
    },
    State.STOPPED: {
        Op.KILL: GONE,
        Op.DELETE: State.DELETED,
    },
    State.DELETED: {
        Op.KILL: GONE,
    },
}

EXEC_TRANSITIONS: Table = {
    State.CREATED: {
        Op.START: State.RUNNING,
        # A failed start (or a delete before start) ends it: its Wait returns.
        Op.EXIT: State.STOPPED,
        Op.DELETE: State.DELETED,
    },
    State.RUNNING: {
        Op.KILL: State.RUNNING,
        Op.EXIT: State.STOPPED,
    },
    State.PAUSED: {},
    State.STOPPED: {
        Op.KILL: GONE,
        Op.DELETE: State.DELETED,
    },
    State.DELETED: {
        Op.KILL: GONE,
    },
}


def next_state(table: Table, state: State, op: Op, *, what: str) -> State:
    """The state after ``op``; NotFound or FailedPrecondition when it is refused.

    ``what`` names the process for the message, e.g. ``container web-1`` or
    ``exec probe-3 in container web-1``.
    """
    found = table[state].get(op)
    if found is GONE:
        raise NotFound(f"cannot {op.value} {what}: process already finished")
    if found is None:
        raise FailedPrecondition(f"cannot {op.value} {what}: it is {state.value}")
    return found
