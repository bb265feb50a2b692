"""What a runsc binary supports: parsed from its own output, cached per file."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shim.errors import FailedPrecondition
from shim.runsc._options import FLAG_PLATFORM, FLAG_SINCE
from shim.runsc._runner import CommandRunner

__all__ = [
    "DEFAULT_PROBE_CACHE",
    "ProbeCache",
    "RunscCapabilities",
    "RunscNotFound",
    "UnsupportedFlag",
    "check_flags",
    "parse_flags",
    "parse_spec_version",
    "parse_subcommands",
    "parse_version",
    "probe",
    "resolve_binary",
]


@dataclass(frozen=True)
class RunscCapabilities:
    """What one runsc binary supports, from asking it (never from its version)."""

    path: str
    version: str  # as printed, e.g. "0.0~20240729.0" or "release-20240729.0"
    release: int | None  # e.g. 20240729
    flags: frozenset[str]  # global flag names, no dashes
    default_platform: str | None
    # `runsc nvproxy list-supported-drivers`, numerically sorted; None where the
    # build predates the subcommand (release-20231106.0).
    supported_drivers: tuple[str, ...] | None
    subcommands: frozenset[str]
    # `runsc help platforms` (compiled-in platforms); None if it cannot say.
    platforms: frozenset[str] | None = None
    # The OCI runtime-spec version it implements (`spec: 1.2.0` in --version).
    spec_version: str | None = None

    def has_flag(self, name: str) -> bool:
        return name.lstrip("-") in self.flags

    @property
    def nvproxy(self) -> bool:
        return "nvproxy" in self.flags

    def describe(self) -> str:
        return f"runsc {self.version} ({self.path})"


class RunscNotFound(FailedPrecondition):
    """``binary_name`` is missing, or is not runsc."""


class UnsupportedFlag(FailedPrecondition):
    """A flag the installed runsc does not know (it would exit 2 on it)."""

    def __init__(self, caps: RunscCapabilities, flags: Sequence[str]) -> None:
        self.capabilities = caps
        self.flags = tuple(flags)
        parts = []
        for name in self.flags:
            since = FLAG_SINCE.get(name)
            parts.append(f"--{name}" + (f" (added in release-{since}.0)" if since else ""))
        super().__init__(
            f"{caps.describe()} does not support {', '.join(parts)}; upgrade runsc or "
            "remove the flag from the runtime config"
        )


def check_flags(caps: RunscCapabilities, flags: Mapping[str, str] | Sequence[str]) -> None:
    """Refuse flags the binary does not know, naming them and the runsc version."""
    unknown = [name.lstrip("-") for name in flags if not caps.has_flag(name)]
    if unknown:
        raise UnsupportedFlag(caps, unknown)


_RELEASE = re.compile(r"(?:release-|~|^)(20\d{6})(?:\.\d+)?")


def parse_version(text: str) -> tuple[str, int | None]:
    """``runsc --version`` output -> ("0.0~20240729.0", 20240729)."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    version = first.removeprefix("runsc version").strip()
    m = _RELEASE.search(version)
    return version, int(m.group(1)) if m else None


def parse_spec_version(text: str) -> str | None:
    """``runsc --version`` output -> the "spec: X" line's X."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "spec" and value.strip():
            return value.strip()
    return None


def parse_flags(text: str) -> dict[str, str]:
    """``runsc flags`` (Go's flag.PrintDefaults) -> {name: usage text}.

    Each flag starts a line with two spaces and a dash ("  -name type"); its
    usage follows on lines starting with four spaces and a tab.
    """
    flags: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("  -"):
            current = line[3:].split(" ", 1)[0]
            flags[current] = ""
        elif current is not None and line.startswith("    \t"):
            flags[current] = (flags[current] + " " + line[5:]).strip()
    return flags


def _default(usage: str) -> str | None:
    found = re.findall(r'\(default "([^"]*)"\)', usage)
    return found[-1] if found else None


def parse_subcommands(text: str) -> frozenset[str]:
    """``runsc help`` -> subcommand names (help topics excluded)."""
    names: set[str] = set()
    in_section = False
    for line in text.splitlines():
        if line and not line[0].isspace():
            in_section = line.startswith("Subcommands")
        elif in_section and line.startswith("\t") and line.strip():
            names.add(line.split()[0])
    return frozenset(names)


def _driver_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


Answer = tuple[int, str]  # exit code, the text of the stream that matters


def _capabilities(path: str, version_out: Answer, flags_out: Answer, help_out: Answer,
                  drivers_out: Answer | None, platforms_out: Answer) -> RunscCapabilities:
    flags = parse_flags(flags_out[1])
    if flags_out[0] != 0 or not flags:
        raise RunscNotFound(
            f"{path} does not answer like runsc: `{os.path.basename(path)} flags` exited "
            f"{flags_out[0]} and listed no flags; set binary_name in the runtime config to "
            "gVisor's runsc"
        )
    version, release = parse_version(version_out[1])
    drivers = None
    if drivers_out is not None and drivers_out[0] == 0:
        drivers = tuple(sorted(set(drivers_out[1].split()), key=_driver_key))
    return RunscCapabilities(
        path=path,
        version=version,
        release=release,
        flags=frozenset(flags),
        default_platform=_default(flags.get(FLAG_PLATFORM, "")),
        supported_drivers=drivers,
        subcommands=parse_subcommands(help_out[1]),
        platforms=_platforms(platforms_out),
        spec_version=parse_spec_version(version_out[1]),
    )


def _platforms(answer: Answer) -> frozenset[str] | None:
    names = answer[1].split()
    if answer[0] != 0 or not names or not all(n.isidentifier() for n in names):
        return None
    return frozenset(names)


def resolve_binary(name: str) -> str:
    """An absolute path for ``binary_name`` (looked up on PATH when bare)."""
    found = shutil.which(name)
    if found is None:
        where = "is not an executable file" if os.sep in name else (
            f"is not on PATH ({os.environ.get('PATH', '')})")
        raise RunscNotFound(
            f"runsc binary {name!r} {where}; install gVisor's runsc or set binary_name "
            "in the runtime config to its absolute path"
        )
    return os.path.abspath(found)


CacheKey = tuple[str, int, int, int]
_PROBE_TIMEOUT = 30.0
# Each shim daemon is a new process, so an in-memory cache alone would re-probe
# (four runsc runs, ~40 ms) on every container's Create. The answers are kept
# on tmpfs too, keyed by the binary's path, inode, mtime and size, so a
# replaced binary is probed again.
DEFAULT_PROBE_CACHE = "/run/containerd/gvisorgpu-shim/probe"


def _to_json(caps: RunscCapabilities) -> dict[str, object]:
    return {
        "path": caps.path, "version": caps.version, "release": caps.release,
        "flags": sorted(caps.flags), "default_platform": caps.default_platform,
        "supported_drivers": caps.supported_drivers, "subcommands": sorted(caps.subcommands),
        "platforms": None if caps.platforms is None else sorted(caps.platforms),
        "spec_version": caps.spec_version,
    }


def _from_json(data: dict[str, Any]) -> RunscCapabilities:
    drivers, platforms = data["supported_drivers"], data["platforms"]
    return RunscCapabilities(
        path=str(data["path"]), version=str(data["version"]),
        release=data["release"] if isinstance(data["release"], int) else None,
        flags=frozenset(data["flags"]), default_platform=data["default_platform"],
        supported_drivers=None if drivers is None else tuple(drivers),
        subcommands=frozenset(data["subcommands"]),
        platforms=None if platforms is None else frozenset(platforms),
        spec_version=data["spec_version"])


@dataclass
class ProbeCache:
    """What probes found, in memory and in ``directory`` (None: memory only)."""

    directory: str | None = DEFAULT_PROBE_CACHE
    _memory: dict[CacheKey, RunscCapabilities] = field(default_factory=dict)

    def _file(self, key: CacheKey) -> str | None:
        if self.directory is None:
            return None
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
        return os.path.join(self.directory, f"{digest}.json")

    def get(self, key: CacheKey) -> RunscCapabilities | None:
        caps = self._memory.get(key)
        path = self._file(key)
        if caps is None and path is not None:
            try:
                with open(path) as f:
                    caps = _from_json(json.load(f))
            except (OSError, ValueError, KeyError, TypeError):
                return None
            self._memory[key] = caps
        return caps

    def put(self, key: CacheKey, caps: RunscCapabilities) -> RunscCapabilities:
        self._memory[key] = caps
        path = self._file(key)
        if path is not None:
            with contextlib.suppress(OSError):
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    json.dump(_to_json(caps), f)
                os.replace(tmp, path)
        return caps


def _cache_key(path: str) -> CacheKey:
    st = os.stat(path)
    return (path, st.st_ino, st.st_mtime_ns, st.st_size)


_DRIVERS = ("nvproxy", "list-supported-drivers")
_PLATFORMS = ("help", "platforms")


async def probe(binary: str, runner: CommandRunner, cache: ProbeCache) -> RunscCapabilities:
    """Ask ``binary`` what it supports; cached until the file changes."""
    path = resolve_binary(binary)
    key = _cache_key(path)
    if (cached := cache.get(key)) is not None:
        return cached

    async def ask(*args: str, stderr: bool = False) -> tuple[int, str]:
        done = await runner.run([path, *args], timeout=_PROBE_TIMEOUT)
        text = (done.stderr if stderr else done.stdout).decode(errors="replace")
        return (-1 if done.returncode is None else done.returncode), text

    version, flags, helptext, platforms = await asyncio.gather(
        ask("--version"), ask("flags", stderr=True), ask("help"), ask(*_PLATFORMS))
    drivers = None
    if "nvproxy" in parse_subcommands(helptext[1]):
        drivers = await ask(*_DRIVERS)
    return cache.put(key, _capabilities(path, version, flags, helptext, drivers, platforms))
