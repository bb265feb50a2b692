"""The runtime configuration as data: what the operator decided, validated.

Built by ``shim.config.parse`` from a TOML file in the shape of gVisor's
runsc.toml, or by ``shim.config.options`` from what containerd sends. Nothing
here knows runsc's command line: ``shim.task.runsc_options`` turns a config,
the probed binary and a GPU plan into runsc's global flags.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from shim.gpu.config import GpuConfig

__all__ = [
    "DEFAULT_ROOT",
    "DRIVER_CAPABILITIES",
    "LOG_LEVELS",
    "NETWORK_MODES",
    "PLATFORMS",
    "SECCOMP_MODES",
    "Network",
    "NetworkMode",
    "RuntimeConfig",
    "SeccompMode",
    "resolve_network",
]

NetworkMode = Literal["auto", "none", "host", "sandbox"]
# What to do with a container's seccomp profile: runsc enforces it inside the
# sandbox only with --oci-seccomp; "warn" runs without it and says so.
SeccompMode = Literal["enforce", "warn"]
SECCOMP_MODES: tuple[SeccompMode, ...] = ("enforce", "warn")
# What runsc's --network takes; "auto" is resolved per sandbox.
Network = Literal["none", "host", "sandbox"]
NETWORK_MODES: tuple[NetworkMode, ...] = ("auto", "none", "host", "sandbox")
DEFAULT_ROOT = "/run/containerd/runsc"
LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal", "panic")
PLATFORMS = ("systrap", "ptrace", "kvm")
# NVIDIA_DRIVER_CAPABILITIES values (nvidia-container-toolkit) plus "all".
DRIVER_CAPABILITIES = ("compute", "utility", "graphics", "video", "display", "compat32",
                       "ngx", "all")


@dataclass(frozen=True)
class RuntimeConfig:
    """Everything the operator decided, validated; defaults when nothing was sent."""

    binary_name: str = "runsc"  # bare names are looked up on PATH (runsc.resolve_binary)
    root: str = DEFAULT_ROOT  # the caller appends /<containerd namespace>
    log_level: str = "info"
    log_path: str | None = None  # shim log; %ID% expands, a trailing "/" means a directory
    debug: bool = False  # runsc --debug
    debug_log: str | None = None  # runsc --debug-log
    network: NetworkMode = "auto"
    seccomp: SeccompMode = "enforce"
    platform: str | None = None  # None: the binary's default
    runsc_config: Mapping[str, str] = field(default_factory=dict)  # other global flags
    gpu: GpuConfig = field(default_factory=GpuConfig)
    # The kubelet's PodResources socket, asked which GPUs a pod was given.
    pod_resources_socket: str = "/var/lib/kubelet/pod-resources/kubelet.sock"
    source: str = "<defaults>"
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def runsc_root(self, namespace: str) -> str:
        return os.path.join(self.root, namespace)

    def shim_log_path(self, container_id: str) -> str | None:
        if self.log_path is None:
            return None
        path = self.log_path.replace("%ID%", container_id)
        return os.path.join(path, f"gvisorgpu-shim-{container_id}.log") if path.endswith(
            "/") else path


def resolve_network(mode: NetworkMode, spec: Mapping[str, Any]) -> Network:
    """``auto``: follow the OCI spec's network namespace.

    No network namespace → the host's (``host``); a namespace given by path
    (CNI, a pod) → runsc's own stack inside it (``sandbox``); a fresh empty
    namespace → ``none``, which gives the same loopback-only view without
    runsc's root-netns check, which misfires on some kernels (DESIGN.md).
    Resolve it once from the sandbox's spec and reuse it for its containers.
    """
    if mode != "auto":
        return mode
    namespaces = (spec.get("linux") or {}).get("namespaces") or []
    netns = next((ns for ns in namespaces if ns.get("type") == "network"), None)
    if netns is None:
        return "host"
    return "sandbox" if netns.get("path") else "none"
