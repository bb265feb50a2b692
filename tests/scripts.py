"""Importing the Python programs under scripts/ (they are not a package) so
tests can call their pure parts."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from types import ModuleType

from tests import paths


def load_script(filename: str, name: str) -> ModuleType:
    """scripts/<filename> as the module ``name``."""
    spec = importlib.util.spec_from_file_location(name, paths.REPO / "scripts" / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_when(argv: list[str], marker: str, sig: signal.Signals,
                   timeout: float) -> tuple[int, str]:
    """Run ``argv``, send it ``sig`` once a line of its output starts with
    ``marker``, and let it finish; (exit status, all it printed).

    The child starts with SIGINT at its default, as a terminal's foreground
    job does: a suite started in the background (``cmd &`` in a script) has
    SIGINT ignored, and Python keeps an inherited SIG_IGN for SIGINT, so the
    interrupt would never arrive."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=_default_sigint)
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(marker):
                proc.send_signal(sig)
                break
        rest, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(seen) + rest
