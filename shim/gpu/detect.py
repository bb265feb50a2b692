"""The IO edge of the GPU planner: read what the host offers into ``HostFacts``.

Only this module touches /proc, /dev and the CDI directories. Failures are
values, not exceptions: a CDI file that does not parse is recorded in
``HostFacts.cdi_errors`` and the rest still load, because one bad vendor spec
must not stop containers that never use it. The runsc values come from the
runsc probe as plain values; this module does not run runsc.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import yaml

from shim.gpu.cdi import CdiError, CdiSpec, parse_spec
from shim.gpu.facts import HostFacts, parse_driver_version

__all__ = [
    "RunscFacts",
    "gather_host_facts",
    "load_cdi_specs",
    "read_driver_version",
    "scan_device_nodes",
]


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


def _load_document(path: Path) -> Any:
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    return yaml.safe_load(text)


def _spec_files(directory: str) -> list[Path]:
    try:
        entries = sorted(Path(directory).iterdir())
    except OSError:
        return []
    return [p for p in entries if p.suffix in _SPEC_SUFFIXES and p.is_file()]


def load_cdi_specs(cdi_dirs: Iterable[str]) -> tuple[tuple[CdiSpec, ...], tuple[str, ...]]:
    """Parse every spec file; later directories get higher priority. Returns
    the specs and one "path: why" line per file that failed."""
    specs: list[CdiSpec] = []
    errors: list[str] = []
    for priority, directory in enumerate(cdi_dirs):
        for path in _spec_files(directory):
            try:
                doc = _load_document(path)
                specs.append(parse_spec(doc, path=str(path), priority=priority))
            except (OSError, ValueError, yaml.YAMLError, CdiError) as exc:
                errors.append(f"{path}: {_one_line(exc)}")
    return tuple(specs), tuple(errors)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def gather_host_facts(
    runsc: RunscFacts,
    cdi_dirs: Iterable[str],
    *,
    dev_root: str = "/dev",
    proc_root: str = "/proc",
) -> HostFacts:
    """Read the host once; the planner works from the returned value."""
    specs, errors = load_cdi_specs(cdi_dirs)
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
    )
