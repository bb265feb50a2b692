"""Steps that take away, from a CRI pod's specs, the GPU switches the pod's
author could set and runsc would act on by itself, whatever the shim decided.

runsc reads two of them on its own (gvisor-gpu.md §2.1, §2.4): the annotation
``dev.gvisor.internal.nvproxy`` turns nvproxy on for a sandbox, and an NVIDIA
hook (from containerd's base spec, an NRI plugin or a CDI spec) together with
``NVIDIA_VISIBLE_DEVICES`` makes runsc run ``nvidia-container-cli`` for the
GPUs that variable names. Both values reach a pod's spec from the pod author
(pod annotations forwarded by containerd, the container's env or image), so
in a pod the shim removes the annotation and sets the variable to ``void``
when it is not trusted. A standalone container's spec is left as it is.
"""

from __future__ import annotations

from shim.gpu import _oci as oci
from shim.gpu._context import Context
from shim.gpu._decide import env_trusted
from shim.gpu.keys import key
from shim.gpu.request import RUNSC_ANNOTATION, VISIBLE_ENV

__all__ = ["drop_pod_runsc_annotation", "void_untrusted_visible_devices"]

# runsc's annotation, and its name in release-20231016.0 and 20231023.0.
_RUNSC_SWITCHES = (RUNSC_ANNOTATION, "dev.gvisor.spec.nvproxy")


def drop_pod_runsc_annotation(ctx: Context) -> None:
    if not ctx.role.in_pod:
        return
    removed = [k for k in _RUNSC_SWITCHES if oci.remove_annotation(ctx.spec, k)]
    if removed:
        ctx.note(
            "drop_pod_runsc_annotation",
            f"removed annotation {', '.join(removed)}: in a pod the shim decides nvproxy "
            "(runsc would turn it on for the pod's author)",
        )


def void_untrusted_visible_devices(ctx: Context) -> None:
    req = ctx.request
    if not ctx.role.in_pod or env_trusted(ctx) or not req.visible.asks:
        return
    if not (req.legacy_hook or req.cdi_hook):
        return
    if oci.set_env(ctx.spec, VISIBLE_ENV, "void"):
        ctx.note(
            "void_untrusted_visible_devices",
            f"set {VISIBLE_ENV}=void: with an NVIDIA hook in the spec runsc would expose the "
            "GPUs it names, and it is the pod author's "
            f"({key('accept_visible_devices_env_in_pods')} is off)",
        )
