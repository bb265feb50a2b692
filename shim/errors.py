"""Domain errors. Each is an RpcError with a fixed status code, so the task
service raises what happened and only the ttrpc dispatch speaks wire codes.

The codes are the ones containerd branches on (shim-protocol.md §1.4): NotFound
for a gone task or an exited process, FailedPrecondition for an operation in the
wrong state, AlreadyExists for a duplicate exec id."""

from __future__ import annotations

from shim.ttrpc.status import Code, RpcError

__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "RpcError",
    "Unimplemented",
    "Unknown",
]


class NotFound(RpcError):
    code = Code.NOT_FOUND


class AlreadyExists(RpcError):
    code = Code.ALREADY_EXISTS


class FailedPrecondition(RpcError):
    code = Code.FAILED_PRECONDITION


class InvalidArgument(RpcError):
    code = Code.INVALID_ARGUMENT


class Unimplemented(RpcError):
    code = Code.UNIMPLEMENTED


class Unknown(RpcError):
    code = Code.UNKNOWN
