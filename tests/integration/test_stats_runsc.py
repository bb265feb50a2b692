"""Stats against the real runsc: a busybox container's ``events --stats`` becomes a Metrics Any
that decodes back, with the memory it filled and the processes it runs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from shim.api.io.containerd.cgroups import v1, v2
from shim.runsc import Runsc
from shim.task import stats
from tests.integration.runsc_container import busybox_sandbox, runsc_binary

FILL_MIB = 20
# Fills a tmpfs (gVisor keeps its pages in the sandbox's memory file), then idles with a child.
SCRIPT = (f"mkdir -p /dev/shm && dd if=/dev/zero of=/dev/shm/fill bs=1M count={FILL_MIB} "
          "&& sleep 100 & sleep 100")


@pytest_asyncio.fixture(params=["RUNSC_2024", "RUNSC_2022"])
async def running(request: pytest.FixtureRequest,
                  tmp_path: Path) -> AsyncIterator[tuple[Runsc, str]]:
    """A started container running SCRIPT; deleted with --force whatever happens."""
    async with busybox_sandbox(tmp_path, runsc_binary(request.param)) as box:
        # Unique: runsc names the sandbox's host cgroup after it.
        cid = f"stats-{uuid.uuid4().hex[:12]}"
        await box.create(cid, ["sh", "-c", SCRIPT])
        await box.runsc.start(cid)
        yield box.runsc, cid


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
