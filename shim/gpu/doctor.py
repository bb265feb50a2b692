"""Host checks for the ``doctor`` command, as pure functions over ``HostFacts``.

Each check returns rows (check, ok, detail, fix). The command gathers the facts,
adds the checks only it can make (containerd's config, a bounded trial run of
the platform) and prints one table; any failing row makes it exit non-zero.

Whether a GPU container would be accepted (driver supported, platform usable
with nvproxy, flags present) is not re-derived here: :func:`gpu_container`
plans one through :func:`shim.gpu.plan.plan`, so doctor and Create cannot
disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shim.gpu.cdi import known_names
from shim.gpu.config import GpuConfig
from shim.gpu.devices import CTL, NVIDIA_MAJOR, UVM
from shim.gpu.facts import (
    LIST_SUPPORTED_DRIVERS,
    NVPROXY_FLAG,
    HostFacts,
    SandboxRole,
    release_name,
)
from shim.gpu.plan import plan

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


# What Create sees for a container that asks for every GPU by device node.
_GPU_SPEC = {"linux": {"devices": [{"path": "/dev/nvidiactl", "type": "c",
                                    "major": NVIDIA_MAJOR, "minor": 255}]}}


def gpu_container(host: HostFacts, config: GpuConfig) -> list[Row]:
    """Would Create accept a GPU container on this host, with this config?"""
    result = plan(_GPU_SPEC, host, config, container_id="doctor",
                  sandbox=SandboxRole.standalone())
    if result.problems:
        return [Row("GPU container", False, cause, fix) for cause, fix in result.problems]
    driver = (config.driver_version and f"ABI {config.driver_version} (forced)") \
        or host.driver_version or "unknown"
    flags = " ".join(f"--{k}={v}" for k, v in result.runsc_flags.items())
    return [Row("GPU container", True, f"driver {driver}; runsc {flags}")]


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
    supported_list,
    gpu_container,
    device_nodes,
    cdi_specs,
)


def check_host(host: HostFacts, config: GpuConfig) -> list[Row]:
    """Every row, in table order."""
    return [row for check in CHECKS for row in check(host, config)]
