"""``interrupt_when``, which the script tests use to play a user's Ctrl-C."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator

import pytest

from tests.scripts import interrupt_when

_CHILD = """
import time
print("ready", flush=True)
try:
    time.sleep(30)
except KeyboardInterrupt:
    raise SystemExit(130)
"""


@pytest.fixture
def started_in_the_background() -> Iterator[None]:
    # What `suite &` in a script gives the suite (and, unless told otherwise,
    # every child): SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("started_in_the_background")
def test_the_interrupt_arrives_when_the_suite_runs_in_the_background() -> None:
    code, output = interrupt_when([sys.executable, "-c", _CHILD], "ready", signal.SIGINT, 10)
    assert (code, output) == (130, "ready\n")
