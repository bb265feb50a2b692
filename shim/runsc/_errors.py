"""RunscError, and reading runsc's own reason for a failure back from its log."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

from shim.errors import ShimError

__all__ = ["RunscError", "last_error_message", "log_mark", "sandbox_panic"]

_NETNS_REFUSAL = "cannot run with network enabled in root network namespace"
_EXIT_UNAVAILABLE = "exit status is unavailable"
# runsc's known dead ends, and what the operator should do about them.
_HINTS: tuple[tuple[str, str], ...] = (
    (
        "boot.createDeviceFile",
        "a device node the spec lists (such as /dev/nvidiactl) does not exist on the host; "
        "load the NVIDIA driver, or correct the CDI spec that named it",
    ),
    (
        _NETNS_REFUSAL,
        "runsc cannot set up its own network stack (--network=sandbox) on this host; set "
        'network = "none" (loopback only) or network = "host" in the shim\'s runtime config '
        "(key `network`: none | host | sandbox)",
    ),
    (
        "waiting for sandbox to start: EOF",
        "the sandbox died while booting; with nvproxy that is usually an NVIDIA driver this "
        "runsc does not support (see `runsc nvproxy list-supported-drivers`); for the cause, "
        "set debug = true and a debug-log under [runsc_config] in the runtime config and read "
        "runsc's boot log",
    ),
)


class RunscError(ShimError):
    """A runsc command failed; ``str()`` says why in runsc's own words.

    Callers that can tell what a failure means turn it into a domain error
    (``not_found`` into NotFound); the rest reach containerd as Unknown."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stderr: bytes | str = b"",
        log_message: str | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode  # None: we killed it after a timeout
        self.stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        self.log_message = log_message
        super().__init__(self._describe())

    @property
    def subcommand(self) -> str:
        return next((a for a in self.argv[1:] if not a.startswith("-")), "")

    @property
    def reason(self) -> str:
        if self.log_message:
            return self.log_message
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        if lines:
            return lines[-1]
        return "killed after a timeout" if self.returncode is None else (
            f"exit status {self.returncode}")

    @property
    def not_found(self) -> bool:
        """The container is unknown to runsc (already deleted, or never created),
        or the process to signal has already exited: runsc answers a kill of a
        container whose init is gone with "PID 0: no such process" (ESRCH)."""
        return "does not exist" in self.reason or "no such process" in self.reason

    @property
    def exit_status_unavailable(self) -> bool:
        """``wait`` came too late: the sandbox has exited (reap its pid instead)."""
        return _EXIT_UNAVAILABLE in self.reason

    def _describe(self) -> str:
        text = f"runsc {self.subcommand} failed: {self.reason}"
        haystack = f"{self.reason}\n{self.stderr}"
        hints = [hint for needle, hint in _HINTS if needle in haystack]
        return "; ".join([text, *hints])


def _records(text: str) -> Iterator[dict[str, Any]]:
    # runsc writes JSON records back to back with no newline; tolerate a torn
    # first record (we may start reading mid-file) and non-JSON noise.
    decoder = json.JSONDecoder()
    pos = 0
    while (pos := text.find("{", pos)) >= 0:
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            pos += 1
            continue
        if isinstance(obj, dict):
            yield obj


_LOG_TAIL = 64 * 1024
# How Go starts a crash report, and the frame that says where in runsc it was.
_PANIC_HEAD = ("panic: ", "fatal error: ")
_FRAME = re.compile(r"^(gvisor\.dev/gvisor/\S+?)\(.*\n\t(\S+\.go:\d+)", re.MULTILINE)


def sandbox_panic(path: str | None) -> str | None:
    """The sandbox's crash, from runsc's ``--panic-log``, in one line.

    When the sentry dies, runsc only says "urpc method … failed: EOF"; the
    reason is a Go panic that runsc writes to the panic log (gvisor-gpu.md §1.2:
    this is how an unsupported GPU driver or a missing device node shows).
    """
    if not path:
        return None
    try:
        with open(path, errors="replace") as f:
            text = f.read()[-_LOG_TAIL:]
    except OSError:
        return None
    head = next((ln for ln in text.splitlines() if ln.startswith(_PANIC_HEAD)), None)
    if head is None:
        return None
    frames = [(fn, where) for fn, where in _FRAME.findall(text)
              if not fn.startswith("gvisor.dev/gvisor/pkg/sync")]
    where = ""
    if frames:
        fn, line = frames[0]
        where = f" in {fn.removeprefix('gvisor.dev/gvisor/')} ({line.rsplit('/', 1)[-1]})"
    return f"the sandbox crashed: {head.strip()}{where}"


def last_error_message(path: str | None, offset: int = 0) -> str | None:
    """The ``msg`` of the last error-level record in runsc's JSON log after ``offset``."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(offset, size - _LOG_TAIL) if offset <= size else 0)
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    found = None
    for rec in _records(text):
        if rec.get("level") in ("error", "fatal", "panic") and isinstance(rec.get("msg"), str):
            found = rec["msg"]
    return found


def log_mark(path: str | None) -> int:
    try:
        return os.stat(path).st_size if path else 0
    except OSError:
        return 0
