"""Container Device Interface: qualified names, spec documents, resolution.

Pure: ``parse_spec`` takes a document already read from JSON or YAML (the
reading happens in ``shim.gpu.detect``) and ``resolve`` picks the edits for a
list of requested names. The rules follow the CDI specification
(cncf-tags/container-device-interface, SPEC.md): names are ``vendor/class=name``,
a spec's own edits apply once when any of its devices is requested, and when two
directories define one device the later directory wins.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shim.gpu._bound import listing, short

__all__ = [
    "ANNOTATION_PREFIX",
    "HOOK_NAMES",
    "CdiDevice",
    "CdiEdits",
    "CdiError",
    "CdiSpec",
    "QualifiedName",
    "Resolution",
    "known_names",
    "parse_qualified_name",
    "parse_spec",
    "resolve",
]

# The slash is part of the prefix: "cdi.k8s.io.evil/x" is not a CDI request.
ANNOTATION_PREFIX = "cdi.k8s.io/"
HOOK_NAMES = frozenset(
    {"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"}
)
# Vendor and class: a letter first, a letter or digit last, "_-." between.
_KIND_PART = re.compile(r"[A-Za-z](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?")
# Device names may also start with a digit ("0") and hold ":" (MIG "0:1").
_DEVICE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?")
_CLASS_MAX = 63
# The CDI library refuses specs older than this.
_OLDEST_VERSION = (0, 3, 0)
_EDIT_KEYS = frozenset(
    {"env", "deviceNodes", "mounts", "hooks", "additionalGids", "intelRdt", "netDevices"}
)


class CdiError(ValueError):
    """A malformed name or spec document; the message says which part."""


@dataclass(frozen=True, order=True)
class QualifiedName:
    vendor: str
    cls: str
    name: str

    @property
    def kind(self) -> str:
        return f"{self.vendor}/{self.cls}"

    def __str__(self) -> str:
        return f"{self.kind}={self.name}"


def _check_kind(vendor: str, cls: str, what: str) -> None:
    if not _KIND_PART.fullmatch(vendor):
        raise CdiError(f"invalid vendor {short(vendor)} in {what}")
    if not _KIND_PART.fullmatch(cls) or len(cls) > _CLASS_MAX:
        raise CdiError(f"invalid class {short(cls)} in {what}")


def parse_qualified_name(text: str) -> QualifiedName:
    """``nvidia.com/gpu=0`` -> QualifiedName; CdiError says what is wrong."""
    kind, sep, name = text.partition("=")
    vendor, slash, cls = kind.partition("/")
    if text.startswith("/"):
        raise CdiError(f"{short(text)} is a device path, not a CDI name vendor/class=name")
    if not (sep and slash and vendor and cls and name):
        raise CdiError(f"{short(text)} is not a qualified CDI name vendor/class=name")
    _check_kind(vendor, cls, short(text))
    if not _DEVICE_NAME.fullmatch(name):
        raise CdiError(f"invalid device name {short(name)} in {short(text)}")
    return QualifiedName(vendor, cls, name)


@dataclass(frozen=True)
class CdiEdits:
    """One ``containerEdits`` object, kept in its JSON shape."""

    env: tuple[str, ...] = ()
    device_nodes: tuple[Mapping[str, Any], ...] = ()
    mounts: tuple[Mapping[str, Any], ...] = ()
    hooks: tuple[Mapping[str, Any], ...] = ()
    additional_gids: tuple[int, ...] = ()
    # Fields we read but do not apply (intelRdt, netDevices): named in notes.
    ignored: tuple[str, ...] = ()


@dataclass(frozen=True)
class CdiDevice:
    name: str
    edits: CdiEdits


@dataclass(frozen=True)
class CdiSpec:
    path: str
    # Index of the spec directory in the configured order; higher wins.
    priority: int
    version: str
    vendor: str
    cls: str
    devices: tuple[CdiDevice, ...]
    edits: CdiEdits
    # name -> device, so a lookup does not walk a spec of thousands of devices.
    _by_name: Mapping[str, CdiDevice] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {d.name: d for d in self.devices})

    @property
    def kind(self) -> str:
        return f"{self.vendor}/{self.cls}"

    def device(self, name: str) -> CdiDevice | None:
        return self._by_name.get(name)


def _list_of(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise CdiError(f"{what} must be a list")
    return value


def _objects(value: Any, what: str, required: str) -> tuple[Mapping[str, Any], ...]:
    items = _list_of(value, what)
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get(required), str):
            raise CdiError(f"each of {what} needs a string {required!r}")
    return tuple(items)


def _parse_edits(raw: Any, where: str) -> CdiEdits:
    if raw is None:
        return CdiEdits()
    if not isinstance(raw, dict):
        raise CdiError(f"{where}: containerEdits must be a mapping")
    unknown = sorted(set(raw) - _EDIT_KEYS)
    if unknown:
        raise CdiError(f"{where}: unknown containerEdits field(s) {listing(unknown, quote=True)}")
    env = _list_of(raw.get("env"), f"{where}.env")
    if not all(isinstance(e, str) and "=" in e for e in env):
        raise CdiError(f"{where}.env entries must be NAME=value strings")
    hooks = _objects(raw.get("hooks"), f"{where}.hooks", "path")
    for hook in hooks:
        name = hook.get("hookName")
        # A list or mapping here must be refused, not raise TypeError in the set lookup.
        if not isinstance(name, str) or name not in HOOK_NAMES:
            raise CdiError(f"{where}.hooks: unknown hookName {short(name)}")
    gids = _list_of(raw.get("additionalGids"), f"{where}.additionalGids")
    if not all(isinstance(g, int) and not isinstance(g, bool) for g in gids):
        raise CdiError(f"{where}.additionalGids must be integers")
    return CdiEdits(
        env=tuple(env),
        device_nodes=_objects(raw.get("deviceNodes"), f"{where}.deviceNodes", "path"),
        mounts=_mounts(raw.get("mounts"), where),
        hooks=hooks,
        additional_gids=tuple(gids),
        ignored=tuple(k for k in ("intelRdt", "netDevices") if raw.get(k)),
    )


def _mounts(raw: Any, where: str) -> tuple[Mapping[str, Any], ...]:
    mounts = _objects(raw, f"{where}.mounts", "containerPath")
    if not all(isinstance(m.get("hostPath"), str) for m in mounts):
        raise CdiError(f"each of {where}.mounts needs a string 'hostPath'")
    return mounts


def _version(text: Any) -> tuple[int, ...]:
    if not isinstance(text, str) or not re.fullmatch(r"\d+\.\d+\.\d+", text):
        raise CdiError(f"cdiVersion {short(text)} is not a version like 0.5.0")
    return tuple(int(p) for p in text.split("."))


def _parse_device(raw: Any) -> CdiDevice:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise CdiError("each device needs a string 'name'")
    name = raw["name"]
    if not _DEVICE_NAME.fullmatch(name):
        raise CdiError(f"invalid device name {short(name)}")
    if "containerEdits" not in raw:
        raise CdiError(f"device {short(name)} has no containerEdits")
    return CdiDevice(name, _parse_edits(raw["containerEdits"], f"device {short(name)}"))


def parse_spec(doc: Any, *, path: str, priority: int) -> CdiSpec:
    """Validate one CDI spec document; CdiError names the first problem."""
    if not isinstance(doc, dict):
        raise CdiError("a CDI spec must be a mapping")
    version = doc.get("cdiVersion")
    if _version(version) < _OLDEST_VERSION:
        raise CdiError(f"cdiVersion {version} is older than 0.3.0")
    kind = doc.get("kind")
    if not isinstance(kind, str) or kind.count("/") != 1:
        raise CdiError(f"kind {short(kind)} is not vendor/class")
    vendor, _, cls = kind.partition("/")
    _check_kind(vendor, cls, f"kind {short(kind)}")
    devices = tuple(_parse_device(d) for d in _list_of(doc.get("devices"), "devices"))
    if not devices:
        raise CdiError("a CDI spec needs at least one device")
    duplicates = sorted(n for n, count in Counter(d.name for d in devices).items() if count > 1)
    if duplicates:
        raise CdiError(f"device(s) defined twice: {listing(duplicates)}")
    return CdiSpec(
        path=path,
        priority=priority,
        version=str(version),
        vendor=vendor,
        cls=cls,
        devices=devices,
        edits=_parse_edits(doc.get("containerEdits"), "spec"),
    )


@dataclass(frozen=True)
class Resolution:
    """Edits in the order to apply them, or why some names could not resolve."""

    # (origin for notes, edits): a spec's own edits once, then each device's.
    edits: tuple[tuple[str, CdiEdits], ...] = ()
    missing: tuple[QualifiedName, ...] = ()
    # name -> the spec files that define it at the same priority.
    conflicts: tuple[tuple[QualifiedName, tuple[str, ...]], ...] = ()

    @property
    def ok(self) -> bool:
        return not self.missing and not self.conflicts


def _winners(name: QualifiedName, specs: Sequence[CdiSpec]) -> list[tuple[CdiSpec, CdiDevice]]:
    found = [(s, d) for s in specs if s.kind == name.kind and (d := s.device(name.name))]
    if not found:
        return []
    top = max(s.priority for s, _ in found)
    return [(s, d) for s, d in found if s.priority == top]


def resolve(names: Iterable[QualifiedName], specs: Sequence[CdiSpec]) -> Resolution:
    """Look every name up; like the CDI library, nothing applies if any fails."""
    edits: list[tuple[str, CdiEdits]] = []
    seen_specs: set[str] = set()
    missing: list[QualifiedName] = []
    conflicts: list[tuple[QualifiedName, tuple[str, ...]]] = []
    for name in dict.fromkeys(names):
        winners = _winners(name, specs)
        if not winners:
            missing.append(name)
            continue
        if len(winners) > 1:
            conflicts.append((name, tuple(s.path for s, _ in winners)))
            continue
        spec, device = winners[0]
        if spec.path not in seen_specs:
            seen_specs.add(spec.path)
            edits.append((spec.path, spec.edits))
        edits.append((f"{spec.path} device {device.name}", device.edits))
    if missing or conflicts:
        return Resolution(missing=tuple(missing), conflicts=tuple(conflicts))
    return Resolution(edits=tuple(edits))


def known_names(kind: str, specs: Sequence[CdiSpec]) -> list[str]:
    """The device names defined for ``kind``, for "did you mean" messages."""
    return sorted({d.name for s in specs if s.kind == kind for d in s.devices})
