"""Domain errors: what the shim refuses, and why, in words for people.

Each kind is one small class. Raising code says *what* happened; it does not
know the wire. The task service maps these kinds to ttrpc status codes in one
table (``shim.task.errors``), which is what containerd branches on
(shim-protocol.md §1.4): NotFound for a gone task or an exited process,
FailedPrecondition for an operation in the wrong state, AlreadyExists for a
duplicate id, InvalidArgument for bad input, Unimplemented for what runsc
cannot do. No imports: every layer may use these.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "ShimError",
    "Unimplemented",
]


class ShimError(Exception):
    """A refusal or failure the shim reports to its caller; ``str()`` is the text."""

    @property
    def message(self) -> str:
        return str(self)


class NotFound(ShimError):
    """The container, exec or process does not exist (any more)."""


class AlreadyExists(ShimError):
    """An id that is already taken."""


class FailedPrecondition(ShimError):
    """The operation is not possible in the current state, or on this host."""


class InvalidArgument(ShimError):
    """Malformed or hostile input: names the field and the fix."""


class Unimplemented(ShimError):
    """Something this shim (or runsc) does not do."""
