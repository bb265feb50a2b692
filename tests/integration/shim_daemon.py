"""A real shim daemon, started the way containerd starts it, driven over ttrpc.

containerd's part is played by the test: it runs the installed binary's
``start`` action with containerd's flags and environment, serves the events
endpoint the daemon publishes to (``Events/Forward``, recorded), and calls the
task API with the project's own ttrpc client. Containers are busybox bundles
run by the real runsc. This lets tests do what containerd never does on
purpose: cancel calls half-way, send hostile ids and garbage frames.

Everything started is stopped on the way out: the containers (runsc delete),
the daemon, and the forkserver that the first ``start`` launches for this
"containerd" (found by its title, which names our address).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import betterproto
import psutil
import pytest
from betterproto.lib.google.protobuf import Any as AnyMessage
from betterproto.lib.google.protobuf import Empty

from shim.api.containerd.services.events.ttrpc.v1 import ForwardRequest
from shim.api.containerd.task import v2 as api
from shim.api.runtimeoptions.v1 import Options as RuntimeOptions
from shim.ttrpc.client import Client
from shim.ttrpc.server import CallContext, Server
from tests import paths
from tests.e2e import leftovers
from tests.integration.runsc_container import APPLETS, BUSYBOX

NAMESPACE = "itest"
TASK = "containerd.task.v2.Task"
M = TypeVar("M", bound=betterproto.Message)


@dataclass
class Events:
    """What the daemon published, as (topic, event type)."""

    seen: list[tuple[str, str]] = field(default_factory=list)

    async def forward(self, req: ForwardRequest, ctx: CallContext) -> Empty:
        self.seen.append((req.envelope.topic, req.envelope.event.type_url))
        return Empty()

    def topics(self) -> list[str]:
        return [topic for topic, _ in self.seen]


class ShimDaemon:
    def __init__(self, workdir: Path, client: Client, events: Events, pid: int,
                 socket_path: str) -> None:
        self.workdir = workdir
        self.client = client
        self.socket_path = socket_path
        self.events = events
        self.pid = pid
        self.config = workdir / "runsc.toml"
        self.runsc_root = workdir / "runsc"

    async def call(self, method: str, request: betterproto.Message, response: type[M],
                   timeout: float | None = 30.0) -> M:
        return await self.client.call(TASK, method, request, response, timeout=timeout,
                                      metadata={"containerd-namespace-ttrpc": NAMESPACE})

    def bundle(self, cid: str, args: list[str]) -> Path:
        bundle = self.workdir / "bundles" / cid
        (bundle / "rootfs/bin").mkdir(parents=True)
        shutil.copy(BUSYBOX, bundle / "rootfs/bin/busybox")
        for applet in (*APPLETS, "true", "echo"):
            (bundle / "rootfs/bin" / applet).symlink_to("busybox")
        spec = {
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "args": args, "cwd": "/",
                        "env": ["PATH=/bin"]},
            "root": {"path": "rootfs", "readonly": True},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")]},
        }
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle

    def create_request(self, cid: str, args: list[str]) -> api.CreateTaskRequest:
        options = AnyMessage(type_url="runtimeoptions.v1.Options",
                             value=bytes(RuntimeOptions(config_path=str(self.config))))
        return api.CreateTaskRequest(id=cid, bundle=str(self.bundle(cid, args)),
                                     options=options)

    async def create(self, cid: str, args: list[str]) -> int:
        reply = await self.call("Create", self.create_request(cid, args), api.CreateTaskResponse)
        return reply.pid

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def alive(self) -> bool:
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


def _forkservers(address: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        words = " ".join(a for a in proc.info["cmdline"] or [] if a).split()
        if leftovers.is_forkserver(words) and address in words:
            found.append(proc)
    return found


@contextlib.asynccontextmanager
async def shim_daemon() -> AsyncIterator[ShimDaemon]:
    if os.geteuid() != 0 or paths.RUNSC_2024 is None or not BUSYBOX.exists():
        pytest.skip("needs root, runsc 20240729 and busybox-static (scripts/install-deps)")
    if not paths.SHIM.exists():
        pytest.skip(f"the shim is not installed at {paths.SHIM} (scripts/install-deps)")
    workdir = Path(tempfile.mkdtemp(prefix="gd-", dir="/tmp"))
    address = str(workdir / "containerd.sock")
    events = Events()
    server = Server()
    server.register("containerd.services.events.ttrpc.v1.Events", "Forward", ForwardRequest,
                    events.forward)
    events_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    events_sock.bind(address + ".ttrpc")
    events_sock.listen(16)
    await server.serve_socket(events_sock)
    (workdir / "runsc").mkdir()
    (workdir / "runsc.toml").write_text(
        f'binary_name = "{paths.RUNSC_2024}"\nroot = "{workdir / "runsc"}"\n'
        'network = "none"\n[runsc_config]\nplatform = "systrap"\n')
    start_dir = workdir / "start"
    start_dir.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TTRPC_ADDRESS": address + ".ttrpc",
           "NAMESPACE": NAMESPACE}
    started = subprocess.run(
        [str(paths.SHIM), "-namespace", NAMESPACE, "-address", address, "-id", "itest",
         "start"], cwd=start_dir, env=env, capture_output=True, text=True, timeout=30,
        check=True)
    socket_path = started.stdout.strip().removeprefix("unix://")
    client = await Client.connect(socket_path, timeout=10)
    try:
        connected = await client.call(TASK, "Connect", api.ConnectRequest(id="itest"),
                                      api.ConnectResponse, timeout=10,
                                      metadata={"containerd-namespace-ttrpc": NAMESPACE})
        daemon = ShimDaemon(workdir, client, events, connected.shim_pid, socket_path)
        yield daemon
    finally:
        await client.close()
        await _stop(workdir, address, socket_path)
        await server.close()


async def _stop(workdir: Path, address: str, socket_path: str) -> None:
    """Delete what runsc still has, then end the daemon and the forkserver."""
    runsc = str(paths.RUNSC_2024)
    for state in leftovers.runsc_state(workdir / "runsc"):
        root = Path(state).parent
        listed = subprocess.run([runsc, "--root", str(root), "list", "-quiet"],
                                capture_output=True, text=True, timeout=30, check=False)
        for cid in listed.stdout.split():
            subprocess.run([runsc, "--root", str(root), "delete", "-force", cid],
                           capture_output=True, timeout=30, check=False)
    procs = leftovers.session_processes(workdir) + _forkservers(address)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    leftovers.remove_tree(workdir)


async def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether the process ``pid`` exits within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        await asyncio.sleep(0.05)
    return False
