"""The first two steps: read the signals, then decide GPU or not and pick the
mode that chooses the rest of the pipeline.

The decision is per sandbox (gvisor-gpu.md §2.5): a pod's sandbox container
decides from policy, our pod annotation or an outside fact, because runsc fixes
nvproxy when the sandbox boots; an app container can only use a GPU when its
sandbox booted with nvproxy.
"""

from __future__ import annotations

from shim.gpu._context import Context, Mode
from shim.gpu.keys import key
from shim.gpu.request import POD_ANNOTATION, VISIBLE_ENV, read_request

__all__ = ["decide", "detect"]

_POD_FIX = (
    f'recreate the pod with the annotation {POD_ANNOTATION}: "true" (let it through '
    f'with pod_annotations = ["dev.gvisorgpu.*"] on this runtime in containerd\'s '
    'config), or give GPU pods a runtime handler whose shim config says nvproxy = "always"'
)
_CPU_ONLY = f"; to run it without a GPU set {VISIBLE_ENV}=void"


def detect(ctx: Context) -> None:
    """Read every GPU signal; malformed input is refused whatever the policy."""
    req = read_request(ctx.spec, ctx.host.device_nodes, ctx.config)
    ctx.request = req
    for cause, fix in req.errors:
        ctx.refuse(cause, fix)
    for extra in req.foreign_cdi:
        ctx.note(
            "detect",
            f"annotation {extra.source} requests {extra.name}: vendor {extra.name.vendor} is "
            f"not in {key('cdi_vendors')}, so it is left to containerd",
        )


def _wants(ctx: Context) -> tuple[list[str], bool]:
    """The reasons this container (or sandbox) wants nvproxy, and whether the
    only one is NVIDIA_VISIBLE_DEVICES by itself."""
    req = ctx.request
    reasons = req.explicit_reasons
    if ctx.role.kind != "member":
        if req.pod_annotation:
            reasons.append(f"annotation {POD_ANNOTATION}=true")
        if ctx.role.pod_has_gpus:
            reasons.append("the pod has GPUs (supplied by the caller)")
    env_only = False
    if req.env_reason and not ctx.config.accept_visible_devices_env:
        ctx.note("decide", f"{req.env_reason} ignored: {key('accept_visible_devices_env')} is off")
    elif req.env_reason:
        reasons.append(req.env_reason)
        env_only = len(reasons) == 1
    return reasons, env_only


def _mode(ctx: Context) -> Mode:
    req = ctx.request
    if req.gpu_nodes or req.cdi:
        return "cdi"
    env_asks = req.visible.kind in ("all", "list")
    if req.legacy_hook and (env_asks or req.visible.kind == "none"):
        # With a CDI spec for GPUs on the host, exact device nodes beat runsc
        # running nvidia-container-cli (the toolkit removes this hook in cdi mode).
        has_spec = any(s.kind == ctx.config.cdi_default_kind for s in ctx.host.cdi_specs)
        return "cdi" if env_asks and has_spec else "hook"
    if env_asks and (req.cdi_hook or ctx.config.accept_visible_devices_env):
        return "cdi"
    return "driver"


def _enable(ctx: Context, reasons: list[str]) -> None:
    ctx.gpu, ctx.reasons, ctx.mode = True, reasons, _mode(ctx)
    ctx.note("decide", f"nvproxy on, mode {ctx.mode}")


def _decide_never(ctx: Context, reasons: list[str], env_only: bool) -> None:
    ctx.reasons = [f"policy nvproxy = never ({'; '.join(reasons) or 'no GPU signal'})"]
    if env_only:
        ctx.warn(f"{reasons[0]} ignored: this runtime's shim config says nvproxy = never")
    elif reasons:
        ctx.refuse(
            f"it asks for a GPU ({'; '.join(reasons)}) but this runtime's shim config "
            "says nvproxy = never",
            'run it with a runtime handler whose config says nvproxy = "auto" or "always"',
        )


def _decide_member(ctx: Context, reasons: list[str], env_only: bool) -> None:
    role = ctx.role
    sandbox = role.sandbox_id or "(unknown id)"
    if ctx.config.nvproxy == "always" and role.sandbox_nvproxy is not False:
        reasons.insert(0, "policy nvproxy = always")
    if not reasons:
        ctx.reasons = ["no GPU signal in this app container"]
        return
    if role.sandbox_nvproxy is False:
        ctx.reasons = reasons
        ctx.refuse(
            f"it asks for a GPU ({'; '.join(reasons)}) but its pod sandbox {sandbox} was "
            "booted without nvproxy, and runsc fixes nvproxy when a sandbox boots",
            _POD_FIX + (_CPU_ONLY if env_only else ""),
        )
        return
    if role.sandbox_nvproxy is None:
        ctx.warn(
            f"cannot tell whether pod sandbox {sandbox} booted with nvproxy; "
            "if it did not, this container gets no working GPU"
        )
    _enable(ctx, reasons)


def decide(ctx: Context) -> None:
    """GPU or not, which rule fired, and the mode that picks the next steps."""
    reasons, env_only = _wants(ctx)
    if ctx.config.nvproxy == "never":
        _decide_never(ctx, reasons, env_only)
    elif ctx.role.kind == "member":
        _decide_member(ctx, reasons, env_only)
    elif ctx.config.nvproxy == "always":
        _enable(ctx, ["policy nvproxy = always", *reasons])
    elif reasons:
        _enable(ctx, reasons)
    elif ctx.role.kind == "sandbox":
        ctx.reasons = [f"pod sandbox without {POD_ANNOTATION}=true or a GPU fact"]
        ctx.note("decide", "nvproxy off for the whole pod: GPU containers in it will be refused")
    else:
        ctx.reasons = ["no GPU signal in the spec"]
