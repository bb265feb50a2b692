"""argv builders: global flags and one options class per subcommand, all pure.

Flag spellings are the module constants (``runsc flags`` / ``runsc help <cmd>``
of the 20221219 and 20240729 builds); every flag is rendered ``--name=value``.
Global flags must come before the subcommand: runsc parses them there.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

__all__ = [
    "FLAG_SINCE",
    "NETWORKS",
    "CheckpointOptions",
    "CreateOptions",
    "DeleteOptions",
    "EventsOptions",
    "ExecOptions",
    "GlobalOptions",
    "KillOptions",
    "Network",
    "PauseOptions",
    "PsOptions",
    "ResumeOptions",
    "StartOptions",
    "StateOptions",
    "Subcommand",
    "WaitOptions",
    "argv",
]

# Global flags (``runsc flags``; present in every build since 2022).
FLAG_ROOT = "root"
FLAG_LOG = "log"
FLAG_LOG_FORMAT = "log-format"
FLAG_DEBUG = "debug"
FLAG_DEBUG_LOG = "debug-log"
FLAG_PLATFORM = "platform"
FLAG_NETWORK = "network"
FLAG_PANIC_LOG = "panic-log"
# Subcommand flags (``runsc help <subcommand>``).
FLAG_BUNDLE = "bundle"
FLAG_PID_FILE = "pid-file"
FLAG_CONSOLE_SOCKET = "console-socket"
FLAG_USER_LOG = "user-log"
FLAG_ALL = "all"
FLAG_PID = "pid"
FLAG_ROOTPID = "rootpid"
FLAG_FORCE = "force"
FLAG_FORMAT = "format"
FLAG_PROCESS = "process"
FLAG_DETACH = "detach"
FLAG_INTERNAL_PID_FILE = "internal-pid-file"
FLAG_STATS = "stats"
FLAG_INTERVAL = "interval"
FLAG_IMAGE_PATH = "image-path"
FLAG_WORK_PATH = "work-path"
FLAG_LEAVE_RUNNING = "leave-running"

Network = Literal["none", "host", "sandbox"]
NETWORKS: tuple[Network, ...] = ("none", "host", "sandbox")

# Releases that added global flags we may be asked for (reference gvisor-gpu.md
# §1.1); only used to make "unknown flag" refusals say what to upgrade to.
FLAG_SINCE: Mapping[str, int] = {
    "nvproxy": 20230529,
    "nvproxy-docker": 20230529,
    "tpuproxy": 20230724,
    "nvproxy-driver-version": 20240422,
    "nvproxy-allowed-driver-capabilities": 20240930,
    "host-settings": 20241021,
    "nvproxy-allow-unsupported-driver": 20260615,
}

# gVisor's shim expands %ID% only in these path-valued flags (runsc itself
# expands %TIMESTAMP% and %COMMAND% in debug-log).
_PATH_FLAGS = frozenset(
    {"log", "panic-log", "debug-log", "coverage-report", "trace"}
    | {f"profile-{k}" for k in ("block", "cpu", "heap", "mutex")}
)
_SIGTERM = int(signal.SIGTERM)
_FLAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


def _flag(name: str, value: str | int | None = None) -> str:
    return f"--{name}" if value is None else f"--{name}={value}"


@dataclass(frozen=True)
class GlobalOptions:
    """Flags that go before the subcommand, the same on every call for a sandbox."""

    binary: str = "runsc"
    root: str | None = None
    log: str | None = None
    log_format: str | None = "json"
    debug: bool = False
    debug_log: str | None = None
    platform: str | None = None
    network: Network | None = None
    # Anything else: [runsc_config] entries and the GPU plan's flags
    # (e.g. {"nvproxy": "true"}), rendered as --name=value in this order.
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", dict(self.extra))
        if self.network is not None and self.network not in NETWORKS:
            raise ValueError(f"network must be one of {', '.join(NETWORKS)}, not {self.network!r}")
        typed = {FLAG_ROOT, FLAG_LOG, FLAG_LOG_FORMAT, FLAG_DEBUG, FLAG_DEBUG_LOG,
                 FLAG_PLATFORM, FLAG_NETWORK}
        for name in self.extra:
            if not _FLAG_NAME.match(name):
                raise ValueError(f"bad runsc flag name {name!r} (give it without leading dashes)")
            if name in typed:
                raise ValueError(f"runsc flag {name!r} has its own GlobalOptions field")

    def args(self) -> list[str]:
        out = [
            _flag(name, value)
            for name, value in (
                (FLAG_ROOT, self.root),
                (FLAG_LOG, self.log),
                (FLAG_LOG_FORMAT, self.log_format),
                (FLAG_DEBUG_LOG, self.debug_log),
                (FLAG_PLATFORM, self.platform),
                (FLAG_NETWORK, self.network),
            )
            if value is not None
        ]
        if self.debug:
            out.append(_flag(FLAG_DEBUG))
        out += [_flag(name, value) for name, value in self.extra.items()]
        return out

    def flag_names(self) -> list[str]:
        """The global flags ``args()`` renders, for :func:`check_flags` against a probe."""
        return [a[2:].split("=", 1)[0] for a in self.args()]

    def expand_id(self, container_id: str) -> GlobalOptions:
        """Replace ``%ID%`` in path-valued flags, as gVisor's shim does."""
        def sub(v: str | None) -> str | None:
            return None if v is None else v.replace("%ID%", container_id)

        extra = {k: (sub(v) or "") if k in _PATH_FLAGS else v for k, v in self.extra.items()}
        return GlobalOptions(self.binary, self.root, sub(self.log), self.log_format, self.debug,
                             sub(self.debug_log), self.platform, self.network, extra)


@dataclass(frozen=True)
class Subcommand:
    """A subcommand; ``args(id)`` is everything after the subcommand name."""

    command: ClassVar[str]

    def args(self, container_id: str) -> list[str]:
        return [container_id]


@dataclass(frozen=True)
class CreateOptions(Subcommand):
    command: ClassVar[str] = "create"
    bundle: str
    pid_file: str | None = None
    console_socket: str | None = None
    user_log: str | None = None

    def args(self, container_id: str) -> list[str]:
        out = [_flag(FLAG_BUNDLE, self.bundle)]
        out += [_flag(n, v) for n, v in ((FLAG_PID_FILE, self.pid_file),
                                         (FLAG_CONSOLE_SOCKET, self.console_socket),
                                         (FLAG_USER_LOG, self.user_log)) if v is not None]
        return [*out, container_id]


@dataclass(frozen=True)
class StartOptions(Subcommand):
    command: ClassVar[str] = "start"


@dataclass(frozen=True)
class StateOptions(Subcommand):
    command: ClassVar[str] = "state"


@dataclass(frozen=True)
class PauseOptions(Subcommand):
    command: ClassVar[str] = "pause"


@dataclass(frozen=True)
class ResumeOptions(Subcommand):
    command: ClassVar[str] = "resume"


@dataclass(frozen=True)
class WaitOptions(Subcommand):
    command: ClassVar[str] = "wait"
    pid: int | None = None  # in the container's pid namespace
    rootpid: int | None = None  # in the sandbox's root pid namespace

    def args(self, container_id: str) -> list[str]:
        out = [_flag(n, v) for n, v in ((FLAG_PID, self.pid), (FLAG_ROOTPID, self.rootpid))
               if v is not None]
        return [*out, container_id]


@dataclass(frozen=True)
class KillOptions(Subcommand):
    command: ClassVar[str] = "kill"
    signal: int | str = _SIGTERM  # a number, or a name runsc knows ("KILL")
    all: bool = False
    pid: int | None = None  # one process, in the sandbox's root pid namespace

    def args(self, container_id: str) -> list[str]:
        out = [_flag(FLAG_ALL)] if self.all else []
        if self.pid is not None:
            out.append(_flag(FLAG_PID, self.pid))
        sig = self.signal if isinstance(self.signal, str) else str(int(self.signal))
        return [*out, container_id, sig]


@dataclass(frozen=True)
class DeleteOptions(Subcommand):
    command: ClassVar[str] = "delete"
    # Needed for a container left "created" by a failed start (DESIGN.md).
    force: bool = False

    def args(self, container_id: str) -> list[str]:
        return [_flag(FLAG_FORCE), container_id] if self.force else [container_id]


@dataclass(frozen=True)
class PsOptions(Subcommand):
    command: ClassVar[str] = "ps"
    format: Literal["json", "table"] = "json"

    def args(self, container_id: str) -> list[str]:
        return [_flag(FLAG_FORMAT, self.format), container_id]


@dataclass(frozen=True)
class ExecOptions(Subcommand):
    command: ClassVar[str] = "exec"
    process: str  # path of a JSON OCI process spec
    detach: bool = True
    pid_file: str | None = None  # host pid of the detached `runsc exec` child
    internal_pid_file: str | None = None  # pid inside the sandbox, for kill --pid
    console_socket: str | None = None

    def args(self, container_id: str) -> list[str]:
        out = [_flag(FLAG_PROCESS, self.process)]
        if self.detach:
            out.append(_flag(FLAG_DETACH))
        out += [_flag(n, v) for n, v in ((FLAG_PID_FILE, self.pid_file),
                                         (FLAG_INTERNAL_PID_FILE, self.internal_pid_file),
                                         (FLAG_CONSOLE_SOCKET, self.console_socket))
                if v is not None]
        return [*out, container_id]


@dataclass(frozen=True)
class EventsOptions(Subcommand):
    command: ClassVar[str] = "events"
    stats: bool = True  # one object and exit; otherwise a stream every `interval` s
    interval: int | None = None

    def args(self, container_id: str) -> list[str]:
        out = [_flag(FLAG_STATS)] if self.stats else []
        if self.interval is not None:
            out.append(_flag(FLAG_INTERVAL, self.interval))
        return [*out, container_id]


@dataclass(frozen=True)
class CheckpointOptions(Subcommand):
    command: ClassVar[str] = "checkpoint"
    image_path: str
    work_path: str | None = None
    leave_running: bool = False

    def args(self, container_id: str) -> list[str]:
        out = [_flag(FLAG_IMAGE_PATH, self.image_path)]
        if self.work_path is not None:
            out.append(_flag(FLAG_WORK_PATH, self.work_path))
        if self.leave_running:
            out.append(_flag(FLAG_LEAVE_RUNNING))
        return [*out, container_id]


def argv(glob: GlobalOptions, sub: Subcommand, container_id: str) -> list[str]:
    """The whole command line: binary, global flags, subcommand, its args."""
    return [glob.binary, *glob.args(), sub.command, *sub.args(container_id)]
