"""ttrpc, containerd's RPC protocol for shims: a sans-IO frame codec
(:mod:`shim.ttrpc.codec`), an asyncio server and an asyncio client.

The names below load on first use, so that ``import shim.ttrpc.status`` (which
``shim.errors`` does) stays cheap on the ``start`` path: the server and client
pull in asyncio and betterproto.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shim.ttrpc.client import Client, ClosedError, DeadlineExceededError
    from shim.ttrpc.codec import ProtocolError
    from shim.ttrpc.server import CallContext, Handler, Server
    from shim.ttrpc.status import Code, RpcError

__all__ = [
    "CallContext",
    "Client",
    "ClosedError",
    "Code",
    "DeadlineExceededError",
    "Handler",
    "ProtocolError",
    "RpcError",
    "Server",
]

_HOME = {
    "CallContext": "server",
    "Client": "client",
    "ClosedError": "client",
    "Code": "status",
    "DeadlineExceededError": "client",
    "Handler": "server",
    "ProtocolError": "codec",
    "RpcError": "status",
    "Server": "server",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
