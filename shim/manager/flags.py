"""The Go shim library's command line: ``-namespace ns -address a -id x start``.

Parsed by hand with Go ``flag`` rules, because ``argparse`` and ``dataclasses``
would add milliseconds to every ``start`` and ``delete`` (shim-protocol.md §3).
"""

from __future__ import annotations

__all__ = ["ACTIONS", "ShimFlags", "parse_shim_flags"]

ACTIONS = ("start", "delete")
_BOOL_FLAGS = frozenset({"debug", "v", "version", "info", "h", "help"})
_ALIASES = {"v": "version", "h": "help"}


class ShimFlags:
    """The flags containerd passes; unknown ones are kept aside, not fatal."""

    def __init__(self) -> None:
        self.namespace = ""
        self.address = ""
        self.publish_binary = ""
        self.id = ""
        self.bundle = ""
        self.socket = ""
        self.debug = False
        self.version = False
        self.help = False
        self.info = False
        self.action = ""
        self.args: list[str] = []
        self.unknown: list[str] = []


_VALUE_FLAGS = frozenset({"namespace", "address", "publish_binary", "id", "bundle", "socket"})


def parse_shim_flags(argv: list[str]) -> ShimFlags:
    """Go ``flag`` rules: ``-name value``, ``-name=value``, ``--name``; booleans
    take no value; parsing stops at the first non-flag. A newer containerd's
    extra flag must not break us, so unknown flags are collected, and one that
    looks like it takes a value swallows it."""
    flags = ShimFlags()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            flags.args = argv[i + 1:] if arg == "--" else argv[i:]
            break
        name, eq, value = arg.lstrip("-").partition("=")
        key = name.replace("-", "_")
        if name in _BOOL_FLAGS:
            setattr(flags, _ALIASES.get(name, name),
                    not eq or value.lower() in ("1", "t", "true"))
        elif key in _VALUE_FLAGS:
            if not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            setattr(flags, key, value)
        else:
            flags.unknown.append(arg)
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("-") \
                    and argv[i + 1] not in ACTIONS:
                i += 1
                flags.unknown.append(argv[i])
        i += 1
    if flags.args:
        flags.action, flags.args = flags.args[0], flags.args[1:]
    return flags
