"""Check an app container's GPUs against what the kubelet allocated to it.

What a container is granted is what its final spec holds: the GPU device
nodes (``/dev/nvidiaN``, or any node with the NVIDIA major and a GPU minor),
plus, on runsc's hook path, the GPUs ``NVIDIA_VISIBLE_DEVICES`` names. What
it may hold is the kubelet's allocation for that container, as device-plugin
ids or DRA CDI names. Both sides become GPU minors:

- a device-plugin id ``nvidiaN`` (GKE's plugin names devices after their
  node) is minor N;
- a GPU UUID is looked up in /proc/driver/nvidia/gpus (the driver's own
  table of minor and UUID);
- any id is also looked up as a CDI device of ``cdi_default_kind`` (NVIDIA's
  generated spec names each GPU by index and by UUID), and a DRA CDI name is
  resolved as it stands.

When the sources disagree about an id, or none knows it, the id maps to no
GPU: a grant the shim cannot tie to the allocation is refused, not passed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shim.gpu import _oci as oci
from shim.gpu._bound import listing
from shim.gpu._context import Context
from shim.gpu.cdi import CdiError, QualifiedName, parse_qualified_name, resolve
from shim.gpu.devices import NVIDIA_MAJOR, entry_numbers
from shim.gpu.facts import Allocation, HostFacts
from shim.gpu.request import VISIBLE_ENV

__all__ = ["check_allocation"]

_GPU_PATH = re.compile(r"/dev/nvidia(\d+)")
_NODE_ID = re.compile(r"nvidia(\d+)")
# 254 and 255 are nvidia-modeset and nvidiactl; GPUs sit below.
_FIRST_NON_GPU_MINOR = 254
_FIX = (
    "a pod's container gets only the GPUs the kubelet allocated to it: request them in the pod "
    "spec (resources.limits nvidia.com/gpu, or a DRA claim) and let the device plugin put them "
    f"in the spec; pod annotations and {VISIBLE_ENV} grant none"
)
_MAP_FIX = (
    "; for the shim to tell which GPU a device-plugin id is, the host needs the driver's "
    "/proc/driver/nvidia/gpus or a CDI spec that names each GPU by its id (nvidia-ctk cdi "
    "generate)"
)


@dataclass(frozen=True)
class _Grant:
    label: str
    # The GPU minors this grant reaches; None when that cannot be told.
    minors: frozenset[int] | None


def _gpu_minors(entry: Mapping[str, Any], host: HostFacts, *, strict: bool) -> set[int]:
    """The GPUs a device node reaches. Generous for what is granted (its path
    number and its minor); strict for what is allocated (its minor, else its
    path number)."""
    path = str(entry.get("path", ""))
    major, minor = entry_numbers(entry, host.device_nodes, path)
    found: set[int] = set()
    if major == NVIDIA_MAJOR and minor is not None and minor < _FIRST_NON_GPU_MINOR:
        found.add(minor)
    match = _GPU_PATH.fullmatch(path)
    if match and major in (None, NVIDIA_MAJOR) and not (strict and found):
        found.add(int(match.group(1)))
    return found


def _label(what: str, minors: frozenset[int] | None, host: HostFacts) -> str:
    uuids = [g.uuid for g in host.gpus if minors and g.minor in minors and g.uuid]
    return f"{what} ({', '.join(uuids)})" if uuids else what


def _cdi_minors(name: QualifiedName, host: HostFacts) -> frozenset[int] | None:
    res = resolve([name], host.cdi_specs)
    if not res.ok:
        return None
    minors = {m for _, edits in res.edits for node in edits.device_nodes
              for m in _gpu_minors(node, host, strict=True)}
    return frozenset(minors) or None


def _id_minors(device_id: str, ctx: Context) -> tuple[frozenset[int] | None, str]:
    """The GPU minors a device-plugin id stands for, or None and why not."""
    host = ctx.host
    found: dict[str, frozenset[int]] = {}
    if match := _NODE_ID.fullmatch(device_id):
        found["its name"] = frozenset({int(match.group(1))})
    by_uuid = frozenset(g.minor for g in host.gpus if g.uuid == device_id)
    if by_uuid:
        found["/proc/driver/nvidia/gpus"] = by_uuid
    vendor, _, cls = ctx.config.cdi_default_kind.partition("/")
    try:
        cdi = _cdi_minors(parse_qualified_name(f"{vendor}/{cls}={device_id}"), host)
    except CdiError:
        cdi = None
    if cdi:
        found[f"CDI device {vendor}/{cls}={device_id}"] = cdi
    answers = set(found.values())
    if not answers:
        return None, "no GPU with that id in /proc/driver/nvidia/gpus or the CDI specs"
    if len(answers) > 1:
        return None, "sources disagree: " + "; ".join(
            f"{src} says minor {sorted(m)}" for src, m in found.items())
    return answers.pop(), ""


def _allocated(alloc: Allocation, ctx: Context) -> tuple[frozenset[int], list[str]]:
    """The minors the allocation covers, and each id that maps to none."""
    allowed: set[int] = set()
    unmapped: list[str] = []
    for device_id in alloc.device_ids:
        minors, why = _id_minors(device_id, ctx)
        if minors is None:
            unmapped.append(f"{device_id} ({why})")
        else:
            allowed |= minors
    for name in alloc.cdi_names:
        try:
            minors = _cdi_minors(parse_qualified_name(name), ctx.host)
        except CdiError:
            minors = None
        if minors is None:
            unmapped.append(f"{name} (no CDI spec resolves it to a GPU device node)")
        else:
            allowed |= minors
    return frozenset(allowed), unmapped


def _host_minors(host: HostFacts) -> frozenset[int]:
    nodes = {int(m.group(1)) for p in host.device_nodes if (m := _GPU_PATH.fullmatch(p))}
    return frozenset(nodes | {g.minor for g in host.gpus})


def _env_grants(ctx: Context) -> list[_Grant]:
    """On the hook path runsc runs nvidia-container-cli for the GPUs the
    variable names (gvisor-gpu.md §2.1)."""
    visible = ctx.request.visible
    if visible.kind == "all":
        every = _host_minors(ctx.host)
        return [_Grant(f"{VISIBLE_ENV}=all (every GPU of the host)", every or None)]
    grants = []
    for device_id in visible.ids:
        minors, _ = _id_minors(device_id, ctx)
        grants.append(_Grant(_label(f"{VISIBLE_ENV} entry {device_id}", minors, ctx.host),
                             minors))
    return grants


def _granted(ctx: Context) -> list[_Grant]:
    grants: dict[str, _Grant] = {}
    for entry in oci.devices(ctx.spec):
        minors = frozenset(_gpu_minors(entry, ctx.host, strict=False))
        path = str(entry.get("path", ""))
        if minors and path not in grants:
            grants[path] = _Grant(_label(path, minors, ctx.host), minors)
    found = list(grants.values())
    if ctx.mode == "hook":
        found += _env_grants(ctx)
    return found


def _outside(grants: list[_Grant], allowed: frozenset[int]) -> list[str]:
    return [g.label for g in grants if g.minors is None or not g.minors <= allowed]


def check_allocation(ctx: Context) -> None:
    """A pod's app container gets at most what the kubelet allocated to it."""
    role = ctx.role
    if role.kind != "member" or not ctx.gpu:
        return
    grants = _granted(ctx)
    labels = listing(g.label for g in grants)
    if not grants:
        ctx.note("check_allocation", "no GPU device granted (driver access only)")
        return
    alloc = role.allocation
    if alloc is None:
        ctx.allocation = f"{labels} not checked: {role.kubelet or 'no kubelet answer'}"
        ctx.note("check_allocation", ctx.allocation)
        return
    if alloc.unknown:
        ctx.allocation = f"{labels} refused: {alloc.unknown}"
        ctx.refuse(f"it is granted {labels}, but {alloc.unknown}", _FIX)
        return
    allowed, unmapped = _allocated(alloc, ctx)
    beyond = _outside(grants, allowed)
    if not beyond:
        ctx.allocation = f"{labels} within the allocation: {alloc.describe()}"
        ctx.note("check_allocation", ctx.allocation)
        return
    ctx.allocation = f"{listing(beyond)} beyond the allocation: {alloc.describe()}"
    cause = f"it is granted {listing(beyond)}, beyond what the node allocated: {alloc.describe()}"
    if unmapped:
        cause += f"; cannot tell which GPU {listing(unmapped, 3)} is"
    ctx.refuse(cause, _FIX + (_MAP_FIX if unmapped else ""))
