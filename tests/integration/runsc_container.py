"""Real busybox containers under a real runsc, for the integration tests.

``busybox_sandbox`` installs the daemon's reaper as a child subreaper and hands
out a ``Sandbox``: one runsc root in a temporary directory whose containers are
deleted with --force on the way out, whatever the test did to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from shim import runsc
from shim.daemon.reaper import Reaper
from shim.runsc import CreateOptions, DeleteOptions, GlobalOptions, Runsc, RunscError
from tests import paths

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "sleep", "dd", "mkdir")
_PR_SET_CHILD_SUBREAPER = 36


def runsc_binary(attr: str) -> Path:
    """``paths.RUNSC_2022`` or ``paths.RUNSC_2024`` by name, or skip."""
    path: Path | None = getattr(paths, attr)
    if path is None:
        pytest.skip(f"{attr} is not installed (run scripts/install-deps)")
    return path


def _spec(args: list[str]) -> dict[str, Any]:
    return {
        "ociVersion": "1.0.0",
        "process": {"user": {"uid": 0, "gid": 0}, "args": args, "cwd": "/",
                    "env": ["PATH=/bin"]},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runsc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        ],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]},
    }


class Sandbox:
    """Bundles under one runsc root, deleted with --force by ``cleanup``."""

    def __init__(self, tmp: Path, runsc_bin: Path, reaper: Reaper,
                 network: runsc.Network = "none") -> None:
        self.tmp = tmp
        self.reaper = reaper
        self.runsc = Runsc(GlobalOptions(binary=str(runsc_bin), root=str(tmp / "root"),
                                         log=str(tmp / "log.json"), network=network), reaper)
        self.ids: list[str] = []

    def bundle(self, cid: str, args: list[str]) -> str:
        bundle = self.tmp / cid
        (bundle / "rootfs/bin").mkdir(parents=True)
        shutil.copy(BUSYBOX, bundle / "rootfs/bin/busybox")
        for applet in APPLETS:
            (bundle / "rootfs/bin" / applet).symlink_to("busybox")
        (bundle / "config.json").write_text(json.dumps(_spec(args)))
        return str(bundle)

    async def create(self, cid: str, args: list[str]) -> int:
        """Create and return the sandbox pid."""
        bundle = self.bundle(cid, args)
        self.ids.append(cid)
        await self.runsc.create(cid, CreateOptions(bundle=bundle, pid_file=f"{bundle}/init.pid"))
        return int(Path(bundle, "init.pid").read_text())

    async def cleanup(self) -> None:
        for cid in self.ids:
            with contextlib.suppress(RunscError):
                await self.runsc.delete(cid, DeleteOptions(force=True))


@contextlib.contextmanager
def _subreaper() -> Iterator[None]:
    # runsc create forks the sandbox and exits: only a subreaper gets its exit.
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        yield
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@contextlib.asynccontextmanager
async def busybox_sandbox(
    tmp: Path, runsc_bin: Path, network: runsc.Network = "none"
) -> AsyncIterator[Sandbox]:
    """A ``Sandbox`` with the reaper installed; skips where busybox-static is missing."""
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed")
    reaper = Reaper()
    with _subreaper():
        reaper.install(asyncio.get_running_loop(), subreaper=True)
        try:
            box = Sandbox(tmp, runsc_bin, reaper, network)
            try:
                yield box
            finally:
                await box.cleanup()
        finally:
            reaper.uninstall()
