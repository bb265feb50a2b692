"""shim.logfmt: containerd-style lines, and the runtime config's log_level and
log_path applied at Create."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from shim import logfmt


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        for h in root.handlers:
            if h not in handlers:
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def test_lines_read_like_containerds(root_logger: logging.Logger) -> None:
    record = logging.LogRecord("shim", logging.WARNING, __file__, 1, 'a "quoted" msg', None, None)
    record.container_id = "web-1"
    line = logfmt.LogfmtFormatter(runtime="io.containerd.gvisorgpu.v1").format(record)
    assert line.startswith('time="')
    assert 'level=warn msg="a \\"quoted\\" msg" runtime=io.containerd.gvisorgpu.v1' in line
    assert line.endswith("container_id=web-1")


@pytest.mark.parametrize(("start", "config", "result"), [
    (logging.INFO, "debug", logging.DEBUG),
    (logging.INFO, "warn", logging.WARNING),
    (logging.INFO, "panic", logging.CRITICAL),
    # containerd started the shim with -debug: that wins.
    (logging.DEBUG, "error", logging.DEBUG),
])
def test_log_level_follows_the_config(root_logger: logging.Logger, start: int, config: str,
                                      result: int) -> None:
    root_logger.setLevel(start)
    logfmt.apply_config(config, None)
    assert root_logger.level == result


def test_log_path_gets_the_same_lines_once(root_logger: logging.Logger, tmp_path: Path) -> None:
    logfmt.setup(logging.INFO, runtime="r")
    path = str(tmp_path / "shim.log")
    logfmt.apply_config("info", path)
    logfmt.apply_config("info", path)  # a second Create in the same pod shim
    logging.getLogger("shim.task").info("created", extra={"container_id": "c1"})
    lines = Path(path).read_text().splitlines()
    assert len(lines) == 1 and 'msg=created runtime=r container_id=c1' in lines[0]
