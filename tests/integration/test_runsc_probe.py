"""The runsc wrapper against the real binaries: the probe agrees with the
captured ``runsc flags`` fixtures, and a busybox container goes through
create/start/wait/kill/exec/delete with the exit codes containerd expects."""

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
import pytest_asyncio

from shim import runsc
from shim.reaper import get_reaper
from shim.runsc import CreateOptions, DeleteOptions, GlobalOptions, KillOptions, Runsc, RunscError
from tests import paths

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
BUSYBOX = Path("/bin/busybox")
_PR_SET_CHILD_SUBREAPER = 36

BINARIES = [
    pytest.param("RUNSC_2022", 20221219, id="runsc-20221219"),
    pytest.param("RUNSC_2024", 20240729, id="runsc-20240729"),
]


def _binary(attr: str) -> Path:
    path: Path | None = getattr(paths, attr)
    if path is None:
        pytest.skip(f"{attr} is not installed (run scripts/install-deps)")
    return path


# --------------------------------------------------------------------------- probe


@pytest.mark.parametrize(("attr", "release"), BINARIES)
def test_probe_sync_matches_fixture(attr: str, release: int) -> None:
    caps = runsc.probe_sync(str(_binary(attr)))
    fixture = runsc.parse_flags((FIXTURES / f"runsc-flags-{release}.txt").read_text())
    assert caps.flags == frozenset(fixture), "re-capture tests/fixtures/runsc-flags-*.txt"
    assert caps.release == release
    assert caps.version == f"0.0~{release}.0"
    assert {"create", "start", "wait", "kill", "delete", "exec", "ps", "state", "events",
            "pause", "resume", "checkpoint", "list", "flags"} <= caps.subcommands
    assert "update" not in caps.subcommands


@pytest.mark.asyncio
async def test_probe_async_2024() -> None:
    binary = str(_binary("RUNSC_2024"))
    r = get_reaper()
    r.install(asyncio.get_running_loop(), subreaper=False)
    try:
        caps = await runsc.probe(binary)
    finally:
        r.uninstall()
    assert caps.default_platform == "systrap"
    assert caps.platforms == frozenset({"ptrace", "kvm", "systrap"})
    assert caps.nvproxy and caps.has_flag("nvproxy-driver-version")
    assert not caps.has_flag("nvproxy-allowed-driver-capabilities")
    assert "nvproxy" in caps.subcommands
    assert caps.supported_drivers == ("535.104.12", "535.129.03", "535.154.05", "535.161.07",
                                      "550.54.14", "550.54.15", "550.90.07")


def test_probe_2022_has_no_nvproxy() -> None:
    caps = runsc.probe_sync(str(_binary("RUNSC_2022")))
    assert caps.default_platform == "ptrace"
    assert caps.platforms == frozenset({"ptrace", "kvm"})
    assert not caps.nvproxy and caps.supported_drivers is None
    with pytest.raises(runsc.UnsupportedFlag, match=r"0\.0~20221219\.0 .* does not support "
                       r"--nvproxy \(added in release-20230529\.0\)"):
        runsc.check_flags(caps, {"nvproxy": "true"})


# --------------------------------------------------------------------------- lifecycle


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
    """Bundles under one runsc root, deleted with --force whatever happens."""

    def __init__(self, tmp: Path, runsc_bin: Path, network: runsc.Network = "none") -> None:
        self.tmp = tmp
        self.runsc = Runsc(GlobalOptions(binary=str(runsc_bin), root=str(tmp / "root"),
                                         log=str(tmp / "log.json"), network=network))
        self.ids: list[str] = []

    def bundle(self, cid: str, args: list[str]) -> str:
        bundle = self.tmp / cid
        (bundle / "rootfs/bin").mkdir(parents=True)
        shutil.copy(BUSYBOX, bundle / "rootfs/bin/busybox")
        for applet in ("sh", "sleep"):
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


@pytest_asyncio.fixture(params=["RUNSC_2022", "RUNSC_2024"])
async def sandbox(request: pytest.FixtureRequest, reaper: None,
                  tmp_path: Path) -> AsyncIterator[Sandbox]:
    box = Sandbox(tmp_path, _binary(request.param))
    try:
        yield box
    finally:
        await box.cleanup()


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
    assert await asyncio.wait_for(get_reaper().watch(sandbox_pid), 30) == 137


@pytest.mark.asyncio
async def test_wait_too_late_but_sandbox_pid_has_the_code(sandbox: Sandbox) -> None:
    sandbox_pid = await sandbox.create("quick", ["sh", "-c", "exit 7"])
    await sandbox.runsc.start("quick")
    assert await asyncio.wait_for(get_reaper().watch(sandbox_pid), 30) == 7
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
    assert await asyncio.wait_for(get_reaper().watch(started.pid), 30) == 3
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
async def test_network_refusal_names_the_config_key(reaper: None, tmp_path: Path) -> None:
    box = Sandbox(tmp_path, _binary("RUNSC_2024"), network="sandbox")
    try:
        await box.create("net", ["sleep", "100"])
        try:
            await box.runsc.start("net")
        except RunscError as e:
            assert "network enabled in root network namespace" in str(e)
            assert 'set network = "none"' in str(e) and "key `network`" in str(e)
        else:
            pytest.skip("runsc's sandbox network works on this host")
    finally:
        await box.cleanup()
