"""Stats against the real runsc: a busybox container's ``events --stats`` becomes a Metrics Any
that decodes back, with the memory it filled and the processes it runs."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from shim.api.io.containerd.cgroups import v1, v2
from shim.reaper import get_reaper
from shim.runsc import CreateOptions, DeleteOptions, GlobalOptions, Runsc, RunscError
from shim.task import stats
from tests import paths

BUSYBOX = Path("/bin/busybox")
_PR_SET_CHILD_SUBREAPER = 36
FILL_MIB = 20
# Fills a tmpfs (gVisor keeps its pages in the sandbox's memory file), then idles with a child.
SCRIPT = (f"mkdir -p /dev/shm && dd if=/dev/zero of=/dev/shm/fill bs=1M count={FILL_MIB} "
          "&& sleep 100 & sleep 100")


def _binary(attr: str) -> Path:
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
        "hostname": "stats",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        ],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]},
    }


def _bundle(tmp: Path, args: list[str]) -> Path:
    bundle = tmp / "bundle"
    (bundle / "rootfs/bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, bundle / "rootfs/bin/busybox")
    for applet in ("sh", "sleep", "dd", "mkdir"):
        (bundle / "rootfs/bin" / applet).symlink_to("busybox")
    (bundle / "config.json").write_text(json.dumps(_spec(args)))
    return bundle


@contextlib.contextmanager
def _subreaper() -> Iterator[None]:
    # runsc create forks the sandbox and exits: only a subreaper gets its exit.
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        yield
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest_asyncio.fixture
async def reaper() -> AsyncIterator[None]:
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed")
    r = get_reaper()
    with _subreaper():
        r.install(asyncio.get_running_loop(), subreaper=True)
        try:
            yield
        finally:
            r.uninstall()


@pytest_asyncio.fixture(params=["RUNSC_2024", "RUNSC_2022"])
async def running(request: pytest.FixtureRequest, reaper: None,
                  tmp_path: Path) -> AsyncIterator[tuple[Runsc, str]]:
    """A started container running SCRIPT; deleted with --force whatever happens."""
    runsc = Runsc(GlobalOptions(binary=str(_binary(request.param)), root=str(tmp_path / "root"),
                                log=str(tmp_path / "log.json"), network="none"))
    # Unique: runsc names the sandbox's host cgroup after it.
    cid = f"stats-{uuid.uuid4().hex[:12]}"
    bundle = _bundle(tmp_path, ["sh", "-c", SCRIPT])
    try:
        await runsc.create(cid, CreateOptions(bundle=str(bundle), pid_file=str(bundle / "pid")))
        await runsc.start(cid)
        yield runsc, cid
    finally:
        with contextlib.suppress(RunscError):
            await runsc.delete(cid, DeleteOptions(force=True))


async def _filled(runsc: Runsc, cid: str) -> dict[str, Any]:
    """The stats once SCRIPT's file shows in the sandbox's memory usage."""
    deadline = time.monotonic() + 30
    while True:
        data = await runsc.stats(cid)
        if data["memory"]["usage"].get("usage", 0) >= FILL_MIB << 20:
            return data
        if time.monotonic() > deadline:
            pytest.fail(f"memory never reached {FILL_MIB} MiB: {data}")
        await asyncio.sleep(0.2)


@pytest.mark.asyncio
async def test_stats_any_decodes(running: tuple[Runsc, str]) -> None:
    runsc, cid = running
    data = await _filled(runsc, cid)
    cgroup_v2 = stats.read_cgroup_v2()
    any_ = stats.metrics_any(data, cgroup_v2=cgroup_v2)
    if cgroup_v2:
        assert any_.type_url == "io.containerd.cgroups.v2.Metrics"
        m2 = v2.Metrics().parse(any_.value)
        usage, limit, pids, cpu = (m2.memory.usage, m2.memory.usage_limit, m2.pids.current,
                                   m2.cpu.usage_usec * 1000)
    else:
        assert any_.type_url == "io.containerd.cgroups.v1.Metrics"
        m1 = v1.Metrics().parse(any_.value)
        usage, limit, pids, cpu = (m1.memory.usage.usage, m1.memory.usage.limit,
                                   m1.pids.current, m1.cpu.usage.total)
    assert usage >= FILL_MIB << 20
    assert limit > 1 << 62  # runsc reports no limit: CRI must see "unlimited", not 0
    assert pids >= 1
    assert cpu > 0


@pytest.mark.asyncio
async def test_both_flavours_from_one_sample(running: tuple[Runsc, str]) -> None:
    runsc, cid = running
    data = await _filled(runsc, cid)
    m1 = v1.Metrics().parse(stats.metrics_any(data, cgroup_v2=False,
                                              memory_limit=512 << 20).value)
    m2 = v2.Metrics().parse(stats.metrics_any(data, cgroup_v2=True,
                                              memory_limit=512 << 20).value)
    assert m1.memory.usage.usage == m2.memory.usage == data["memory"]["usage"]["usage"]
    assert m1.memory.usage.limit == m2.memory.usage_limit == 512 << 20
    assert m1.pids.current == m2.pids.current >= 2  # at least the two sleeps
    assert m1.cpu.usage.total // 1000 == m2.cpu.usage_usec
