"""gRPC status codes carried in ttrpc's ``google.rpc.Status`` and the one
exception type that is an *expected* answer on the wire."""

from __future__ import annotations

import enum

__all__ = ["Code", "RpcError"]


class Code(enum.IntEnum):
    """gRPC code numbers (google.rpc.Code); containerd maps them to errdefs."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RpcError(Exception):
    """An answer that goes on the wire as a non-OK status.

    Raised by handlers (directly or through the small domain classes in
    ``shim.errors``); the ttrpc server turns it into ``Response.status``.
    """

    code: Code = Code.UNKNOWN

    def __init__(self, message: str, code: Code | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}: {self.message!r})"
