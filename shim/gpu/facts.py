"""Plain values the planner reads: what the host and the runsc binary offer, and
where in a pod the container sits.

Nothing here does IO. ``shim.gpu.detect`` fills ``HostFacts`` from /proc, /dev and
the CDI directories; the runsc probe (``shim.runsc``) supplies the runsc values as
plain strings and sets, so this package never imports the runsc wrapper.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from shim.gpu.cdi import CdiSpec

__all__ = [
    "ALLOW_UNSUPPORTED_FLAG",
    "CAPS_FLAG",
    "CREATE_CONTAINER_HOOKS",
    "DRIVER_VERSION_FLAG",
    "GRAPHICS_CAP",
    "KVM_WITH_NVPROXY",
    "LEGACY_HOOK_AUTODETECT",
    "LIST_SUPPORTED_DRIVERS",
    "NVPROXY_FLAG",
    "SKIP_NODE_MODIFICATION_HOOK",
    "VIDEO_CAP",
    "HostFacts",
    "RoleKind",
    "SandboxRole",
    "driver_triple",
    "parse_driver_version",
    "release_name",
]

# First upstream release (release-YYYYMMDD.0) with each behaviour, from the
# gVisor history summarised in reference/gvisor-gpu.md §1.1 and §3.
NVPROXY_FLAG = 20230529
LIST_SUPPORTED_DRIVERS = 20231106
# Before this, runsc only honoured the legacy prestart hook with --nvproxy-docker.
LEGACY_HOOK_AUTODETECT = 20240305
DRIVER_VERSION_FLAG = 20240422
CAPS_FLAG = 20240930
GRAPHICS_CAP = 20250106
VIDEO_CAP = 20250113
# Earlier runsc refuses "--nvproxy is incompatible with platform kvm".
KVM_WITH_NVPROXY = 20250326
# Earlier runsc logs "CreateContainer hook skipped" and runs none of them.
CREATE_CONTAINER_HOOKS = 20260520
# runsc in [20260520, 20260601) runs nvidia-cdi-hook disable-device-node-modification,
# which fails inside the gofer (gVisor #13283).
SKIP_NODE_MODIFICATION_HOOK = 20260601
ALLOW_UNSUPPORTED_FLAG = 20260615


def release_name(release: int) -> str:
    """The upstream tag for a release date, as people search for it."""
    return f"release-{release}.0"


RoleKind = Literal["standalone", "sandbox", "member"]


@dataclass(frozen=True)
class SandboxRole:
    """Where the container sits: its own sandbox, a pod's sandbox (pause)
    container, or an app container joining a sandbox that already booted.

    runsc fixes nvproxy when a sandbox boots, so a member can only use a GPU
    when ``sandbox_nvproxy`` is true. ``pod_has_gpus`` is an outside fact about
    the pod (for example from the kubelet) that the pause spec cannot carry.
    """

    kind: RoleKind = "standalone"
    sandbox_id: str | None = None
    # member only: whether the sandbox was booted with nvproxy; None = unknown.
    sandbox_nvproxy: bool | None = None
    # sandbox only: an externally supplied "this pod has GPUs".
    pod_has_gpus: bool | None = None

    @classmethod
    def standalone(cls) -> SandboxRole:
        return cls("standalone")

    @classmethod
    def pod_sandbox(cls, *, pod_has_gpus: bool | None = None) -> SandboxRole:
        return cls("sandbox", pod_has_gpus=pod_has_gpus)

    @classmethod
    def member(cls, sandbox_id: str | None, *, sandbox_nvproxy: bool | None) -> SandboxRole:
        return cls("member", sandbox_id=sandbox_id, sandbox_nvproxy=sandbox_nvproxy)


@dataclass(frozen=True)
class HostFacts:
    """Everything ``plan`` may know about the machine, gathered once elsewhere."""

    # The "Kernel Module" version from /proc/driver/nvidia/version; None = no driver.
    driver_version: str | None = None
    # Character devices present under /dev named nvidia*: path -> (major, minor).
    device_nodes: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    runsc_path: str = "runsc"
    runsc_version: str = ""
    # The release date (20240729 for 0.0~20240729.0); None when it cannot be read.
    runsc_release: int | None = None
    # Global flag names without dashes, as `runsc flags` lists them.
    runsc_flags: frozenset[str] = frozenset()
    runsc_default_platform: str | None = None
    # Platforms named in the -platform help text; None when not known.
    runsc_platforms: frozenset[str] | None = None
    # `runsc nvproxy list-supported-drivers`; None when the binary cannot list them.
    supported_drivers: tuple[str, ...] | None = None
    # Parsed CDI specs, and "path: why" for each file that failed to load.
    cdi_specs: tuple[CdiSpec, ...] = ()
    cdi_errors: tuple[str, ...] = ()

    def runsc_label(self) -> str:
        """How messages name the binary: its path and version."""
        version = self.runsc_version or "version unknown"
        return f"runsc at {self.runsc_path} ({version})"

    def release_before(self, release: int) -> bool | None:
        """Whether this runsc predates ``release``; None when its release is unknown."""
        if self.runsc_release is None:
            return None
        return self.runsc_release < release


_NVRM = re.compile(r"^NVRM version:.*?\s(\d+\.\d+(?:\.\d+)?)\s", re.MULTILINE)


def parse_driver_version(text: str) -> str | None:
    """The kernel module version from /proc/driver/nvidia/version.

    The first line reads like "NVRM version: NVIDIA UNIX x86_64 Kernel Module
    550.54.15  Tue Mar ..." (or "... Open Kernel Module for x86_64  550.54.15 ...").
    """
    match = _NVRM.search(text + " ")
    return match.group(1) if match else None


def driver_triple(version: str) -> tuple[int, int, int] | None:
    """``570.172.08`` -> (570, 172, 8). runsc pads parts with zeros and matches
    exactly, so comparing integers makes ``08`` and ``8`` the same driver."""
    parts = version.strip().split(".")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        return None
    numbers = [int(p) for p in parts] + [0] * (3 - len(parts))
    return numbers[0], numbers[1], numbers[2]
