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

from shim.gpu._bound import listing
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
    "Allocation",
    "GpuInfo",
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
class Allocation:
    """What the kubelet allocated to one container of a pod (PodResources API).

    ``device_ids`` are device-plugin ids of GPU resources (NVIDIA's plugin
    uses GPU UUIDs or indexes, GKE's ``nvidiaN``); ``cdi_names`` are the fully
    qualified CDI names of DRA devices. ``unknown`` says why the kubelet
    answered but this container's share cannot be told (its name is missing,
    say): then the planner grants it no GPU rather than guess.
    """

    pod: str
    container: str
    device_ids: tuple[str, ...] = ()
    cdi_names: tuple[str, ...] = ()
    unknown: str | None = None

    def describe(self) -> str:
        got = [*self.device_ids, *self.cdi_names]
        what = listing(got, 8) if got else "no GPU"
        return f"the kubelet allocated {what} to container {self.container} of pod {self.pod}"


@dataclass(frozen=True)
class SandboxRole:
    """Where the container sits: its own sandbox, a pod's sandbox (pause)
    container, or an app container joining a sandbox that already booted.

    runsc fixes nvproxy when a sandbox boots, so a member can only use a GPU
    when ``sandbox_nvproxy`` is true. The other fields are what the node (not
    the pod's author) says about the pod, gathered by the caller: the kubelet's
    answers and the annotations the pod's sandbox container carried.
    """

    kind: RoleKind = "standalone"
    sandbox_id: str | None = None
    # member only: whether the sandbox was booted with nvproxy; None = unknown.
    sandbox_nvproxy: bool | None = None
    # sandbox only: whether the kubelet allocated GPUs to the pod; None = not asked
    # or no answer.
    pod_has_gpus: bool | None = None
    # member only: the kubelet's allocation for this container; None = not asked
    # or no answer (then the grant is not cross-checked, and a note says so).
    allocation: Allocation | None = None
    # member only: the pod-level annotations, as the pod's sandbox container
    # carried them; None = not known. A member's annotation with the same key
    # and value came from the pod, i.e. from the pod's author.
    pod_annotations: tuple[tuple[str, str], ...] | None = None
    # What the kubelet lookup said or why there was none, for notes.
    kubelet: str = ""

    @classmethod
    def standalone(cls) -> SandboxRole:
        return cls("standalone")

    @classmethod
    def pod_sandbox(cls, *, pod_has_gpus: bool | None = None, kubelet: str = "") -> SandboxRole:
        return cls("sandbox", pod_has_gpus=pod_has_gpus, kubelet=kubelet)

    @classmethod
    def member(
        cls,
        sandbox_id: str | None,
        *,
        sandbox_nvproxy: bool | None,
        allocation: Allocation | None = None,
        pod_annotations: tuple[tuple[str, str], ...] | None = None,
        kubelet: str = "",
    ) -> SandboxRole:
        return cls(
            "member",
            sandbox_id=sandbox_id,
            sandbox_nvproxy=sandbox_nvproxy,
            allocation=allocation,
            pod_annotations=pod_annotations,
            kubelet=kubelet,
        )

    @property
    def in_pod(self) -> bool:
        """A CRI pod's container: its annotations and env are the pod author's."""
        return self.kind != "standalone"


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as the driver lists it under /proc/driver/nvidia/gpus/<bus>."""

    bus: str
    minor: int
    uuid: str | None = None


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
    # The driver's GPUs with their device minor and UUID; empty when unknown.
    gpus: tuple[GpuInfo, ...] = ()

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
