"""Apply CDI ``containerEdits`` to an OCI spec the way the CDI library does,
but idempotently: whatever is already there (because containerd resolved the
request before us, or because the spec went through ``plan`` once) is not added
a second time. Each function returns a line per change for the plan's notes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shim.gpu import _oci as oci
from shim.gpu.cdi import CdiEdits
from shim.gpu.devices import entry_numbers

__all__ = ["apply_edits", "oci_device"]

JSON = dict[str, Any]
HostNodes = Mapping[str, tuple[int, int]]
_COPIED_NODE_FIELDS = ("fileMode", "uid", "gid")
_BIND_OPTIONS = frozenset({"bind", "rbind"})


def oci_device(node: Mapping[str, Any], host_nodes: HostNodes) -> JSON:
    """A CDI deviceNode as a linux.devices entry, numbers filled from the host
    like the CDI library does (it stats hostPath)."""
    path = str(node["path"])
    host_path = str(node.get("hostPath") or path)
    major, minor = entry_numbers(node, host_nodes, host_path)
    device: JSON = {"path": path, "type": node.get("type") or "c"}
    if major is not None:
        device["major"] = major
    if minor is not None:
        device["minor"] = minor
    device.update({k: node[k] for k in _COPIED_NODE_FIELDS if k in node})
    return device


def _apply_env(spec: JSON, env: tuple[str, ...]) -> list[str]:
    changes = []
    for entry in env:
        name, _, value = entry.partition("=")
        if oci.env_values(spec, name) != [value] and oci.set_env(spec, name, value):
            changes.append(f"env {entry}")
    return changes


def _cgroup_rule(device: JSON, node: Mapping[str, Any]) -> JSON | None:
    access = node.get("permissions") or "rwm"
    if access == "none" or "major" not in device or "minor" not in device:
        return None
    return {
        "allow": True,
        "type": device["type"],
        "major": device["major"],
        "minor": device["minor"],
        "access": access,
    }


def _agrees(existing: JSON, device: JSON) -> bool:
    """Whether a spec entry at the same path is this node (containerd may have
    added more fields, such as fileMode, that we keep)."""
    return all(
        existing.get(k, device[k]) == device[k] for k in ("type", "major", "minor") if k in device
    )


def _apply_nodes(spec: JSON, nodes: tuple[Mapping[str, Any], ...], host: HostNodes) -> list[str]:
    devices, rules = oci.devices(spec), oci.device_rules(spec)
    changes = []
    for node in nodes:
        device = oci_device(node, host)
        rule = _cgroup_rule(device, node)
        if rule is not None and rule not in rules:
            rules.append(rule)
        at = next((i for i, d in enumerate(devices) if d.get("path") == device["path"]), None)
        if at is None:
            devices.append(device)
            changes.append(f"device {device['path']}")
        elif not _agrees(devices[at], device):
            # Like the CDI library, a node replaces the entry at its path.
            devices[at] = device
            changes.append(f"device {device['path']} (replaced)")
    if changes:
        oci.set_devices(spec, devices)
    if rules != oci.device_rules(spec):
        oci.set_device_rules(spec, rules)
    return changes


def _oci_mount(mount: Mapping[str, Any]) -> JSON:
    options = [str(o) for o in mount.get("options") or []]
    result: JSON = {"destination": mount["containerPath"], "source": mount["hostPath"]}
    kind = mount.get("type") or ("bind" if _BIND_OPTIONS & set(options) else None)
    if kind:
        result["type"] = kind
    if options:
        result["options"] = options
    return result


def _apply_mounts(spec: JSON, mounts: tuple[Mapping[str, Any], ...]) -> list[str]:
    current = oci.mounts(spec)
    changes = []
    for mount in mounts:
        wanted = _oci_mount(mount)
        same = [i for i, m in enumerate(current) if m.get("destination") == wanted["destination"]]
        if any(current[i] == wanted for i in same):
            continue
        # A CDI mount replaces whatever the spec mounted at the same place.
        for i in reversed(same):
            del current[i]
        current.append(wanted)
        changes.append(f"mount {wanted['destination']}")
    if changes:
        oci.set_mounts(spec, current)
    return changes


def _oci_hook(hook: Mapping[str, Any]) -> JSON:
    result: JSON = {"path": hook["path"]}
    result.update({k: hook[k] for k in ("args", "env", "timeout") if hook.get(k)})
    return result


def _apply_hooks(spec: JSON, hooks: tuple[Mapping[str, Any], ...]) -> list[str]:
    changes = []
    for hook in hooks:
        kind, wanted = str(hook["hookName"]), _oci_hook(hook)
        current = oci.hooks(spec, kind)
        if any(
            h.get("path") == wanted["path"] and h.get("args") == wanted.get("args") for h in current
        ):
            continue
        oci.set_hooks(spec, kind, [*current, wanted])
        changes.append(f"{kind} hook {' '.join(map(str, wanted.get('args') or [wanted['path']]))}")
    return changes


def _apply_gids(spec: JSON, gids: tuple[int, ...]) -> list[str]:
    current = oci.additional_gids(spec)
    # The CDI library skips gid 0: adding root's group grants nothing new.
    new = [g for g in dict.fromkeys(gids) if g != 0 and g not in current]
    if new:
        oci.set_additional_gids(spec, current + new)
    return [f"additional gid {g}" for g in new]


def apply_edits(spec: JSON, edits: CdiEdits, host_nodes: HostNodes) -> list[str]:
    """Apply one containerEdits object in place on the planner's working copy."""
    return [
        *_apply_env(spec, edits.env),
        *_apply_nodes(spec, edits.device_nodes, host_nodes),
        *_apply_mounts(spec, edits.mounts),
        *_apply_hooks(spec, edits.hooks),
        *_apply_gids(spec, edits.additional_gids),
    ]
