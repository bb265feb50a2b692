"""Identifiers that end up in paths: container ids, exec ids, namespaces.

containerd validates its own names with one rule (``pkg/identifiers``):
letters and digits, runs of them joined by single ``.``, ``_`` or ``-``, at
most 76 characters. The shim sees ids from its socket, and a peer that is not
containerd, or a bug, could send ``.`` or ``x/../../y``: an id used in
``<root>/<namespace>/<id>`` or ``<bundle>/<exec id>.pid`` must never leave
its directory. So every id is checked with the same rule before it is used.
"""

from __future__ import annotations

import re

from shim.errors import InvalidArgument

__all__ = ["MAX_LENGTH", "check_id"]

MAX_LENGTH = 76
_VALID = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*\Z")


def check_id(kind: str, value: str) -> str:
    """``value`` if it is a valid identifier; InvalidArgument naming ``kind`` if not."""
    if not value:
        raise InvalidArgument(f"{kind} must not be empty")
    if len(value) > MAX_LENGTH:
        raise InvalidArgument(f"{kind} {value[:MAX_LENGTH]!r}… is longer than {MAX_LENGTH} "
                              "characters")
    if not _VALID.match(value):
        raise InvalidArgument(
            f"{kind} {value!r} is not a valid identifier: use letters and digits, joined by "
            "single '.', '_' or '-' (containerd's identifier rules)")
    return value
