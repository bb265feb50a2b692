"""The first two steps: read the signals, then decide GPU or not and pick the
mode that chooses the rest of the pipeline.

The decision is per sandbox (gvisor-gpu.md §2.5): runsc fixes nvproxy when a
sandbox boots, so a pod's sandbox container decides for the whole pod, and an
app container can only use a GPU when its sandbox booted with nvproxy.

Who may ask for what (shim/gpu/TRUST.md). A standalone container's caller is root
on the node: every signal in its spec counts. In a CRI pod, annotations and
env are the pod author's: a pod's sandbox decides from policy and the
kubelet's allocation (the ``dev.gvisorgpu.nvproxy`` annotation only when the
operator opts in and no kubelet answered); an app container is granted what
the node put in its spec (device nodes, CDI requests in container-level
annotations), never what a pod annotation asks for, and
``NVIDIA_VISIBLE_DEVICES`` only when the operator opts in.
"""

from __future__ import annotations

from shim.gpu._context import Context, Mode
from shim.gpu.keys import key
from shim.gpu.request import POD_ANNOTATION, RUNSC_ANNOTATION, VISIBLE_ENV, PodLevel, read_request

__all__ = ["decide", "detect", "env_trusted"]

_POD_FIX = (
    "request the GPU in the pod spec (resources.limits nvidia.com/gpu, or a DRA claim) so that "
    "the kubelet allocates it, and recreate the pod: its sandbox boots with nvproxy when the "
    "kubelet reports GPUs for it; on a node without a kubelet, use a runtime handler whose shim "
    f'config says nvproxy = "always", or set {key("accept_pod_nvproxy_annotation")} = true and '
    f'annotate the pod {POD_ANNOTATION}: "true"'
)
_CPU_ONLY = f"; to run it without a GPU set {VISIBLE_ENV}=void"
_SANDBOX_SIGNAL = (
    "ignored in a pod's sandbox container: it gets no device, and the pod's GPUs come from "
    "the kubelet's allocation"
)


def _all(key: str, value: str) -> bool:
    return True


def _pod_level(ctx: Context) -> PodLevel | None:
    """Which CDI annotations came from the pod (its author) rather than the
    container; None when every one counts."""
    role = ctx.role
    if role.kind == "sandbox":
        # containerd copies only pod annotations into the sandbox's spec.
        return _all
    if role.kind != "member":
        return None
    if role.pod_annotations is None:
        ctx.note(
            "trust",
            "the pod's own annotations are not known here, so CDI annotations cannot be told "
            "apart from the pod's; Create knows them from the pod's sandbox container",
        )
        return None
    pod = frozenset(role.pod_annotations)
    return lambda k, v: (k, v) in pod


def detect(ctx: Context) -> None:
    """Read every GPU signal; malformed input is refused whatever the policy."""
    pod_level = _pod_level(ctx)
    if pod_level is None:
        req = read_request(ctx.spec, ctx.host.device_nodes, ctx.config)
    else:
        req = read_request(ctx.spec, ctx.host.device_nodes, ctx.config, pod_level=pod_level)
    ctx.request = req
    env_ignored = ctx.role.in_pod and not env_trusted(ctx)
    for cause, fix in req.errors:
        if env_ignored and (cause, fix) in req.env_errors:
            ctx.ignore(f"{cause}: ignored with the rest of {VISIBLE_ENV} in a pod")
        else:
            ctx.refuse(cause, fix, bad_input=True)
    for line in req.pod_level:
        ctx.ignore(f"{line}: a pod annotation, written by the pod's author, grants no device")
    for extra in req.foreign_cdi:
        ctx.note(
            "detect",
            f"annotation {extra.source} requests {extra.name}: vendor {extra.name.vendor} is "
            f"not in {key('cdi_vendors')}, so it is left to containerd",
        )


def env_trusted(ctx: Context) -> bool:
    """Whether NVIDIA_VISIBLE_DEVICES may choose GPUs (with a hook, or alone)."""
    if ctx.role.in_pod:
        return ctx.config.accept_visible_devices_env_in_pods
    return True


def _env_key(ctx: Context) -> str:
    if ctx.role.in_pod:
        return key("accept_visible_devices_env_in_pods")
    return key("accept_visible_devices_env")


def _sandbox_wants(ctx: Context) -> list[str]:
    """A pod's sandbox (pause) container: the kubelet, or the opted-in annotation."""
    req, role = ctx.request, ctx.role
    for signal in (*req.node_reasons, req.hook_reason, req.env_reason):
        if signal:
            ctx.ignore(f"{signal}: {_SANDBOX_SIGNAL}")
    if role.pod_has_gpus:
        return [f"the kubelet allocated GPUs to the pod ({role.kubelet or 'PodResources'})"]
    if not req.pod_annotation:
        return []
    annotation = f"annotation {POD_ANNOTATION}=true"
    opt_in = key("accept_pod_nvproxy_annotation")
    if role.pod_has_gpus is False:
        ctx.ignore(f"{annotation}: the kubelet answered, and it allocated no GPU to this pod")
    elif not ctx.config.accept_pod_nvproxy_annotation:
        ctx.ignore(f"{annotation}: pod annotations are the pod author's, and {opt_in} is off")
    else:
        return [f"{annotation} ({opt_in} = true; no kubelet answer: "
                f"{role.kubelet or 'not asked'})"]
    return []


def _wants(ctx: Context) -> tuple[list[str], bool]:
    """The reasons this container (or sandbox) wants nvproxy, and whether the
    only one is NVIDIA_VISIBLE_DEVICES by itself."""
    req = ctx.request
    if ctx.role.kind == "sandbox":
        reasons = _sandbox_wants(ctx)
        if req.runsc_annotation:
            ctx.ignore(f"annotation {RUNSC_ANNOTATION}=true: {_SANDBOX_SIGNAL}")
        return reasons, False
    pod = ctx.role.in_pod
    reasons = req.node_reasons if pod else req.explicit_reasons
    if not pod and req.pod_annotation:
        # ctr's caller is root: our annotation is a plain "nvproxy on" for it.
        reasons.append(f"annotation {POD_ANNOTATION}=true")
    if pod and req.runsc_annotation:
        ctx.ignore(f"annotation {RUNSC_ANNOTATION}=true: the pod's sandbox decides nvproxy")
    if pod and req.hook_reason and not env_trusted(ctx):
        ctx.ignore(f"{req.hook_reason}: {VISIBLE_ENV} is the pod author's, and {_env_key(ctx)} "
                   "is off")
    elif pod and req.hook_reason:
        reasons.append(req.hook_reason)
    env_only = False
    alone_ok = ctx.config.accept_visible_devices_env_in_pods if pod else (
        ctx.config.accept_visible_devices_env)
    if req.env_reason and not alone_ok:
        text = f"{req.env_reason} ignored: {_env_key(ctx)} is off"
        if pod:
            ctx.ignore(text)
        else:
            ctx.note("decide", text)
    elif req.env_reason:
        reasons.append(req.env_reason)
        env_only = len(reasons) == 1
    return reasons, env_only


def _mode(ctx: Context) -> Mode:
    req = ctx.request
    if ctx.role.kind == "sandbox":
        return "driver"
    if req.gpu_nodes or req.cdi:
        return "cdi"
    if not env_trusted(ctx):
        return "driver"
    env_asks = req.visible.kind in ("all", "list")
    if req.legacy_hook and (env_asks or req.visible.kind == "none"):
        # With a CDI spec for GPUs on the host, exact device nodes beat runsc
        # running nvidia-container-cli (the toolkit removes this hook in cdi mode).
        has_spec = any(s.kind == ctx.config.cdi_default_kind for s in ctx.host.cdi_specs)
        return "cdi" if env_asks and has_spec else "hook"
    alone_ok = ctx.config.accept_visible_devices_env_in_pods if ctx.role.in_pod else (
        ctx.config.accept_visible_devices_env)
    if env_asks and (req.cdi_hook or alone_ok):
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
        ctx.reasons = ["pod sandbox without a kubelet GPU allocation"]
        ctx.note("decide", "nvproxy off for the whole pod: GPU containers in it will be refused")
    else:
        ctx.reasons = ["no GPU signal in the spec"]
