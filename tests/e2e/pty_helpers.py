"""Drive a command (`ctr run -t`, `ctr task exec -t`) from a real pseudo-terminal.

The command runs on the slave side of a fresh pty, in its own session with the
pty as its controlling terminal (util-linux `setsid --ctty`, so no Python code
runs between fork and exec), exactly as if a user had typed it in a terminal:
ctr sees a console, puts it in raw mode, reads its size and gets SIGWINCH when
the test resizes it. The test plays the user on the master side.

    with Terminal(ctr.argv("run", "-t", ...), rows=30, cols=100) as term:
        term.expect(rb"# ")
        term.send(b"echo $((6*7)); exit\\r")
        term.expect(rb"42\\r\\n")
        assert term.wait() == 0
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import select
import shutil
import struct
import subprocess
import termios
import time
from collections.abc import Sequence
from types import TracebackType

_SETSID = shutil.which("setsid")
# "Where is the cursor?" (DSR 6). busybox's line editor asks it at every prompt
# and takes what arrives next as the answer, so keys typed before a real
# terminal would have answered could be eaten; like a terminal, answer at once.
_CURSOR_QUERY = b"\x1b[6n"
_CURSOR_REPLY = b"\x1b[1;1R"


def set_size(fd: int, rows: int, cols: int) -> None:
    """TIOCSWINSZ on a pty end; on the master it also sends SIGWINCH to the
    terminal's foreground process group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def get_size(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


class Terminal:
    """A child process attached to a new pty; everything it prints is kept in `output`."""

    def __init__(self, argv: Sequence[str], *, rows: int = 24, cols: int = 80,
                 env: dict[str, str] | None = None) -> None:
        if _SETSID is None:
            raise FileNotFoundError("setsid (util-linux) is needed to give ctr a terminal")
        self.argv = list(argv)
        self.master, slave = os.openpty()
        self.output = bytearray()
        self._answered = 0  # offset in output up to which cursor queries were answered
        self._eof = False
        try:
            # The size is the terminal's before the child starts: what ctr
            # reads and passes on as the first ResizePty.
            set_size(slave, rows, cols)
            # setsid does not fork here (the child is not a group leader), so
            # self.proc.pid is the command itself.
            self.proc = subprocess.Popen([_SETSID, "--ctty", *argv], stdin=slave,
                                         stdout=slave, stderr=slave, env=env, close_fds=True)
        except BaseException:
            os.close(self.master)
            raise
        finally:
            os.close(slave)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def send(self, data: bytes) -> None:
        """Type `data` (use \\r for Enter, as a terminal sends it; \\x04 is ^D)."""
        view = memoryview(data)
        while view:
            written = os.write(self.master, view)
            view = view[written:]

    def resize(self, rows: int, cols: int) -> None:
        set_size(self.master, rows, cols)

    def _read_some(self, timeout: float) -> bool:
        """Append what arrives within `timeout`; False at EOF (child side all closed)."""
        if self._eof:
            return False
        ready, _, _ = select.select([self.master], [], [], max(timeout, 0.0))
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError as e:
            # Linux reports a pty master whose slaves are all closed as EIO.
            if e.errno != errno.EIO:
                raise
            chunk = b""
        if not chunk:
            self._eof = True
            return False
        self.output += chunk
        self._answer_cursor_queries()
        return True

    def _answer_cursor_queries(self) -> None:
        while (at := self.output.find(_CURSOR_QUERY, self._answered)) >= 0:
            self._answered = at + len(_CURSOR_QUERY)
            self.send(_CURSOR_REPLY)
        # A query split across two reads is found on the next one.
        self._answered = max(self._answered, len(self.output) - len(_CURSOR_QUERY) + 1)

    def expect(self, pattern: bytes, timeout: float = 30.0, start: int = 0) -> re.Match[bytes]:
        """Wait until `pattern` matches the output from offset `start` on."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.output, start)
            if found is not None:
                return found
            left = deadline - time.monotonic()
            if left <= 0 or not self._read_some(min(left, 0.5)):
                what = "timed out" if left <= 0 else "the terminal closed"
                raise AssertionError(f"{what} waiting for {pattern!r}; output so far: "
                                     f"{bytes(self.output)!r}")

    def wait(self, timeout: float = 30.0) -> int:
        """The child's exit status, reading (and keeping) its output meanwhile so
        that it never blocks on a full pty buffer."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.argv} still runs after {timeout:g} s; "
                                     f"output: {bytes(self.output)!r}")
            self._read_some(0.1)
        # The rest of its output, up to EOF (or a moment, should something
        # else still hold the terminal open).
        drain_until = time.monotonic() + 2
        while time.monotonic() < drain_until and self._read_some(0.05):
            pass
        return self.proc.returncode

    def close(self) -> None:
        """Kill the child if it still runs (a failed test), and release the pty."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self.master)
