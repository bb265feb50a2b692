"""Where the task layer's errors meet the wire: one table, used by the daemon's
ttrpc server (``Server(error_status=wire_status)``).

containerd branches on these codes (shim-protocol.md §1.4): NotFound makes its
delete paths treat a process as already gone; FailedPrecondition, AlreadyExists
and InvalidArgument are reported to the user as they are. A runsc failure the
container layer could not interpret is Unknown, with runsc's own reason.
"""

from __future__ import annotations

from shim.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ShimError,
    Unimplemented,
)
from shim.runsc import RunscError
from shim.ttrpc.status import Code

__all__ = ["wire_status"]

_CODES: tuple[tuple[type[ShimError], Code], ...] = (
    (NotFound, Code.NOT_FOUND),
    (AlreadyExists, Code.ALREADY_EXISTS),
    (FailedPrecondition, Code.FAILED_PRECONDITION),
    (InvalidArgument, Code.INVALID_ARGUMENT),
    (Unimplemented, Code.UNIMPLEMENTED),
)


def wire_status(exc: Exception) -> Code | None:
    """The code for an error the shim raised on purpose; None for a bug."""
    if isinstance(exc, RunscError):
        return Code.NOT_FOUND if exc.not_found else Code.UNKNOWN
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return None
