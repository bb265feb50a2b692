"""Steps that edit the spec copy. Each is idempotent: run on its own output it
changes nothing, and it leaves a note when it has nothing to do."""

from __future__ import annotations

from typing import Any

from shim.gpu import _oci as oci
from shim.gpu._bound import listing
from shim.gpu._context import Context
from shim.gpu._edits import apply_edits
from shim.gpu.cdi import (
    CdiError,
    QualifiedName,
    Resolution,
    known_names,
    parse_qualified_name,
    resolve,
)
from shim.gpu.devices import entry_numbers, is_gpu_node, is_mig_node, is_nvidia_related
from shim.gpu.facts import CREATE_CONTAINER_HOOKS, SKIP_NODE_MODIFICATION_HOOK, release_name
from shim.gpu.keys import key
from shim.gpu.request import LEGACY_HOOK, VISIBLE_ENV, CdiRequest, is_mig_id

__all__ = [
    "clean_cdi_edits_for_runsc",
    "keep_gpu_device_nodes",
    "remove_legacy_hook",
    "resolve_cdi",
    "sync_visible_devices",
]

_GENERATE = "nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml"


def _env_requests(ctx: Context) -> list[CdiRequest]:
    """NVIDIA_VISIBLE_DEVICES ids as CDI names of the default kind, as the
    toolkit's cdi mode reads them ("0" -> nvidia.com/gpu=0)."""
    visible = ctx.request.visible
    vendor, _, cls = ctx.config.cdi_default_kind.partition("/")
    ids = ("all",) if visible.kind == "all" else visible.ids
    out = []
    for item in ids:
        try:
            name = parse_qualified_name(item) if "=" in item else QualifiedName(vendor, cls, item)
        except CdiError as exc:
            ctx.refuse(f"{VISIBLE_ENV}: {exc}", "write CDI names as vendor/class=name",
                       bad_input=True)
            continue
        out.append(CdiRequest(name, VISIBLE_ENV))
    return out


def _requests(ctx: Context) -> list[CdiRequest]:
    req = ctx.request
    named = "CDI annotations" if req.cdi else "linux.devices" if req.gpu_nodes else None
    if named and req.visible.kind in ("all", "list"):
        ctx.note("resolve_cdi", f"{VISIBLE_ENV}={req.visible.raw} ignored: {named} name the GPUs")
    if req.cdi:
        return list(req.cdi)
    if named or ctx.mode != "cdi" or req.visible.kind not in ("all", "list"):
        return []
    return _env_requests(ctx)


def _refuse_unresolved(ctx: Context, res: Resolution, from_env: bool) -> None:
    specs, dirs = ctx.host.cdi_specs, ", ".join(ctx.config.cdi_dirs)
    broken = f" (spec files that failed to load: {listing(ctx.host.cdi_errors, 3)})"
    broken = broken if ctx.host.cdi_errors else ""
    cpu_only = f"; to run it without a GPU set {VISIBLE_ENV}=void" if from_env else ""
    for kind in dict.fromkeys(n.kind for n in res.missing):
        wanted = listing(str(n) for n in res.missing if n.kind == kind)
        names = known_names(kind, specs)
        if names:
            cause = f"unresolvable CDI device(s) {wanted}: {kind} defines {listing(names, 10)}"
            fix = f"request one of those, or regenerate the spec ({_GENERATE})"
        else:
            cause = f"unresolvable CDI device(s) {wanted}: no CDI spec in {dirs} defines {kind}"
            fix = f"generate one with {_GENERATE}, or add its directory to {key('cdi_dirs')}"
        ctx.refuse(cause + broken, fix + cpu_only)
    for name, paths in res.conflicts:
        ctx.refuse(
            f"CDI device {name} is defined at the same priority by {listing(paths)}",
            "remove one of those spec files",
        )


def resolve_cdi(ctx: Context) -> None:
    """Apply the CDI edits of the requested devices, unless already there."""
    requests = [r for r in _requests(ctx) if not is_mig_id(r.name.name)]
    if not requests:
        ctx.note("resolve_cdi", "no raw CDI request to resolve")
        return
    res = resolve([r.name for r in requests], ctx.host.cdi_specs)
    if not res.ok:
        _refuse_unresolved(ctx, res, requests[0].source == VISIBLE_ENV)
        return
    changes: list[str] = []
    for origin, edits in res.edits:
        changes += apply_edits(ctx.spec, edits, ctx.host.device_nodes)
        if edits.ignored:
            ctx.note("resolve_cdi", f"{origin}: {', '.join(edits.ignored)} not applied")
    wanted = listing(str(r.name) for r in requests)
    if changes:
        ctx.note("resolve_cdi", f"{wanted}: added {listing(changes, 20)}")
    else:
        ctx.note("resolve_cdi", f"{wanted}: already resolved in the spec, nothing added")


def remove_legacy_hook(ctx: Context) -> None:
    """Once CDI edits are in, the legacy hook would make runsc inject a second
    time through nvidia-container-cli (the toolkit's hook remover)."""
    hooks = oci.hooks(ctx.spec, "prestart")
    kept = [h for h in hooks if str(h.get("path", "")).rsplit("/", 1)[-1] != LEGACY_HOOK]
    if len(kept) == len(hooks):
        ctx.note("remove_legacy_hook", f"no {LEGACY_HOOK} prestart hook")
        return
    oci.set_hooks(ctx.spec, "prestart", kept)
    ctx.note("remove_legacy_hook", f"removed the {LEGACY_HOOK} prestart hook: CDI edits apply")


def _keep(ctx: Context, entry: dict[str, Any]) -> dict[str, Any] | None:
    """The entry with its numbers filled in, or None to drop it."""
    path = str(entry.get("path", ""))
    major, minor = entry_numbers(entry, ctx.host.device_nodes, path)
    # A pod's sandbox container runs only the pause process: nvproxy is on
    # for the pod through the flag, and no GPU node is the pause's to hold.
    sandbox = ctx.role.kind == "sandbox"
    if not ctx.gpu or sandbox or not is_gpu_node(path, major) or is_mig_node(path):
        return None
    filled = {**entry, "type": entry.get("type") or "c"}
    filled.update({k: v for k, v in (("major", major), ("minor", minor)) if v is not None})
    return filled


def _drop_rules(ctx: Context, dropped: list[dict[str, Any]], kept: list[dict[str, Any]]) -> None:
    """Drop the cgroup allow rules that only served dropped nodes."""
    host = ctx.host.device_nodes
    paths = {d.get("path") for d in kept}
    still = {entry_numbers(d, host, str(d.get("path"))) for d in kept}
    # A duplicate of a kept node takes no rule with it.
    gone = {
        entry_numbers(d, host, str(d.get("path"))) for d in dropped if d.get("path") not in paths
    }
    gone -= still
    rules = oci.device_rules(ctx.spec)
    left = [r for r in rules if not (r.get("allow") and (r.get("major"), r.get("minor")) in gone)]
    if len(left) != len(rules):
        oci.set_device_rules(ctx.spec, left)


def keep_gpu_device_nodes(ctx: Context) -> None:
    """Keep exactly the nodes nvproxy serves, numbers filled in; drop other
    NVIDIA and DRM nodes (gVisor virtualises /dev and mounts none of them).
    A container without a GPU keeps no /dev/nvidia* node at all."""
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    seen: set[str] = set()
    for entry in oci.devices(ctx.spec):
        path = str(entry.get("path", ""))
        ours = is_nvidia_related(path) if ctx.gpu else path.startswith("/dev/nvidia")
        filled = _keep(ctx, entry) if ours and path not in seen else None
        if not ours:
            kept.append(entry)
        elif filled:
            seen.add(path)
            kept.append(filled)
        else:
            dropped.append(entry)
    if kept != oci.devices(ctx.spec):
        oci.set_devices(ctx.spec, kept)
        _drop_rules(ctx, dropped, kept)
    absent = [str(d["path"]) for d in kept if ctx.gpu and _absent(ctx, d)]
    if absent:
        ctx.warn(f"the host has no {', '.join(absent)}: runsc's gofer cannot open what is missing")
    paths = listing(dict.fromkeys(str(d.get("path")) for d in dropped), 10) or "nothing"
    ctx.note("keep_gpu_device_nodes", f"dropped {paths}")


def _absent(ctx: Context, entry: dict[str, Any]) -> bool:
    path = str(entry.get("path", ""))
    return is_nvidia_related(path) and path not in ctx.host.device_nodes


def sync_visible_devices(ctx: Context) -> None:
    """Leave one NVIDIA_VISIBLE_DEVICES that cannot expose more GPUs than the
    spec names: with a hook and a non-void value runsc runs nvidia-container-cli
    and creates a node for every GPU that value names (gVisor #13621)."""
    values = oci.env_values(ctx.spec, VISIBLE_ENV)
    if ctx.mode == "hook":
        wanted = ctx.request.visible.raw
        why = f"runsc passes it to nvidia-container-cli --device={wanted}"
    elif values:
        wanted, why = "void", "the GPUs are the device nodes in the spec"
    else:
        ctx.note("sync_visible_devices", f"{VISIBLE_ENV} is unset, which exposes nothing")
        return
    if values == [wanted]:
        ctx.note("sync_visible_devices", f"{VISIBLE_ENV}={wanted} already: {why}")
        return
    oci.set_env(ctx.spec, VISIBLE_ENV, wanted)
    was = listing((repr(v) for v in values), 3).replace(", ", " then ") or "unset"
    ctx.note("sync_visible_devices", f"set {VISIBLE_ENV}={wanted} (was {was}): {why}")


# The gofer cannot bind-mount sockets (gVisor PR #13383); nvidia-ctk mounts
# <dir>/socket for these daemons. The daemons' binaries are not in such a dir.
_IPC_DIRS = frozenset({"nvidia-persistenced", "nvidia-fabricmanager"})
_NODE_MODIFICATION = "disable-device-node-modification"


def _ipc_socket(mount: dict[str, Any]) -> bool:
    for end in ("destination", "source"):
        parts = str(mount.get(end, "")).rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] in _IPC_DIRS:
            return True
    return False


def _hook_name(hook: dict[str, Any]) -> str:
    """ "nvidia-cdi-hook update-ldcache" for both the new and the nvidia-ctk form."""
    args = [str(a) for a in hook.get("args") or []][1:]
    args = args[1:] if args[:1] == ["hook"] else args
    return " ".join([str(hook.get("path", "")).rsplit("/", 1)[-1], *args[:1]])


def _drop_ipc_mounts(ctx: Context) -> None:
    mounts = oci.mounts(ctx.spec)
    kept = [m for m in mounts if not _ipc_socket(m)]
    if len(kept) == len(mounts):
        ctx.note("clean_cdi_edits_for_runsc", "no persistenced/fabricmanager socket mount")
        return
    oci.set_mounts(ctx.spec, kept)
    gone = ", ".join(str(m.get("destination")) for m in mounts if _ipc_socket(m))
    ctx.note("clean_cdi_edits_for_runsc", f"dropped socket mount(s) {gone}: gofer cannot mount")


def _drop_hooks(ctx: Context, hooks: list[dict[str, Any]], why: str) -> None:
    kept = [h for h in oci.hooks(ctx.spec, "createContainer") if h not in hooks]
    oci.set_hooks(ctx.spec, "createContainer", kept)
    names = ", ".join(dict.fromkeys(_hook_name(h) for h in hooks))
    ctx.warn(f"dropped createContainer hook(s) {names}: {why}")


def _clean_hooks(ctx: Context) -> None:
    hooks = oci.hooks(ctx.spec, "createContainer")
    older = ctx.host.release_before(CREATE_CONTAINER_HOOKS)
    label = ctx.host.runsc_label()
    if not hooks:
        ctx.note("clean_cdi_edits_for_runsc", "no createContainer hook")
    elif older or older is None:
        unknown = " (its release is unknown, so assumed older)" if older is None else ""
        _drop_hooks(
            ctx,
            hooks,
            (
                f"{label}{unknown} skips createContainer hooks before "
                f"{release_name(CREATE_CONTAINER_HOOKS)}; the driver libraries are still mounted, "
                "but without their symlinks and ld cache entries, so set LD_LIBRARY_PATH in the "
                "image if CUDA cannot find libcuda"
            ),
        )
    elif ctx.host.release_before(SKIP_NODE_MODIFICATION_HOOK):
        failing = [h for h in hooks if _NODE_MODIFICATION in map(str, h.get("args") or [])]
        if failing:
            _drop_hooks(ctx, failing, f"it fails inside {label}'s gofer (gVisor #13283)")
    else:
        ctx.note("clean_cdi_edits_for_runsc", f"{label} runs createContainer hooks itself")


def clean_cdi_edits_for_runsc(ctx: Context) -> None:
    """Remove the edits NVIDIA's CDI spec makes that the installed runsc cannot
    carry out, whoever applied them (us or containerd)."""
    _drop_ipc_mounts(ctx)
    _clean_hooks(ctx)
