"""Where the real components live on a machine prepared by scripts/install-deps."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("GVISORGPU_CACHE", "/var/cache/gvisorgpu-shim"))


def _first(*candidates: str | os.PathLike[str] | None) -> Path | None:
    for c in candidates:
        if c and Path(c).exists():
            return Path(c)
    return None


RUNSC_2024 = _first(os.environ.get("GVISORGPU_RUNSC_2024"), CACHE / "runsc-20240729/usr/bin/runsc")
RUNSC_2022 = _first(os.environ.get("GVISORGPU_RUNSC_2022"), "/usr/bin/runsc")
CONTAINERD = {
    "1.6": _first(shutil.which("containerd")),
    "1.7": _first(CACHE / "containerd-1.7/usr/bin/containerd"),
    "2.1": _first(CACHE / "containerd-2.1/usr/bin/containerd"),
}
def _shim() -> Path:
    """The installed shim: GVISORGPU_SHIM, else this checkout's venv (what
    scripts/install-deps makes), else the one on PATH (installed elsewhere)."""
    name = "containerd-shim-gvisorgpu-v1"
    found = _first(os.environ.get("GVISORGPU_SHIM"), REPO / ".venv/bin" / name, shutil.which(name))
    return found if found is not None else REPO / ".venv/bin" / name


SHIM = _shim()
