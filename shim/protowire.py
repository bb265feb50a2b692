"""Decoding protobuf from untrusted peers without betterproto's leniency.

betterproto slices past the end of truncated fields and turns unknown wire
types into None, so a cut-off or garbled message would parse into plausible
defaults. :func:`strict_parse` checks the framing of the top-level fields
first, refusing such input as Go's decoder does, and turns whatever the
parser raises into one error type. The ttrpc codec and the runtime options
both decode through it.
"""

from __future__ import annotations

from typing import TypeVar

import betterproto

__all__ = ["WireFormatError", "strict_parse", "wire_format_problem"]

_M = TypeVar("_M", bound=betterproto.Message)


class WireFormatError(ValueError):
    """The bytes are not a message of the expected type."""


def strict_parse(message: _M, data: bytes) -> _M:
    """Parse ``data`` into ``message``; :class:`WireFormatError` if it is not one."""
    name = type(message).__name__
    reason = wire_format_problem(data)
    if reason is not None:
        raise WireFormatError(f"undecodable {name}: {reason}")
    # betterproto reports what it does catch with whatever the failing step
    # raises (EOFError, UnicodeDecodeError, ...); callers check types.
    try:
        return message.parse(data)
    except Exception as exc:
        raise WireFormatError(f"undecodable {name}: {exc}") from exc


def wire_format_problem(data: bytes) -> str | None:
    """Why ``data`` is not a sequence of protobuf fields, or None if it is."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        if key is None:
            return "truncated field key"
        wire_type = key & 7
        if key >> 3 == 0:
            return "field number 0"
        if wire_type == 0:
            value, pos = _varint(data, pos)
            if value is None:
                return "truncated varint"
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            if length is None:
                return "truncated length"
            pos += length
        else:
            return f"unsupported wire type {wire_type}"
        if pos > len(data):
            return "field runs past the end"
    return None


def _varint(data: bytes, pos: int) -> tuple[int | None, int]:
    value = shift = 0
    for i in range(pos, min(len(data), pos + 10)):
        value |= (data[i] & 0x7F) << shift
        if data[i] < 0x80:
            return value, i + 1
        shift += 7
    return None, pos
