"""The forkserver as a real process, driven by the real client and by peers
that misbehave: exactly one side forks a daemon, and no peer can stall or end
the server. Daemons it forks are its children until they exit."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from shim.manager import forkclient
from shim.manager.forkserver import PEER_TIMEOUT

REPO = Path(__file__).resolve().parents[2]


class Forkserver:
    def __init__(self, tmp: Path) -> None:
        self.path = str(tmp / "fs.sock")
        self.address = str(tmp / "containerd.sock")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shim.manager.forkserver", self.path, self.address,
             str(os.getpid())], cwd=REPO,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.path):
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            assert time.monotonic() < deadline, "forkserver did not listen"
            time.sleep(0.05)

    def daemons(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def peer(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.settimeout(10)
        s.connect(self.path)
        return s


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Forkserver]:
    fs = Forkserver(tmp_path)
    try:
        yield fs
    finally:
        for daemon in fs.daemons():
            with contextlib.suppress(psutil.Error):
                daemon.kill()
        fs.proc.send_signal(signal.SIGKILL)
        fs.proc.wait(10)
        if fs.proc.stderr:
            fs.proc.stderr.close()


def _request(tmp: Path, name: str) -> tuple[dict[str, object], socket.socket]:
    bundle = tmp / name
    bundle.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp / f"{name}.sock"))
    listener.listen()
    params = {"namespace": "fstest", "address": str(tmp / "containerd.sock"), "id": name,
              "group": name, "socket_file": str(tmp / f"{name}.sock"), "debug": False,
              "bundle": str(bundle), "env": {}}
    return params, listener


def test_a_request_gets_one_daemon_serving_its_socket(server: Forkserver, tmp_path: Path) -> None:
    params, listener = _request(tmp_path, "c1")
    with listener:
        assert forkclient.request_daemon(server.path, params, listener.fileno(), -1)
    [daemon] = server.daemons()
    deadline = time.monotonic() + 10  # it names itself once it runs
    while "-id c1" not in " ".join(daemon.cmdline()):
        assert time.monotonic() < deadline, daemon.cmdline()
        time.sleep(0.05)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(tmp_path / "c1.sock"))  # the daemon holds the listener now


def test_a_client_that_gives_up_gets_no_daemon_forked_behind_it(
        server: Forkserver, tmp_path: Path) -> None:
    params, listener = _request(tmp_path, "late")
    with listener, server.peer() as peer:
        socket.send_fds(peer, [repr(params).encode()], [listener.fileno()])
        assert peer.recv(16) == b"ok"
        # The client's timeout fires here: it forks its own daemon and leaves.
    time.sleep(PEER_TIMEOUT + 0.5)
    assert server.daemons() == []
    assert server.alive()


def test_a_silent_peer_is_dropped_and_the_next_start_is_served(
        server: Forkserver, tmp_path: Path) -> None:
    with server.peer() as silent:
        params, listener = _request(tmp_path, "next")
        with listener:
            assert forkclient.request_daemon(server.path, params, listener.fileno(), -1)
        # Told why and closed by the server, not held.
        assert silent.recv(64).startswith(b"error: TimeoutError")
        assert silent.recv(16) == b""
    assert len(server.daemons()) == 1


@pytest.mark.parametrize("payload", [
    b"x" * (70 * 1024),                  # over the size bound
    b"[" * 60_000,                       # nests past the parser's limits
    b"(" * 30_000 + b")" * 30_000,
    b"['not', 'a', 'mapping']",
    b"{'bundle': 42}",
    b"{'bundle': '/nonexistent'} + __import__('os')",
    b"\xff\xfe",
])
def test_a_bad_request_is_refused_and_the_server_lives_on(
        server: Forkserver, tmp_path: Path, payload: bytes) -> None:
    fds_before = psutil.Process(server.proc.pid).num_fds()
    with server.peer() as peer, socket.socket() as fd_to_pass:
        socket.send_fds(peer, [payload], [fd_to_pass.fileno()])
        answer = peer.recv(512)
        assert peer.recv(16) == b""  # done with this request
    assert answer.startswith(b"error: "), answer
    # Nothing of the bad request stays open in the server.
    assert psutil.Process(server.proc.pid).num_fds() == fds_before
    params, listener = _request(tmp_path, "after")
    with listener:
        assert forkclient.request_daemon(server.path, params, listener.fileno(), -1)
    assert server.alive()
