"""One call, from a decoded request to its wire outcome: the handler's context
(metadata, namespace, deadline) and the only place where what a handler does
becomes a status. An :class:`RpcError`, or an exception the server's
``error_status`` maps, is an expected answer; anything else is logged with its
traceback and answered Unknown with the exception text."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import betterproto

from shim.api.ttrpc import Request
from shim.ttrpc import codec
from shim.ttrpc.status import Code, RpcError

__all__ = ["NAMESPACE_KEY", "CallContext", "ErrorStatus", "Handler", "Method", "call_context",
           "invoke"]

log = logging.getLogger("shim.ttrpc")

NAMESPACE_KEY = "containerd-namespace-ttrpc"

Handler = Callable[[Any, "CallContext"], Awaitable[betterproto.Message]]
"""A method implementation: (decoded request, context) -> response message."""
ErrorStatus = Callable[[Exception], "Code | None"]
"""The wire code for an exception a handler raised on purpose; None: unexpected."""


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler knows about its call besides the request message."""

    service: str
    method: str
    stream_id: int
    metadata: dict[str, list[str]]
    """Request metadata; keys lower-cased (Go's MD helpers do the same), values in order."""
    namespace: str | None
    """The ``containerd-namespace-ttrpc`` value containerd puts on every call."""
    timeout: float | None
    """The caller's remaining time in seconds when the request arrived (timeout_nano)."""
    deadline: float | None
    """``timeout`` as an absolute time on the event loop's clock (``loop.time()``)."""


@dataclass(frozen=True, slots=True)
class Method:
    request_type: type[betterproto.Message]
    handler: Handler


def call_context(stream_id: int, request: Request) -> CallContext:
    metadata: dict[str, list[str]] = {}
    for kv in request.metadata:
        metadata.setdefault(kv.key.lower(), []).append(kv.value)
    # Like Go's getRequestContext: only zero means "no deadline"; a negative
    # value is a deadline the caller has already missed.
    timeout = request.timeout_nano / 1e9 if request.timeout_nano != 0 else None
    deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
    namespace = metadata.get(NAMESPACE_KEY, [None])[0]
    return CallContext(
        service=request.service,
        method=request.method,
        stream_id=stream_id,
        metadata=metadata,
        namespace=namespace,
        timeout=timeout,
        deadline=deadline,
    )


async def invoke(method: Method, ctx: CallContext, request: Request,
                  error_status: ErrorStatus) -> tuple[bytes, Code, str]:
    """Run one handler; the only place where its outcome becomes a wire status."""
    try:
        message = codec.decode_message(method.request_type, request.payload)
    except codec.EnvelopeError as exc:
        return b"", Code.INVALID_ARGUMENT, f"unmarshal request error: {exc}"
    scope = asyncio.timeout_at(ctx.deadline)
    try:
        async with scope:
            reply = await method.handler(message, ctx)
        if not isinstance(reply, betterproto.Message):
            raise TypeError(f"handler returned {type(reply).__name__}, not a message")
        return bytes(reply), Code.OK, ""
    except RpcError as exc:
        # An OK code on an exception would read as success with no payload.
        code = Code.UNKNOWN if exc.code is Code.OK else exc.code
        return b"", code, exc.message
    except TimeoutError as exc:
        if scope.expired():
            return b"", Code.DEADLINE_EXCEEDED, "context deadline exceeded"
        return _unexpected(ctx, exc)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # our connection or server is going away: no reply
        # The handler awaited something that someone else cancelled.
        return b"", Code.CANCELLED, "context canceled"
    except Exception as exc:
        mapped = error_status(exc)
        if mapped is not None and mapped is not Code.OK:
            return b"", mapped, str(exc)
        return _unexpected(ctx, exc)


def _unexpected(ctx: CallContext, exc: Exception) -> tuple[bytes, Code, str]:
    log.error("ttrpc: %s/%s failed", ctx.service, ctx.method, exc_info=exc)
    return b"", Code.UNKNOWN, f"{type(exc).__name__}: {exc}"
