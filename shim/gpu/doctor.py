"""Host checks for the ``doctor`` command, as pure functions over ``HostFacts``.

Each check returns rows (check, ok, detail, fix). The command gathers the facts,
adds the checks only it can make (containerd's config, a bounded trial run of
the platform) and prints one table; any failing row makes it exit non-zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shim.gpu.cdi import known_names
from shim.gpu.config import GpuConfig
from shim.gpu.devices import CTL, NVIDIA_MAJOR, UVM
from shim.gpu.facts import (
    KVM_WITH_NVPROXY,
    LIST_SUPPORTED_DRIVERS,
    NVPROXY_FLAG,
    HostFacts,
    driver_triple,
    release_name,
)
from shim.gpu.keys import key

__all__ = ["CHECKS", "Row", "check_host"]


@dataclass(frozen=True)
class Row:
    check: str
    ok: bool
    detail: str
    fix: str = ""


Check = Callable[[HostFacts, GpuConfig], list[Row]]


def runsc_found(host: HostFacts, config: GpuConfig) -> list[Row]:
    if host.runsc_version:
        return [Row("runsc", True, f"{host.runsc_path}, {host.runsc_version}")]
    return [
        Row(
            "runsc",
            False,
            f"{host.runsc_path} did not report a version",
            "install runsc and set binary_name in the shim config to its path",
        )
    ]


def runsc_nvproxy(host: HostFacts, config: GpuConfig) -> list[Row]:
    if "nvproxy" in host.runsc_flags:
        return [Row("runsc --nvproxy", True, "flag present")]
    return [
        Row(
            "runsc --nvproxy",
            False,
            f"{host.runsc_label()} has no --nvproxy",
            f"install runsc {release_name(NVPROXY_FLAG)} or newer",
        )
    ]


def runsc_platform(host: HostFacts, config: GpuConfig) -> list[Row]:
    platform = config.platform or host.runsc_default_platform or "unknown"
    known = host.runsc_platforms
    if known is not None and platform not in known:
        return [
            Row(
                "platform",
                False,
                f"{platform} is not one of {', '.join(sorted(known))}",
                f"set {key('platform')} in the shim config to one of those",
            )
        ]
    if platform == "kvm" and host.release_before(KVM_WITH_NVPROXY):
        return [
            Row(
                "platform",
                False,
                f"kvm with nvproxy needs runsc {release_name(KVM_WITH_NVPROXY)}+",
                f'set {key("platform")} = "systrap"',
            )
        ]
    return [Row("platform", True, f"{platform} (default {host.runsc_default_platform})")]


def supported_list(host: HostFacts, config: GpuConfig) -> list[Row]:
    if host.supported_drivers is None:
        return [
            Row(
                "runsc supported drivers",
                False,
                "runsc cannot list them",
                f"install runsc {release_name(LIST_SUPPORTED_DRIVERS)} or newer",
            )
        ]
    return [Row("runsc supported drivers", True, ", ".join(host.supported_drivers) or "none")]


def driver(host: HostFacts, config: GpuConfig) -> list[Row]:
    if config.driver_version:
        return [
            Row(
                "NVIDIA driver",
                True,
                f"ABI {config.driver_version} forced by {key('driver_version')}",
            )
        ]
    if host.driver_version is None:
        return [
            Row(
                "NVIDIA driver",
                False,
                "/proc/driver/nvidia/version is missing",
                "install and load the NVIDIA driver",
            )
        ]
    supported = {driver_triple(s) for s in host.supported_drivers or ()}
    if host.supported_drivers is None or driver_triple(host.driver_version) in supported:
        return [Row("NVIDIA driver", True, host.driver_version)]
    allowed = config.allow_unsupported_driver and (
        "nvproxy-allow-unsupported-driver" in host.runsc_flags
    )
    return [
        Row(
            "NVIDIA driver",
            allowed,
            f"{host.driver_version} is not supported by this runsc",
            ""
            if allowed
            else f"install a driver runsc lists, or set {key('driver_version')} "
            "to an ABI-identical supported version",
        )
    ]


def _node(path: str, host: HostFacts) -> Row:
    if path in host.device_nodes:
        major, minor = host.device_nodes[path]
        return Row(path, True, f"{major}:{minor}")
    return Row(path, False, "missing", "load the driver (nvidia-modprobe creates it)")


def device_nodes(host: HostFacts, config: GpuConfig) -> list[Row]:
    gpus = sorted(
        path
        for path, (major, _) in host.device_nodes.items()
        if path[len("/dev/nvidia") :].isdigit() and major == NVIDIA_MAJOR
    )
    if gpus:
        found = Row("GPU device nodes", True, ", ".join(gpus))
    else:
        found = Row(
            "GPU device nodes",
            False,
            "no /dev/nvidiaN with major 195",
            "check that the driver sees the GPU (nvidia-smi)",
        )
    return [_node(CTL, host), _node(UVM, host), found]


def cdi_specs(host: HostFacts, config: GpuConfig) -> list[Row]:
    rows = [Row("CDI spec", False, err, "fix or regenerate the file") for err in host.cdi_errors]
    kind = config.cdi_default_kind
    names = known_names(kind, host.cdi_specs)
    detail = f"{kind}: {', '.join(names)}" if names else f"no spec defines {kind}"
    fix = "" if names else "generate one: nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml"
    rows.append(Row("CDI devices", bool(names), detail, fix))
    return rows


CHECKS: tuple[Check, ...] = (
    runsc_found,
    runsc_nvproxy,
    runsc_platform,
    supported_list,
    driver,
    device_nodes,
    cdi_specs,
)


def check_host(host: HostFacts, config: GpuConfig) -> list[Row]:
    """Every row, in table order."""
    return [row for check in CHECKS for row in check(host, config)]
