"""Runsc: one coroutine per subcommand.

Children are started by a :class:`CommandRunner` the caller passes in (the
daemon's reaper), so this module owns no process state and tests can pass
any runner.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal, Protocol

from shim.runsc._errors import RunscError, last_error_message, log_mark, sandbox_panic
from shim.runsc._options import (
    FLAG_PANIC_LOG,
    CheckpointOptions,
    CreateOptions,
    DeleteOptions,
    EventsOptions,
    ExecOptions,
    GlobalOptions,
    KillOptions,
    PauseOptions,
    PsOptions,
    ResumeOptions,
    StartOptions,
    StateOptions,
    Subcommand,
    WaitOptions,
    argv,
)

__all__ = ["CommandResult", "CommandRunner", "ContainerState", "ExecStarted", "Runsc", "Stdio"]


class CommandResult(Protocol):
    """A finished command; ``returncode`` None means killed after its time-out."""

    @property
    def returncode(self) -> int | None: ...
    @property
    def stdout(self) -> bytes: ...
    @property
    def stderr(self) -> bytes: ...


class CommandRunner(Protocol):
    """Runs a command to completion, capturing stdout/stderr where not given,
    and kills it when ``timeout`` passes or the caller is cancelled
    (:class:`shim.daemon.reaper.Reaper` is one)."""

    async def run(self, argv: Sequence[str], *, stdin: int | IO[bytes] | None = ...,
                  stdout: int | IO[bytes] | None = ..., stderr: int | IO[bytes] | None = ...,
                  timeout: float | None = ...) -> CommandResult: ...


@dataclass(frozen=True)
class Stdio:
    """File descriptors for a runsc child that hands them on (None: /dev/null).

    The sandbox inherits ``create``'s stdio, a subcontainer ``start``'s and an
    exec ``exec``'s (gvisor-gpu.md §4.5). runsc's own complaints then land on
    the container's stderr, which is why errors are read from the log.
    """

    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None


@dataclass(frozen=True)
class ContainerState:
    """``runsc state``: OCI state; ``pid`` is the *sandbox* pid (-1 once stopped)."""

    id: str
    status: str
    pid: int
    bundle: str
    oci_version: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ContainerState:
        return cls(
            id=str(obj["id"]),
            status=str(obj["status"]),
            pid=int(obj.get("pid", -1)),
            bundle=str(obj.get("bundle", "")),
            oci_version=str(obj.get("ociVersion", "")),
            annotations=dict(obj.get("annotations") or {}),
        )


@dataclass(frozen=True)
class ExecStarted:
    """A detached exec: reap ``pid`` (the ``runsc exec`` child) for its exit code."""

    pid: int
    internal_pid: int | None


_DEFAULT_TIMEOUT = 60.0


class Runsc:
    """runsc bound to one set of global flags; one coroutine per subcommand."""

    def __init__(self, options: GlobalOptions, runner: CommandRunner, *,
                 timeout: float | None = _DEFAULT_TIMEOUT, tmpdir: str | None = None) -> None:
        self.options = options
        self.runner = runner
        self.timeout = timeout  # for everything but `wait`
        self.tmpdir = tmpdir  # where exec process specs are written

    def argv(self, sub: Subcommand, container_id: str) -> list[str]:
        return argv(self.options, sub, container_id)

    async def create(self, container_id: str, opts: CreateOptions,
                     stdio: Stdio | None = None) -> None:
        await self._call(opts, container_id, stdio)

    async def start(self, container_id: str, stdio: Stdio | None = None) -> None:
        await self._call(StartOptions(), container_id, stdio)

    async def wait(self, container_id: str, opts: WaitOptions | None = None) -> int:
        """Block until the process exits; its code, 128+signal when signalled."""
        opts = opts or WaitOptions()
        out = await self._call(opts, container_id, timeout=None)
        try:
            return int(json.loads(out)["exitStatus"])
        except (ValueError, KeyError, TypeError):
            raise RunscError(self.argv(opts, container_id), 0,
                             log_message=f"unexpected output {out[:200]!r}") from None

    async def kill(self, container_id: str, opts: KillOptions | None = None) -> None:
        await self._call(opts or KillOptions(), container_id)

    async def delete(self, container_id: str, opts: DeleteOptions | None = None) -> None:
        await self._call(opts or DeleteOptions(), container_id)

    async def pause(self, container_id: str) -> None:
        await self._call(PauseOptions(), container_id)

    async def resume(self, container_id: str) -> None:
        await self._call(ResumeOptions(), container_id)

    async def checkpoint(self, container_id: str, opts: CheckpointOptions) -> None:
        await self._call(opts, container_id)

    async def state(self, container_id: str) -> ContainerState:
        return ContainerState.from_json(self._json(await self._call(StateOptions(), container_id)))

    async def ps(self, container_id: str) -> list[int]:
        """Pids inside the sandbox's pid namespace."""
        return [int(p) for p in self._json(await self._call(PsOptions(), container_id)) or ()]

    async def stats(self, container_id: str) -> dict[str, Any]:
        """The ``data`` of ``events --stats`` (cpu, memory, pids, network_interfaces)."""
        event = self._json(await self._call(EventsOptions(), container_id))
        return dict(event.get("data") or {})

    async def exec(
        self,
        container_id: str,
        process: Mapping[str, Any],
        *,
        pid_file: str | None = None,
        internal_pid_file: str | None = None,
        console_socket: str | None = None,
        stdio: Stdio | None = None,
    ) -> ExecStarted:
        """``runsc exec --detach``; the returned pid is reaped by the daemon."""
        with tempfile.TemporaryDirectory(prefix="runsc-exec-", dir=self.tmpdir) as tmp:
            spec = os.path.join(tmp, "process.json")
            with open(spec, "w") as f:
                json.dump(process, f)
            opts = ExecOptions(
                process=spec,
                pid_file=pid_file or os.path.join(tmp, "pid"),
                internal_pid_file=internal_pid_file or os.path.join(tmp, "internal.pid"),
                console_socket=console_socket,
            )
            await self._call(opts, container_id, stdio)
            assert opts.pid_file is not None and opts.internal_pid_file is not None
            pid = _read_pid(opts.pid_file)
            if pid is None:
                raise RunscError(self.argv(opts, container_id), 0,
                                 log_message=f"no pid in {opts.pid_file} after exec --detach")
            return ExecStarted(pid, _read_pid(opts.internal_pid_file))

    @staticmethod
    def _json(out: bytes) -> Any:
        return json.loads(out) if out.strip() else None

    async def _sandbox_crash(self) -> str | None:
        """The sandbox's panic, if it crashed. runsc reports the broken control
        connection ("EOF") as soon as the sentry dies, which can be before the
        sentry has finished writing its panic log, so look for a short while."""
        path = self.options.extra.get(FLAG_PANIC_LOG)
        if not path:
            return None
        deadline = asyncio.get_running_loop().time() + _PANIC_WAIT
        while (crash := sandbox_panic(path)) is None:
            if asyncio.get_running_loop().time() >= deadline:
                return None
            await asyncio.sleep(0.05)
        return crash

    async def _call(self, sub: Subcommand, container_id: str, stdio: Stdio | None = None,
                    timeout: float | Literal["default"] | None = "default") -> bytes:
        args = self.argv(sub, container_id)
        limit = self.timeout if timeout == "default" else timeout
        mark = log_mark(self.options.log)
        if stdio is None:
            done = await self.runner.run(args, timeout=limit)
        else:
            done = await self.runner.run(args, stdin=_fd(stdio.stdin), stdout=_fd(stdio.stdout),
                                         stderr=_fd(stdio.stderr), timeout=limit)
        code, out, err = done.returncode, done.stdout, done.stderr
        if code is None:
            raise RunscError(args, None, err, f"no answer within {limit:g} s; killed it")
        if code != 0:
            message = last_error_message(self.options.log, mark)
            if message is None or message.endswith("EOF"):
                crash = await self._sandbox_crash()
                if crash:
                    message = f"{message}; {crash}" if message else crash
            raise RunscError(args, code, err, message)
        return out


_PANIC_WAIT = 1.0  # s; the dying sandbox may still be writing its report


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _fd(fd: int | None) -> int:
    return subprocess.DEVNULL if fd is None else fd
