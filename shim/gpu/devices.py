"""Which device nodes are NVIDIA GPU nodes that nvproxy can serve.

nvproxy registers exactly three kinds of node (gVisor
pkg/sentry/devices/nvproxy): /dev/nvidiactl, /dev/nvidia-uvm and /dev/nvidiaN
with the NVIDIA major 195. Everything else under /dev/nvidia* (modeset,
uvm-tools, caps, nvswitch, fs) and the DRM nodes that CDI adds per GPU are not
mounted by the gofer, so the planner drops them from GPU containers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CTL",
    "NVIDIA_MAJOR",
    "UVM",
    "default_numbers",
    "entry_numbers",
    "is_gpu_node",
    "is_mig_node",
    "is_nvidia_related",
]

NVIDIA_MAJOR = 195
CTL = "/dev/nvidiactl"
UVM = "/dev/nvidia-uvm"
_GPU = re.compile(r"/dev/nvidia(\d+)")
# nvidia-modprobe creates nvidiactl as 195:255 and /dev/nvidiaN as 195:N; the
# uvm major is allocated at load time, so it has no default.
_CTL_MINOR = 255
_MIG_PREFIX = "/dev/nvidia-caps/"


def default_numbers(path: str) -> tuple[int, int] | None:
    """The numbers a node has on every NVIDIA host, when they are fixed."""
    if path == CTL:
        return NVIDIA_MAJOR, _CTL_MINOR
    match = _GPU.fullmatch(path)
    if match:
        return NVIDIA_MAJOR, int(match.group(1))
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def entry_numbers(
    entry: Mapping[str, Any], host_nodes: Mapping[str, tuple[int, int]], host_path: str
) -> tuple[int | None, int | None]:
    """(major, minor) of a spec or CDI node: as written, else the host's node,
    else the fixed NVIDIA numbering; None where nothing says."""
    major, minor = _int(entry.get("major")), _int(entry.get("minor"))
    fallback = host_nodes.get(host_path) or default_numbers(str(entry.get("path", "")))
    if fallback is not None:
        major = fallback[0] if major is None else major
        minor = fallback[1] if minor is None else minor
    return major, minor


def is_gpu_node(path: str, major: int | None) -> bool:
    """Exact: nvidia-uvm by path (its major is dynamic), nvidiactl and nvidiaN
    only with major 195 (or none given)."""
    if path == UVM:
        return True
    return (path == CTL or bool(_GPU.fullmatch(path))) and major in (None, NVIDIA_MAJOR)


def is_nvidia_related(path: str) -> bool:
    """Nodes an NVIDIA CDI spec or toolkit may add; DRM nodes come per GPU."""
    return path.startswith("/dev/nvidia") or path.startswith("/dev/dri/")


def is_mig_node(path: str) -> bool:
    """MIG slices reach a container as /dev/nvidia-caps/nvidia-capN nodes."""
    return path.startswith(_MIG_PREFIX)
