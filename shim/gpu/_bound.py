"""Bounded text for messages built from input.

Refusals, notes and CDI load errors quote what a spec or a CDI file says, and
those are written by people the shim does not trust (a pod author, whoever can
write a spec directory). A quoted value is cut to a few dozen characters and a
list of values to a few items, so no message grows with its input: a 20,000
entry ``NVIDIA_VISIBLE_DEVICES`` or a YAML alias bomb cannot turn one refusal
into megabytes on the wire and in containerd's log.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable
from typing import Any

__all__ = ["MAX_MESSAGE", "clip", "listing", "short"]

# One refusal's cause or fix; the runsc error that follows stays readable.
MAX_MESSAGE = 1000
_ITEMS = 5

# Immutable once built (only attributes set here), so sharing it is safe.
_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _ITEMS
_REPR.maxlevel = 3


def short(value: Any) -> str:
    """``repr(value)``, cut so that it stays under about 60 characters."""
    return _REPR.repr(value)


def listing(items: Iterable[str], limit: int = _ITEMS, *, quote: bool = False) -> str:
    """ "a, b, c and 17 more": at most ``limit`` items, each clipped.

    Linear in the number of items whatever their size, and never holds more
    than ``limit`` of them.
    """
    shown: list[str] = []
    more = 0
    for item in items:
        if len(shown) < limit:
            shown.append(short(item) if quote else clip(item, 80))
        else:
            more += 1
    text = ", ".join(shown)
    return f"{text} and {more} more" if more else text


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"
