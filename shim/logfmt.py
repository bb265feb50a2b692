"""Logging in containerd's logfmt style.

The daemon's stderr is the bundle's ``log`` FIFO, which containerd copies into
its own log; lines shaped like logrus text output read naturally there:
``time="…" level=info msg="…" key=value``. The runtime config's ``log_level``
and ``log_path`` (read at Create) adjust the level and add a file.
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["FifoHandler", "LogfmtFormatter", "apply_config", "setup"]

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}


def _quote(value: object) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "-._/:@+" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    """``time=… level=… msg=…`` plus every ``extra=`` field, in call order."""

    def __init__(self, **static: str) -> None:
        super().__init__()
        self._static = static

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ts += f".{int(record.msecs * 1000):06d}Z"
        level = record.levelname.lower().replace("warning", "warn")
        parts = [f'time="{ts}"', f"level={level}", f"msg={_quote(record.getMessage())}"]
        fields: dict[str, Any] = dict(self._static)
        fields.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        parts += [f"{k}={_quote(v)}" for k, v in fields.items()]
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class FifoHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler for the log FIFO that drops what cannot be written.

    When containerd restarts, the FIFO has no reader for a while; a logging
    traceback on stderr (the same FIFO) would only fail again, and must never
    stall or kill the shim. So this handler alone swallows its write errors,
    rather than the process-wide ``logging.raiseExceptions`` switch."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def setup(level: int, **static: str) -> None:
    handler = FifoHandler()
    handler.setFormatter(LogfmtFormatter(**static))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# The runtime config's log_level values (logrus names) as Python levels.
_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
           "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR,
           "fatal": logging.CRITICAL, "panic": logging.CRITICAL}


def apply_config(level: str, path: str | None) -> None:
    """The config's ``log_level`` (unless containerd started the shim with
    -debug, which wins) and ``log_path``: the same lines also go to that file."""
    root = logging.getLogger()
    if root.level != logging.DEBUG:
        root.setLevel(_LEVELS.get(level, logging.INFO))
    if path is None or any(getattr(h, "baseFilename", None) == path for h in root.handlers):
        return
    formatter = next((h.formatter for h in root.handlers if h.formatter), LogfmtFormatter())
    handler = logging.FileHandler(path, delay=True)
    handler.setFormatter(formatter)
    root.addHandler(handler)
