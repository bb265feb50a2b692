"""What a container spec asks for, read with the meaning the NVIDIA toolkit and
runsc give each signal (reference/peers.md §2.2, gvisor-gpu.md §2.1).

``read_request`` never decides anything: it lists the signals present and the
input errors found. ``shim.gpu.plan`` weighs them against policy and role.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shim.gpu import _oci as oci
from shim.gpu._bound import clip, listing, short
from shim.gpu.cdi import ANNOTATION_PREFIX, CdiError, QualifiedName, parse_qualified_name
from shim.gpu.config import GpuConfig
from shim.gpu.devices import entry_numbers, is_gpu_node

__all__ = [
    "CAPS_ENV",
    "CDI_HOOK",
    "KNOWN_CAPS",
    "LEGACY_HOOK",
    "POD_ANNOTATION",
    "RUNSC_ANNOTATION",
    "RUNSC_DEFAULT_CAPS",
    "VISIBLE_ENV",
    "CdiRequest",
    "GpuRequest",
    "PodLevel",
    "Problem",
    "VisibleDevices",
    "is_mig_id",
    "parse_visible_devices",
    "read_request",
    "requested_capabilities",
]

VISIBLE_ENV = "NVIDIA_VISIBLE_DEVICES"
CAPS_ENV = "NVIDIA_DRIVER_CAPABILITIES"
MIG_ENVS = ("NVIDIA_MIG_CONFIG_DEVICES", "NVIDIA_MIG_MONITOR_DEVICES")
# Ours: set on a pod (and forwarded with containerd's pod_annotations) to boot
# its sandbox with nvproxy, since the pause container carries no GPU signal.
POD_ANNOTATION = "dev.gvisorgpu.nvproxy"
# runsc's own switch (release-20231030.0+); runsc enables nvproxy when it is true.
RUNSC_ANNOTATION = "dev.gvisor.internal.nvproxy"
LEGACY_HOOK = "nvidia-container-runtime-hook"
CDI_HOOK = "nvidia-cdi-hook"
# Names NVIDIA_DRIVER_CAPABILITIES may hold; the last three are nvproxy's
# privileged capabilities, never part of "all".
KNOWN_CAPS = frozenset(
    {"compute", "compat32", "display", "graphics", "ngx", "utility", "video"}
    | {"fabric-imex-mgmt", "profiling", "rdma"}
)
# What runsc allows without --nvproxy-allowed-driver-capabilities.
RUNSC_DEFAULT_CAPS = frozenset({"compute", "utility"})

# The spellings Go's strconv.ParseBool accepts, which is how runsc reads them.
_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})
_INDEX = re.compile(r"\d+")
_GPU_UUID = re.compile(r"GPU-[0-9A-Fa-f-]+")
_MIG = re.compile(r"MIG-[0-9A-Za-z/-]+|\d+:\d+")

# (cause, fix) for a refusal.
Problem = tuple[str, str]
_CDI_FIX = "write each value as vendor/class=name, e.g. nvidia.com/gpu=0"

VisibleKind = Literal["unset", "void", "empty", "none", "all", "list"]


@dataclass(frozen=True)
class VisibleDevices:
    """The effective NVIDIA_VISIBLE_DEVICES."""

    kind: VisibleKind
    raw: str = ""
    ids: tuple[str, ...] = ()
    why: str = ""

    @property
    def asks(self) -> bool:
        """ "none" asks too: driver access without a GPU (toolkit meaning)."""
        return self.kind in ("none", "all", "list")

    @property
    def mig(self) -> tuple[str, ...]:
        return tuple(i for i in self.ids if is_mig_id(i))


def is_mig_id(text: str) -> bool:
    """MIG instances: "MIG-<uuid>" or "<gpu>:<instance>" (also CDI device names)."""
    return bool(_MIG.fullmatch(text))


def _is_device_id(token: str) -> bool:
    return bool(
        _INDEX.fullmatch(token) or _GPU_UUID.fullmatch(token) or _MIG.fullmatch(token)
        or "=" in token
    )


def _classify(value: str) -> tuple[VisibleKind, tuple[str, ...], list[str]]:
    """One pass over the tokens (the value is the image's or the user's, and
    may hold any number of them); ``bad`` keeps every rejected token in order."""
    tokens = [t for t in (part.strip() for part in value.split(",")) if t]
    if not tokens:
        return "empty", (), []
    seen = set(tokens)
    if "void" in seen:
        return "void", (), []
    if "all" in seen:
        return "all", (), []
    if tokens == ["none"]:
        return "none", (), []
    good: dict[str, None] = {}  # an ordered set
    bad: list[str] = []
    for token in tokens:
        if _is_device_id(token):
            good[token] = None
        else:
            bad.append(token)
    return "list", tuple(good), bad


def parse_visible_devices(
    values: list[str], *, cdi_hook: bool
) -> tuple[VisibleDevices, list[Problem]]:
    """Pick the effective value (the last; with an nvidia-cdi-hook, the one
    before a trailing "void" that CDI appended, as runsc reads it) and classify
    it. Returns the value and the input errors found as (cause, fix)."""
    if not values:
        return VisibleDevices("unset"), []
    raw, why = values[-1], ""
    if len(values) > 1:
        why = f"the last of {len(values)} entries"
    if cdi_hook and len(values) > 1 and values[-1].strip() == "void":
        raw, why = values[-2], "the value before the trailing void that CDI appended"
    kind, ids, bad = _classify(raw)
    errors: list[Problem] = []
    if bad:
        what = "entry" if len(bad) == 1 else f"{len(bad)} entries"
        errors.append((
            f"{VISIBLE_ENV} {what} {listing(bad, quote=True)} "
            f"{'is' if len(bad) == 1 else 'are'} not a GPU index, a GPU-/MIG- UUID or a CDI name",
            f"set {VISIBLE_ENV} to all, none, void, GPU indices or GPU-<uuid> values",
        ))
    return VisibleDevices(kind, raw, ids, why), errors


def requested_capabilities(values: list[str], allowed: frozenset[str]) -> tuple[set[str], bool]:
    """The set NVIDIA_DRIVER_CAPABILITIES asks for, and whether it said "all".
    Unset or empty means compute,utility; "all" means what is allowed."""
    raw = values[-1] if values else ""
    tokens = {t.strip() for t in raw.split(",") if t.strip()}
    if not tokens:
        return set(RUNSC_DEFAULT_CAPS), False
    if "all" in tokens:
        return (tokens - {"all"}) | set(allowed), True
    return tokens, False


@dataclass(frozen=True)
class CdiRequest:
    name: QualifiedName
    source: str


@dataclass(frozen=True)
class GpuRequest:
    """Every GPU signal in one spec, and the input errors met reading them."""

    gpu_nodes: tuple[str, ...] = ()
    cdi: tuple[CdiRequest, ...] = ()
    # Well-formed CDI requests for vendors outside config.cdi_vendors.
    foreign_cdi: tuple[CdiRequest, ...] = ()
    visible: VisibleDevices = VisibleDevices("unset")
    legacy_hook: str | None = None
    cdi_hook: str | None = None
    runsc_annotation: bool = False
    pod_annotation: bool = False
    mig_env: tuple[str, ...] = ()
    # Malformed input, as (cause, fix): refused (env_errors, a part of
    # errors, only where NVIDIA_VISIBLE_DEVICES counts at all).
    errors: tuple[Problem, ...] = ()
    env_errors: tuple[Problem, ...] = ()
    # Annotations left out because they came from the pod (its author), one
    # line each, for the plan's notes.
    pod_level: tuple[str, ...] = ()

    @property
    def node_reasons(self) -> list[str]:
        """Devices named in the spec: in a CRI pod only the node puts these
        there (the device plugin's DeviceSpecs, CDI devices containerd resolved,
        container annotations the kubelet set)."""
        reasons = [f"linux.devices has {p}" for p in self.gpu_nodes]
        # One reason per annotation, however many names it lists.
        by_key: dict[str, list[str]] = {}
        for r in self.cdi:
            by_key.setdefault(r.source, []).append(str(r.name))
        reasons += [f"annotation {k} requests {listing(names)}" for k, names in by_key.items()]
        return reasons

    @property
    def hook_reason(self) -> str | None:
        """An NVIDIA hook together with NVIDIA_VISIBLE_DEVICES: runsc then runs
        nvidia-container-cli for the GPUs the variable names."""
        if self.legacy_hook and self.visible.asks:
            return f"prestart hook {self.legacy_hook} with {self._visible_text()}"
        if self.cdi_hook and self.visible.asks:
            return f"createContainer hook {self.cdi_hook} with {self._visible_text()}"
        return None

    @property
    def explicit_reasons(self) -> list[str]:
        """Signals that name devices or hooks: nobody sets these by accident."""
        reasons = self.node_reasons
        if self.hook_reason:
            reasons.append(self.hook_reason)
        if self.runsc_annotation:
            reasons.append(f"annotation {RUNSC_ANNOTATION}=true")
        return reasons

    @property
    def env_reason(self) -> str | None:
        """NVIDIA_VISIBLE_DEVICES on its own: CUDA images set "all" in their
        image config, so this ask may come from the image, not the user."""
        if self.visible.asks and not (self.legacy_hook or self.cdi_hook):
            return self._visible_text()
        return None

    def _visible_text(self) -> str:
        why = f" ({self.visible.why})" if self.visible.why else ""
        return f"{VISIBLE_ENV}={clip(self.visible.raw, 80)}{why}"


def _gpu_nodes(spec: dict[str, Any], host_nodes: Mapping[str, tuple[int, int]]) -> tuple[str, ...]:
    found = []
    for entry in oci.devices(spec):
        path = str(entry.get("path", ""))
        major, _ = entry_numbers(entry, host_nodes, path)
        if is_gpu_node(path, major):
            found.append(path)
    return tuple(dict.fromkeys(found))


# Whether an annotation (key, value) came from the pod rather than the container.
PodLevel = Callable[[str, str], bool]


def _never(key: str, value: str) -> bool:
    return False


def _cdi_requests(
    spec: dict[str, Any], vendors: frozenset[str], pod_level: PodLevel
) -> tuple[list[CdiRequest], list[CdiRequest], list[Problem], list[str]]:
    ours: dict[CdiRequest, None] = {}  # ordered sets: a repeated name counts once
    foreign: dict[CdiRequest, None] = {}
    errors: list[Problem] = []
    ignored: list[str] = []
    for key, value in sorted(oci.annotations_of(spec).items()):
        if not key.startswith(ANNOTATION_PREFIX):
            continue
        if pod_level(key, value):
            ignored.append(f"annotation {short(key)}={short(value)}")
            continue
        bad: list[str] = []
        for item in (v.strip() for v in value.split(",")):
            try:
                name = parse_qualified_name(item)
            except CdiError as exc:
                bad.append(str(exc))
                continue
            (ours if name.vendor in vendors else foreign)[CdiRequest(name, key)] = None
        if bad:
            more = f" (and {len(bad) - 1} more bad names)" if len(bad) > 1 else ""
            errors.append((f"annotation {short(key)}: {bad[0]}{more}", _CDI_FIX))
    return list(ours), list(foreign), errors, ignored


def _hook(spec: dict[str, Any], kind: str, basename: str) -> str | None:
    for hook in oci.hooks(spec, kind):
        path = str(hook.get("path", ""))
        if path.rsplit("/", 1)[-1] == basename:
            return path
    return None


def _flag_annotation(spec: dict[str, Any], key: str, errors: list[Problem]) -> bool:
    value = oci.annotations_of(spec).get(key)
    if value is None:
        return False
    if value not in _TRUE | _FALSE:
        errors.append(
            (f"annotation {key}={short(value)} is not a boolean", f'set {key} to "true"')
        )
        return False
    return value in _TRUE


def read_request(
    spec: dict[str, Any],
    host_nodes: Mapping[str, tuple[int, int]],
    config: GpuConfig,
    *,
    pod_level: PodLevel = _never,
) -> GpuRequest:
    """List every GPU signal in ``spec`` (which it does not change). CDI
    annotations for which ``pod_level`` is true are left out, and listed in
    ``pod_level`` of the result."""
    cdi, foreign, errors, ignored = _cdi_requests(spec, config.cdi_vendors, pod_level)
    cdi_hook = _hook(spec, "createContainer", CDI_HOOK)
    visible, env_errors = parse_visible_devices(
        oci.env_values(spec, VISIBLE_ENV), cdi_hook=cdi_hook is not None
    )
    return GpuRequest(
        gpu_nodes=_gpu_nodes(spec, host_nodes),
        cdi=tuple(cdi),
        foreign_cdi=tuple(foreign),
        visible=visible,
        legacy_hook=_hook(spec, "prestart", LEGACY_HOOK),
        cdi_hook=cdi_hook,
        runsc_annotation=_flag_annotation(spec, RUNSC_ANNOTATION, errors),
        pod_annotation=_flag_annotation(spec, POD_ANNOTATION, errors),
        mig_env=tuple(n for n in MIG_ENVS if any(v.strip() for v in oci.env_values(spec, n))),
        errors=tuple(errors + env_errors),
        env_errors=tuple(env_errors),
        pod_level=tuple(ignored),
    )
