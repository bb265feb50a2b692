"""The runsc wrapper against the real binaries: the probe agrees with the
captured ``runsc flags`` fixtures, and a busybox container goes through
create/start/wait/kill/exec/delete with the exit codes containerd expects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from shim import runsc
from shim.daemon.reaper import Reaper
from shim.runsc import KillOptions, RunscError
from tests.integration.runsc_container import Sandbox, busybox_sandbox, runsc_binary

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

BINARIES = [
    pytest.param("RUNSC_2022", 20221219, id="runsc-20221219"),
    pytest.param("RUNSC_2024", 20240729, id="runsc-20240729"),
]


# --------------------------------------------------------------------------- probe


async def _probe(binary: str) -> runsc.RunscCapabilities:
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop(), subreaper=False)
    try:
        return await runsc.probe(binary, reaper, runsc.ProbeCache(None))
    finally:
        reaper.uninstall()


@pytest.mark.asyncio
@pytest.mark.parametrize(("attr", "release"), BINARIES)
async def test_probe_matches_fixture(attr: str, release: int) -> None:
    caps = await _probe(str(runsc_binary(attr)))
    fixture = runsc.parse_flags((FIXTURES / f"runsc-flags-{release}.txt").read_text())
    assert caps.flags == frozenset(fixture), "re-capture tests/fixtures/runsc-flags-*.txt"
    assert caps.release == release
    assert caps.version == f"0.0~{release}.0"
    assert {"create", "start", "wait", "kill", "delete", "exec", "ps", "state", "events",
            "pause", "resume", "checkpoint", "list", "flags"} <= caps.subcommands
    assert "update" not in caps.subcommands


@pytest.mark.asyncio
async def test_probe_async_2024() -> None:
    caps = await _probe(str(runsc_binary("RUNSC_2024")))
    assert caps.default_platform == "systrap"
    assert caps.platforms == frozenset({"ptrace", "kvm", "systrap"})
    assert caps.nvproxy and caps.has_flag("nvproxy-driver-version")
    assert not caps.has_flag("nvproxy-allowed-driver-capabilities")
    assert "nvproxy" in caps.subcommands
    assert caps.supported_drivers == ("535.104.12", "535.129.03", "535.154.05", "535.161.07",
                                      "550.54.14", "550.54.15", "550.90.07")


@pytest.mark.asyncio
async def test_probe_2022_has_no_nvproxy() -> None:
    caps = await _probe(str(runsc_binary("RUNSC_2022")))
    assert caps.default_platform == "ptrace"
    assert caps.platforms == frozenset({"ptrace", "kvm"})
    assert not caps.nvproxy and caps.supported_drivers is None
    with pytest.raises(runsc.UnsupportedFlag, match=r"0\.0~20221219\.0 .* does not support "
                       r"--nvproxy \(added in release-20230529\.0\)"):
        runsc.check_flags(caps, {"nvproxy": "true"})


# --------------------------------------------------------------------------- lifecycle


@pytest_asyncio.fixture(params=["RUNSC_2022", "RUNSC_2024"])
async def sandbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with busybox_sandbox(tmp_path, runsc_binary(request.param)) as box:
        yield box


@pytest.mark.asyncio
async def test_exit_code(sandbox: Sandbox) -> None:
    # The sleep lets `wait` reach the sandbox before the container exits.
    await sandbox.create("exit7", ["sh", "-c", "sleep 1; exit 7"])
    await sandbox.runsc.start("exit7")
    assert (await sandbox.runsc.state("exit7")).status == "running"
    assert await sandbox.runsc.wait("exit7") == 7
    await sandbox.runsc.delete("exit7")


@pytest.mark.asyncio
async def test_killed_is_137(sandbox: Sandbox) -> None:
    sandbox_pid = await sandbox.create("sleeper", ["sleep", "100"])
    state = await sandbox.runsc.state("sleeper")
    assert (state.status, state.pid) == ("created", sandbox_pid)
    await sandbox.runsc.start("sleeper")
    waiting = asyncio.create_task(sandbox.runsc.wait("sleeper"))
    assert await sandbox.runsc.ps("sleeper") == [1]
    await sandbox.runsc.pause("sleeper")
    assert (await sandbox.runsc.state("sleeper")).status == "paused"
    await sandbox.runsc.resume("sleeper")
    assert (await sandbox.runsc.stats("sleeper"))["pids"]["current"] == 1
    await asyncio.sleep(0.2)  # let `runsc wait` connect first
    await sandbox.runsc.kill("sleeper", KillOptions(signal=9))
    assert await asyncio.wait_for(waiting, 30) == 137
    # The sandbox process exits with the same code (exit(137), not a signal).
    assert await asyncio.wait_for(sandbox.reaper.watch(sandbox_pid), 30) == 137


@pytest.mark.asyncio
async def test_wait_too_late_but_sandbox_pid_has_the_code(sandbox: Sandbox) -> None:
    sandbox_pid = await sandbox.create("quick", ["sh", "-c", "exit 7"])
    await sandbox.runsc.start("quick")
    assert await asyncio.wait_for(sandbox.reaper.watch(sandbox_pid), 30) == 7
    with pytest.raises(RunscError) as info:
        await sandbox.runsc.wait("quick")
    assert info.value.exit_status_unavailable, str(info.value)
    assert "sandbox no longer running" in str(info.value)


@pytest.mark.asyncio
async def test_exec_exit_code_is_reaped(sandbox: Sandbox) -> None:
    await sandbox.create("host", ["sleep", "100"])
    await sandbox.runsc.start("host")
    started = await sandbox.runsc.exec("host", {"args": ["sh", "-c", "exit 3"], "cwd": "/",
                                                "env": ["PATH=/bin"],
                                                "user": {"uid": 0, "gid": 0}})
    assert started.internal_pid is not None and started.internal_pid > 1
    assert await asyncio.wait_for(sandbox.reaper.watch(started.pid), 30) == 3
    await sandbox.runsc.kill("host", KillOptions(signal=9, all=True))


@pytest.mark.asyncio
async def test_errors_come_from_the_log(sandbox: Sandbox) -> None:
    with pytest.raises(RunscError) as info:
        await sandbox.runsc.state("nope")
    assert info.value.not_found
    assert "file does not exist" in str(info.value)
    assert info.value.log_message is not None  # read back from log.json, not stderr
    await sandbox.create("busy", ["sleep", "100"])
    with pytest.raises(RunscError, match='cannot signal container "busy" in state created'):
        await sandbox.runsc.kill("busy", KillOptions(signal=9))
    await sandbox.runsc.start("busy")
    with pytest.raises(RunscError, match="cannot delete container that is not stopped"):
        await sandbox.runsc.delete("busy")


@pytest.mark.asyncio
async def test_network_refusal_names_the_config_key(tmp_path: Path) -> None:
    async with busybox_sandbox(tmp_path, runsc_binary("RUNSC_2024"), network="sandbox") as box:
        await box.create("net", ["sleep", "100"])
        try:
            await box.runsc.start("net")
        except RunscError as e:
            # This host's runsc refuses its own network stack: the error must
            # say which config key to change.
            assert "network enabled in root network namespace" in str(e)
            assert 'set network = "none"' in str(e) and "key `network`" in str(e)
        else:
            # Where runsc's netstack works, the same configuration simply runs.
            assert (await box.runsc.state("net")).status == "running"
