"""The GPU part of the runtime configuration, as plain values for plan()."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["GpuConfig", "NvproxyPolicy"]

NvproxyPolicy = Literal["auto", "always", "never"]


@dataclass(frozen=True)
class GpuConfig:
    """What the operator decided; built by ``shim.config`` from the TOML file."""

    # auto: enable nvproxy only for containers/sandboxes that ask for a GPU.
    nvproxy: NvproxyPolicy = "auto"
    # Forces runsc's --nvproxy-driver-version (an ABI-equivalent version, or "latest").
    driver_version: str | None = None
    # Driver capabilities a container may ask for with NVIDIA_DRIVER_CAPABILITIES.
    allowed_capabilities: frozenset[str] = frozenset({"compute", "utility"})
    # CDI spec directories, lowest priority first (a later dir wins on a name clash).
    cdi_dirs: tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")
    # CDI vendors whose devices count as GPU requests.
    cdi_vendors: frozenset[str] = frozenset({"nvidia.com"})
    # runsc platform; None means "the binary's default".
    platform: str | None = None
    # The kind that NVIDIA_VISIBLE_DEVICES ids resolve to ("0" -> nvidia.com/gpu=0),
    # as the toolkit's modes.cdi.default-kind.
    cdi_default_kind: str = "nvidia.com/gpu"
    # Whether NVIDIA_VISIBLE_DEVICES alone (no device, CDI name or hook) asks for
    # GPUs. CUDA images set it to "all" in their image config, so a platform that
    # wants GPUs only through device plugins/CDI turns this off (the toolkit's
    # accept-nvidia-visible-devices-envvar-when-unprivileged).
    accept_visible_devices_env: bool = True
    # The same for an app container of a CRI pod, whose env the pod's author
    # writes (and whose image sets NVIDIA_VISIBLE_DEVICES=all when it is a CUDA
    # image): off, its GPUs come only from what the node allocated.
    accept_visible_devices_env_in_pods: bool = False
    # Whether the pod annotation dev.gvisorgpu.nvproxy=true may boot a pod's
    # sandbox with nvproxy when the kubelet cannot be asked. It grants no
    # device, but nvproxy widens what the sandbox exposes to the host driver,
    # and the annotation is the pod author's to set; with a kubelet, its
    # answer decides and the annotation is never read.
    accept_pod_nvproxy_annotation: bool = False
    # Start on a driver runsc does not list as supported, with runsc's
    # --nvproxy-allow-unsupported-driver (release-20260615.0+); at your own risk.
    allow_unsupported_driver: bool = False
