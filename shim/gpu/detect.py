"""The IO edge of the GPU planner: read what the host offers into ``HostFacts``.

Only this module touches /proc, /dev and the CDI directories. Failures are
values, not exceptions: a CDI file that does not load is recorded in
``HostFacts.cdi_errors`` (one bounded line) and the rest still load, because
one bad or hostile spec file must not stop containers that never use it.
Every file is read within the bounds of ``shim.gpu._document`` (size,
nesting, YAML aliases); a ``CdiCache`` keeps what was parsed, keyed by the
file's identity, so a Create re-reads only files that changed. The runsc values
come from the runsc probe as plain values; this module does not run runsc.

Everything here blocks (file reads, YAML parsing): the daemon calls
``gather_host_facts`` from a worker thread, not on its event loop.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from shim.gpu._bound import clip
from shim.gpu._document import MAX_BYTES, parse_document
from shim.gpu.cdi import CdiSpec, parse_spec
from shim.gpu.facts import GpuInfo, HostFacts, parse_driver_version

__all__ = [
    "CdiCache",
    "RunscFacts",
    "gather_host_facts",
    "load_cdi_specs",
    "read_driver_version",
    "read_gpus",
    "scan_device_nodes",
]

# One "path: why" line of HostFacts.cdi_errors; refusals quote these.
_MAX_ERROR = 300


class RunscFacts(Protocol):
    """What the runsc probe found (``shim.runsc.RunscCapabilities`` is one);
    structural, so this package never imports the runsc wrapper."""

    @property
    def path(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def release(self) -> int | None: ...
    @property
    def flags(self) -> frozenset[str]: ...
    @property
    def default_platform(self) -> str | None: ...
    @property
    def supported_drivers(self) -> tuple[str, ...] | None: ...
    @property
    def platforms(self) -> frozenset[str] | None: ...

_SPEC_SUFFIXES = (".json", ".yaml", ".yml")


def read_driver_version(proc_root: str = "/proc") -> str | None:
    """The loaded kernel module's version, or None when no driver is loaded."""
    try:
        text = Path(proc_root, "driver/nvidia/version").read_text(errors="replace")
    except OSError:
        return None
    return parse_driver_version(text)


def scan_device_nodes(dev_root: str = "/dev") -> dict[str, tuple[int, int]]:
    """Character devices named nvidia* directly under ``dev_root``, keyed by
    their /dev path (whatever ``dev_root`` is, so tests can use a temp dir)."""
    nodes: dict[str, tuple[int, int]] = {}
    try:
        names = sorted(os.listdir(dev_root))
    except OSError:
        return nodes
    for name in names:
        if not name.startswith("nvidia"):
            continue
        try:
            info = os.stat(os.path.join(dev_root, name))
        except OSError:
            continue
        if stat.S_ISCHR(info.st_mode):
            nodes[f"/dev/{name}"] = (os.major(info.st_rdev), os.minor(info.st_rdev))
    return nodes


# A file's identity: when any part changes, the file is parsed again.
_FileKey = tuple[int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns)


def _key(info: os.stat_result) -> _FileKey:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def _spec_files(directory: str) -> list[Path]:
    try:
        entries = sorted(Path(directory).iterdir())
    except OSError:
        return []
    return [p for p in entries if p.suffix in _SPEC_SUFFIXES and p.is_file()]


def _read(path: Path) -> tuple[_FileKey, bytes]:
    """At most MAX_BYTES + 1 bytes of a regular file, and its identity.

    O_NONBLOCK: a file swapped for a FIFO after the directory was listed must
    not hang the read (the S_ISREG check then refuses it).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks, left = [], MAX_BYTES + 1
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return _key(info), b"".join(chunks)
    finally:
        os.close(fd)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _load_file(path: Path, priority: int) -> tuple[_FileKey | None, CdiSpec | str]:
    """The spec in one file, or its bounded "path: why" line. Never raises:
    this is where one file's failure is kept from every other container."""
    key: _FileKey | None = None
    try:
        key, data = _read(path)
        doc = parse_document(data, json_file=path.suffix == ".json")
        return key, parse_spec(doc, path=str(path), priority=priority)
    except MemoryError:
        return key, f"{path}: too large to load"
    except RecursionError:
        return key, f"{path}: nested too deeply to load"
    # Anything else a hostile file provokes in a parser is that file's error.
    except Exception as exc:
        return key, clip(f"{path}: {_one_line(exc)}", _MAX_ERROR)


class CdiCache:
    """Parsed CDI spec files, keyed by path and the file's (device, inode,
    size, mtime); failures are cached too, so a hostile file costs its parse
    once, not on every Create. One per daemon, passed in; safe to use from
    several worker threads (a lock serialises loads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[_FileKey, CdiSpec | str]] = {}
        self.parsed = 0  # files parsed (not served from the cache), for tests

    def _get(self, path: Path, priority: int) -> CdiSpec | str:
        try:
            key = _key(os.stat(path))
        except OSError as exc:
            return clip(f"{path}: {_one_line(exc)}", _MAX_ERROR)
        cached = self._entries.get(str(path))
        if cached is not None and cached[0] == key:
            result = cached[1]
        else:
            self.parsed += 1
            read_key, result = _load_file(path, priority)
            if read_key is not None:
                self._entries[str(path)] = (read_key, result)
        if isinstance(result, CdiSpec) and result.priority != priority:
            result = dataclasses.replace(result, priority=priority)
        return result

    def load(self, cdi_dirs: Iterable[str]) -> tuple[tuple[CdiSpec, ...], tuple[str, ...]]:
        with self._lock:
            seen: set[str] = set()
            specs: list[CdiSpec] = []
            errors: list[str] = []
            for priority, directory in enumerate(cdi_dirs):
                for path in _spec_files(directory):
                    seen.add(str(path))
                    result = self._get(path, priority)
                    if isinstance(result, CdiSpec):
                        specs.append(result)
                    else:
                        errors.append(result)
            for gone in set(self._entries) - seen:
                del self._entries[gone]
            return tuple(specs), tuple(errors)


def load_cdi_specs(
    cdi_dirs: Iterable[str], cache: CdiCache | None = None
) -> tuple[tuple[CdiSpec, ...], tuple[str, ...]]:
    """Parse every spec file; later directories get higher priority. Returns
    the specs and one bounded "path: why" line per file that failed."""
    return (cache or CdiCache()).load(cdi_dirs)


def _gpu_info(directory: Path) -> GpuInfo | None:
    try:
        text = (directory / "information").read_text(errors="replace")[:4096]
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    minor = fields.get("Device Minor", "")
    if not minor.isdigit():
        return None
    return GpuInfo(bus=directory.name, minor=int(minor), uuid=fields.get("GPU UUID") or None)


def read_gpus(proc_root: str = "/proc") -> tuple[GpuInfo, ...]:
    """The driver's GPUs, each with its device minor and UUID, in PCI bus order."""
    try:
        buses = sorted(Path(proc_root, "driver/nvidia/gpus").iterdir())
    except OSError:
        return ()
    return tuple(info for bus in buses if (info := _gpu_info(bus)) is not None)


def gather_host_facts(
    runsc: RunscFacts,
    cdi_dirs: Iterable[str],
    *,
    dev_root: str = "/dev",
    proc_root: str = "/proc",
    cache: CdiCache | None = None,
) -> HostFacts:
    """Read the host once; the planner works from the returned value. Blocks:
    call it from a worker thread in async code."""
    specs, errors = load_cdi_specs(cdi_dirs, cache)
    return HostFacts(
        driver_version=read_driver_version(proc_root),
        device_nodes=scan_device_nodes(dev_root),
        runsc_path=runsc.path,
        runsc_version=runsc.version,
        runsc_release=runsc.release,
        runsc_flags=frozenset(runsc.flags),
        runsc_default_platform=runsc.default_platform,
        runsc_platforms=runsc.platforms,
        supported_drivers=runsc.supported_drivers,
        cdi_specs=specs,
        cdi_errors=errors,
        gpus=read_gpus(proc_root),
    )
