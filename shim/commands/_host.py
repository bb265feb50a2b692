"""What the commands need from this host, gathered the way the daemon does."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shim.daemon.reaper import Reaper
from shim.runsc import ProbeCache, RunscCapabilities, probe

__all__ = ["probe_runsc", "with_reaper"]

T = TypeVar("T")


def with_reaper(work: Callable[[Reaper], Awaitable[T]]) -> T:
    """Run ``work`` on a fresh event loop with a reaper for its children. Not
    a subreaper: a command starts runsc commands, not sandboxes to adopt."""

    async def main() -> T:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop(), subreaper=False)
        try:
            return await work(reaper)
        finally:
            reaper.uninstall()

    return asyncio.run(main())


async def probe_runsc(binary: str, reaper: Reaper) -> RunscCapabilities:
    """The same probe (and the same on-disk cache) as Create."""
    return await probe(binary, reaper, ProbeCache())
