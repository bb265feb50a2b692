"""Process lifecycles as data.

Theory of operation
-------------------
Every process the shim manages (a container's init, or an exec inside it) is
in exactly one :class:`State`. Each RPC that changes a process is an
:class:`Op`. ``INIT_TRANSITIONS`` and ``EXEC_TRANSITIONS`` say, for each state,
which ops are legal and which state follows; an op that is missing from the
table is refused with FailedPrecondition naming the process, its state and the
op. Queries (State, Wait, Pids, Stats, Connect) are legal in every state and are
not in the tables.

Two rules, after containerd's runc shim (``process/init_state.go``):
- ``EXIT`` is not an RPC: it is the reaper telling us the process is gone, and it
  is legal from every live state.
- Kill of a stopped process is NotFound rather than FailedPrecondition, because
  containerd's delete paths tolerate NotFound for "already exited"
  (shim-protocol.md §1.4); that is decided by the caller, not here.

Exec processes have the smaller table: they cannot be paused on their own (the
container is paused as a whole).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from shim.errors import FailedPrecondition

__all__ = ["EXEC_TRANSITIONS", "INIT_TRANSITIONS", "Op", "State", "next_state"]


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


Table = Mapping[State, Mapping[Op, State]]

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
        Op.DELETE: State.DELETED,
    },
    State.DELETED: {},
}

EXEC_TRANSITIONS: Table = {
    State.CREATED: {
        Op.START: State.RUNNING,
        Op.EXIT: State.STOPPED,
        Op.DELETE: State.DELETED,
    },
    State.RUNNING: {
        Op.KILL: State.RUNNING,
        Op.EXIT: State.STOPPED,
    },
    State.STOPPED: {
        Op.DELETE: State.DELETED,
    },
    State.PAUSED: {},
    State.DELETED: {},
}


def next_state(table: Table, state: State, op: Op, *, what: str) -> State:
    """The state after ``op``; FailedPrecondition when the table has no entry.

    ``what`` names the process for the message, e.g. ``container web-1`` or
    ``exec probe-3 in container web-1``.
    """
    try:
        return table[state][op]
    except KeyError:
        raise FailedPrecondition(f"cannot {op.value} {what}: it is {state.value}") from None
