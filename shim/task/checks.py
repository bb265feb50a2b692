"""Checks on task API requests that need no state: what the service refuses as
InvalidArgument before it finds a container or calls runsc.

Each one exists because the value would otherwise reach a place that fails
without saying whose fault it is: runsc (an exec process without ``args``, a
signal number it does not know) or the kernel (a terminal size that does not
fit ``struct winsize``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from shim.errors import InvalidArgument
from shim.oci import shape

__all__ = ["MAX_SIGNAL", "check_bundle", "check_checkpoint_path", "check_signal",
           "check_terminal_size", "exec_process"]

# Linux's SIGRTMAX: the highest signal number there is.
MAX_SIGNAL = 64
_WINSIZE_MAX = 0xFFFF  # struct winsize holds unsigned shorts


def check_bundle(bundle: str) -> str:
    if not bundle or not os.path.isabs(bundle):
        raise InvalidArgument(f"bundle {bundle!r} must be an absolute path to the container's "
                              "OCI bundle directory")
    return bundle


def exec_process(exec_id: str, raw: bytes) -> dict[str, Any]:
    """The OCI process an Exec carries (JSON in ``spec.value``), with the JSON
    types runsc reads checked and a non-empty ``args``."""
    source = f"exec {exec_id}: process spec"
    try:
        spec = json.loads(raw)
    except ValueError as e:
        raise InvalidArgument(f"{source} is not JSON: {e}") from None
    if not isinstance(spec, dict):
        raise InvalidArgument(f"{source} must be a JSON object")
    shape.check(spec, shape.PROCESS, "", source)
    if not spec.get("args"):
        raise InvalidArgument(f"{source} has no args: give the command to run")
    cwd = spec.get("cwd")
    if cwd is not None and not os.path.isabs(cwd):
        raise InvalidArgument(f"{source}: cwd {cwd!r} must be an absolute path")
    return spec


def check_signal(what: str, signal: int) -> int:
    # runsc refuses 0 (kill(2)'s "is it there?") as an unknown signal too.
    if not 1 <= signal <= MAX_SIGNAL:
        raise InvalidArgument(f"cannot signal {what}: {signal} is not a signal number "
                              f"(1 to {MAX_SIGNAL})")
    return signal


def check_terminal_size(what: str, width: int, height: int) -> None:
    if width > _WINSIZE_MAX or height > _WINSIZE_MAX:
        raise InvalidArgument(f"cannot resize the terminal of {what} to {width}x{height}: "
                              f"at most {_WINSIZE_MAX} columns and rows")


def check_checkpoint_path(what: str, path: str) -> str:
    if not path or not os.path.isabs(path):
        raise InvalidArgument(f"cannot checkpoint {what}: the image path {path!r} must be an "
                              "absolute directory path")
    return path
