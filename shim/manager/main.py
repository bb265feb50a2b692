"""Entry point of ``containerd-shim-gvisorgpu-v1``.

containerd runs it with Go-style flags and an action (``start``, ``delete``)
or ``-info``; people run ``plan``, ``doctor`` and ``version`` with ordinary
``--long`` options. Only the module that an invocation needs is imported.
"""

from __future__ import annotations

import os
import sys

from shim.about import NAME, RUNTIME, VERSION

TYPE_CHECKING = False  # True for type checkers only
if TYPE_CHECKING:
    from typing import NoReturn

__all__ = ["main"]

_USER_COMMANDS = frozenset({"plan", "doctor", "version", "help", "--help", "--version"})
_USAGE = f"""\
usage: {NAME} [-namespace NS] [-address ADDR] [-publish-binary BIN] [-id ID]
       [-bundle DIR] [-socket PATH] [-debug] start|delete
       {NAME} -info | -v | -h
       {NAME} plan|doctor|version [--help]

containerd runs `start` and `delete` (and `-info` on containerd 2.x) for the
runtime {RUNTIME}; people run `plan BUNDLE`, `doctor` and `version`.
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _USER_COMMANDS:
        from shim.commands import run_command

        return run_command(argv)
    from shim.manager.flags import parse_shim_flags

    flags = parse_shim_flags(argv)
    if flags.version:
        sys.stdout.write(f"{NAME}:\n  Version: {VERSION}\n  Runtime: {RUNTIME}\n")
        return 0
    if flags.help:
        sys.stdout.write(_USAGE)
        return 0
    if flags.info:
        from shim.manager.info import info_action

        return info_action()
    if flags.action == "start":
        from shim.manager.start import start_action

        _exit_now(start_action(flags))
    if flags.action == "delete":
        from shim.manager.delete import delete_action

        _exit_now(delete_action(flags))
    sys.stderr.write(f"{NAME}: unknown action {flags.action!r}\n{_USAGE}")
    return 2


def _exit_now(code: int) -> NoReturn:
    """End an action without the interpreter's teardown. containerd waits for
    ``start`` and ``delete`` to exit on every container's critical path, and
    tearing down the modules (~2 ms) does nothing for a process that holds no
    resources beyond what the kernel releases; only unflushed output would be
    lost, so flush it first."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
