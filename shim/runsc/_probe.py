"""What a runsc binary supports: parsed from its own output, cached per file."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shim import reaper
from shim.errors import FailedPrecondition
from shim.runsc._options import FLAG_PLATFORM, FLAG_SINCE

__all__ = [
    "RunscCapabilities",
    "RunscNotFound",
    "UnsupportedFlag",
    "check_flags",
    "filter_flags",
    "parse_flags",
    "parse_subcommands",
    "parse_version",
    "probe",
    "probe_sync",
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


def filter_flags(
    caps: RunscCapabilities, flags: Mapping[str, str]
) -> tuple[dict[str, str], tuple[str, ...]]:
    """Split ``flags`` into those the binary knows and the names it does not."""
    kept = {k: v for k, v in flags.items() if caps.has_flag(k)}
    return kept, tuple(k for k in flags if k not in kept)


_RELEASE = re.compile(r"(?:release-|~|^)(20\d{6})(?:\.\d+)?")


def parse_version(text: str) -> tuple[str, int | None]:
    """``runsc --version`` output -> ("0.0~20240729.0", 20240729)."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    version = first.removeprefix("runsc version").strip()
    m = _RELEASE.search(version)
    return version, int(m.group(1)) if m else None


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


_CACHE: dict[tuple[str, int, int, int], RunscCapabilities] = {}
_PROBE_TIMEOUT = 30.0
# Each shim daemon is a new process, so the in-memory cache alone would
# re-probe (four runsc runs, ~40 ms) on every container's Create. The answers
# are kept on tmpfs too, under the same key: a replaced binary is re-probed.
_DISK_CACHE = os.environ.get("GVISORGPU_PROBE_CACHE", "/run/containerd/gvisorgpu-shim/probe")


def _disk_file(key: tuple[str, int, int, int]) -> str:
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
    return os.path.join(_DISK_CACHE, f"{digest}.json")


def _load_disk(key: tuple[str, int, int, int]) -> RunscCapabilities | None:
    try:
        with open(_disk_file(key)) as f:
            data = json.load(f)
        return RunscCapabilities(
            path=data["path"], version=data["version"], release=data["release"],
            flags=frozenset(data["flags"]), default_platform=data["default_platform"],
            supported_drivers=None if data["supported_drivers"] is None
            else tuple(data["supported_drivers"]),
            subcommands=frozenset(data["subcommands"]),
            platforms=None if data["platforms"] is None else frozenset(data["platforms"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store(key: tuple[str, int, int, int], caps: RunscCapabilities) -> RunscCapabilities:
    _CACHE[key] = caps
    data = {
        "path": caps.path, "version": caps.version, "release": caps.release,
        "flags": sorted(caps.flags), "default_platform": caps.default_platform,
        "supported_drivers": caps.supported_drivers, "subcommands": sorted(caps.subcommands),
        "platforms": None if caps.platforms is None else sorted(caps.platforms),
    }
    with contextlib.suppress(OSError):
        os.makedirs(_DISK_CACHE, mode=0o700, exist_ok=True)
        target = _disk_file(key)
        tmp = f"{target}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, target)
    return caps


def _cached(key: tuple[str, int, int, int]) -> RunscCapabilities | None:
    caps = _CACHE.get(key)
    if caps is None:
        caps = _load_disk(key)
        if caps is not None:
            _CACHE[key] = caps
    return caps


def _cache_key(path: str) -> tuple[str, int, int, int]:
    st = os.stat(path)
    return (path, st.st_ino, st.st_mtime_ns, st.st_size)


_DRIVERS = ("nvproxy", "list-supported-drivers")
_PLATFORMS = ("help", "platforms")


async def probe(binary: str = "runsc") -> RunscCapabilities:
    """Ask ``binary`` what it supports; cached until the file changes."""
    path = resolve_binary(binary)
    key = _cache_key(path)
    if (cached := _cached(key)) is not None:
        return cached

    async def ask(*args: str, stderr: bool = False) -> tuple[int, str]:
        done = await reaper.run([path, *args], timeout=_PROBE_TIMEOUT)
        return done.returncode, (done.stderr if stderr else done.stdout).decode(errors="replace")

    version, flags, helptext, platforms = await asyncio.gather(
        ask("--version"), ask("flags", stderr=True), ask("help"), ask(*_PLATFORMS))
    drivers = None
    if "nvproxy" in parse_subcommands(helptext[1]):
        drivers = await ask(*_DRIVERS)
    return _store(key, _capabilities(path, version, flags, helptext, drivers, platforms))


def probe_sync(binary: str = "runsc") -> RunscCapabilities:
    """:func:`probe` for the CLI commands (``plan``, ``doctor``).

    Not for the daemon: ``subprocess.run`` waits for its own child, which
    races the daemon's reaper.
    """
    path = resolve_binary(binary)
    key = _cache_key(path)
    if (cached := _cached(key)) is not None:
        return cached

    def ask(*args: str, stderr: bool = False) -> tuple[int, str]:
        done = subprocess.run([path, *args], capture_output=True, timeout=_PROBE_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)
        return done.returncode, (done.stderr if stderr else done.stdout).decode(errors="replace")

    helptext = ask("help")
    drivers = ask(*_DRIVERS) if "nvproxy" in parse_subcommands(helptext[1]) else None
    return _store(key, _capabilities(
        path, ask("--version"), ask("flags", stderr=True), helptext, drivers, ask(*_PLATFORMS)))
