"""The GPU host the plan, refusal, property and report tests start from.

HOST is a machine with driver 550.90.07, two GPUs, Debian's runsc 0.0~20240729
and the CDI specs under tests/fixtures/cdi. Tests derive their variants from it
with dataclasses.replace, so each variant names only what it changes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from shim.gpu.detect import load_cdi_specs
from shim.gpu.facts import HostFacts, SandboxRole
from shim.kube.pod import pod_role

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cdi"
SPECS = load_cdi_specs([str(FIXTURES / "etc"), str(FIXTURES / "run")])[0]
# `runsc nvproxy list-supported-drivers` of the Debian 0.0~20240729 build.
DRIVERS_20240729 = (
    "535.104.12",
    "535.129.03",
    "535.154.05",
    "535.161.07",
    "550.54.14",
    "550.54.15",
    "550.90.07",
)
NODES = {
    "/dev/nvidiactl": (195, 255),
    "/dev/nvidia0": (195, 0),
    "/dev/nvidia1": (195, 1),
    "/dev/nvidia-uvm": (508, 0),
    "/dev/nvidia-uvm-tools": (508, 1),
    "/dev/nvidia-modeset": (195, 254),
}
HOST = HostFacts(
    driver_version="550.90.07",
    device_nodes=NODES,
    runsc_path="/usr/bin/runsc",
    runsc_version="0.0~20240729.0",
    runsc_release=20240729,
    # The nvproxy-related and platform flags the Debian 0.0~20240729 build lists.
    runsc_flags=frozenset({"nvproxy", "nvproxy-docker", "nvproxy-driver-version", "platform"}),
    runsc_default_platform="systrap",
    runsc_platforms=frozenset({"systrap", "ptrace", "kvm"}),
    supported_drivers=DRIVERS_20240729,
    cdi_specs=SPECS,
)
# A fictional later release that has both flags 20240729 lacks.
RUNSC_2026 = dataclasses.replace(
    HOST,
    runsc_version="release-20260817.0",
    runsc_release=20260817,
    runsc_flags=HOST.runsc_flags
    | {"nvproxy-allowed-driver-capabilities", "nvproxy-allow-unsupported-driver"},
)



def role_of(spec: dict[str, Any]) -> SandboxRole:
    """The role Create gives a spec from its CRI annotations alone (an app
    container's sandbox unknown), as the ``plan`` command's dry run does."""
    role = pod_role(spec.get("annotations") or {})
    if role.kind == "sandbox":
        return SandboxRole.pod_sandbox()
    if role.kind == "member":
        return SandboxRole.member(role.sandbox_id, sandbox_nvproxy=None)
    return SandboxRole.standalone()
