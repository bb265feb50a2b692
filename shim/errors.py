"""Domain errors: what the shim refuses, and why, in words for people.

Each kind is one small class. Raising code says *what* happened; it does not
know the wire. The task service maps these kinds to ttrpc status codes in one
table (``shim.task.errors``), which is what containerd branches on
(shim-protocol.md §1.4): NotFound for a gone task or an exited process,
FailedPrecondition for an operation in the wrong state, AlreadyExists for a
duplicate id, InvalidArgument for bad input, Unimplemented for what runsc
cannot do. Nothing but the standard library: every layer may use these.
"""

from __future__ import annotations

import errno

__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "ShimError",
    "Unimplemented",
    "bad_path",
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


# errnos that say a path the caller gave is wrong (missing, the wrong kind of
# file, not allowed), as opposed to the host failing (EMFILE, ENOMEM, EIO, ...).
_BAD_PATH_ERRNOS = frozenset({
    errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENXIO, errno.EACCES,
    errno.ELOOP, errno.ENAMETOOLONG, errno.EROFS, errno.EINVAL, errno.ENODEV,
})


def bad_path(exc: OSError, what: str) -> InvalidArgument | None:
    """InvalidArgument for an OSError on a path from the request (``what`` names
    the field and the path); None when the errno is the host's problem."""
    if exc.errno not in _BAD_PATH_ERRNOS:
        return None
    return InvalidArgument(f"{what}: {exc.strerror or exc}")
