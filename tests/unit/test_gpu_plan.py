"""plan(): detection, whole-spec rewrites and runsc flags, as tables.

Hosts are gpu_hosts.HOST (driver 550.90.07, runsc 0.0~20240729, the CDI fixtures)
and variants of it. Nothing touches the machine's /dev or /proc.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from shim.gpu._edits import apply_edits
from shim.gpu.cdi import parse_qualified_name, resolve
from shim.gpu.config import GpuConfig
from shim.gpu.facts import HostFacts, SandboxRole
from shim.gpu.plan import PIPELINES, plan
from tests.unit import gpu_hosts
from tests.unit.gpu_hosts import HOST, SPECS, role_of

# A fictional first nvproxy release: ptrace default, no driver list.
RUNSC_2023 = dataclasses.replace(
    HOST,
    runsc_version="0.0~20230529.0",
    runsc_release=20230529,
    runsc_flags=frozenset({"nvproxy", "nvproxy-docker", "platform"}),
    runsc_default_platform="ptrace",
    supported_drivers=None,
)
# The fictional 2026 release, on a host with a driver only it supports.
RUNSC_2026 = dataclasses.replace(
    gpu_hosts.RUNSC_2026,
    supported_drivers=("570.172.08", "580.65.06"),
    driver_version="570.172.08",
)
NO_CDI_HOST = dataclasses.replace(HOST, cdi_specs=())
CONFIG = GpuConfig()
GRAPHICS_OK = GpuConfig(allowed_capabilities=frozenset({"compute", "utility", "graphics"}))
LEGACY_HOOK = {
    "path": "/usr/bin/nvidia-container-runtime-hook",
    "args": ["nvidia-container-runtime-hook", "prestart"],
}
LDCACHE_HOOK = {
    "path": "/usr/bin/nvidia-cdi-hook",
    "args": ["nvidia-cdi-hook", "update-ldcache", "--folder", "/usr/lib/x86_64-linux-gnu"],
}
BIND = ["ro", "nosuid", "nodev", "bind"]
LIB = "/usr/lib/x86_64-linux-gnu/libcuda.so.550.90.07"
LIB_MOUNT = {"destination": LIB, "type": "bind", "source": LIB, "options": BIND}


def dev(path: str, major: int, minor: int) -> dict[str, Any]:
    return {"path": path, "type": "c", "major": major, "minor": minor}


def allow(major: int, minor: int) -> dict[str, Any]:
    return {"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}


def mount(path: str, *extra: str) -> dict[str, Any]:
    return {"destination": path, "source": path, "type": "bind", "options": [*BIND, *extra]}


CTL, UVM, GPU0, GPU1 = (
    dev("/dev/nvidiactl", 195, 255),
    dev("/dev/nvidia-uvm", 508, 0),
    dev("/dev/nvidia0", 195, 0),
    dev("/dev/nvidia1", 195, 1),
)


def run(
    spec: dict[str, Any], host: HostFacts = HOST, config: GpuConfig = CONFIG, **kw: Any
) -> Any:
    kw.setdefault("sandbox", role_of(spec))
    return plan(spec, host, config, container_id="ctr-1", **kw)


# --- detection -------------------------------------------------------------


def devs(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"linux": {"devices": list(entries)}}


def visible(*values: str, hook: tuple[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"process": {"env": [f"NVIDIA_VISIBLE_DEVICES={v}" for v in values]}}
    if hook:
        spec["hooks"] = {hook[0]: [hook[1]]}
    return spec


def ann(key: str, value: str) -> dict[str, Any]:
    return {"annotations": {key: value}}


PRE, CC = ("prestart", LEGACY_HOOK), ("createContainer", LDCACHE_HOOK)
OFF, CDI, HOOK, DRIVER = (False, "none"), (True, "cdi"), (True, "hook"), (True, "driver")
DETECTION = [
    ("empty spec", {}, {}, OFF, "no GPU signal"),
    ("nvidiactl", devs({"path": "/dev/nvidiactl"}), {}, CDI, "/dev/nvidiactl"),
    ("nvidiactl, wrong major", devs(dev("/dev/nvidiactl", 1, 3)), {}, OFF, "no GPU"),
    ("nvidia-uvm", devs(UVM), {}, CDI, "/dev/nvidia-uvm"),
    ("nvidia0 major 195", devs(GPU0), {}, CDI, "/dev/nvidia0"),
    ("nvidia0 major 10", devs(dev("/dev/nvidia0", 10, 0)), {}, OFF, "no GPU"),
    ("modeset only", devs(dev("/dev/nvidia-modeset", 195, 254)), {}, OFF, "no GPU"),
    ("CDI annotation", ann("cdi.k8s.io/a", "nvidia.com/gpu=0"), {}, CDI, "nvidia.com/gpu=0"),
    ("CDI key without slash", ann("cdi.k8s.io", "nvidia.com/gpu=0"), {}, OFF, "no GPU"),
    ("CDI other vendor", ann("cdi.k8s.io/a", "amd.com/gpu=0"), {}, OFF, "no GPU"),
    ("env all", visible("all"), {}, CDI, "=all"),
    ("env indices", visible("0,1"), {}, CDI, "=0,1"),
    ("env uuid", visible("GPU-4f4c8a2e-1b7d-4c3a-9e51-0a6d2b9c7e10"), {}, CDI, "=GPU-4f4c"),
    ("env none", visible("none"), {}, DRIVER, "=none"),
    ("env void", visible("void"), {}, OFF, "no GPU"),
    ("env empty", visible(""), {}, OFF, "no GPU"),
    ("env last wins: void", visible("all", "void"), {}, OFF, "no GPU"),
    ("env last wins: all", visible("void", "all"), {}, CDI, "last of 2"),
    ("env ignored by config", visible("all"), {"accept_visible_devices_env": False}, OFF, "no GPU"),
    ("legacy hook, no CDI spec", visible("0", hook=PRE), {"host": NO_CDI_HOST}, HOOK, "prestart"),
    ("legacy hook + env none", visible("none", hook=PRE), {}, HOOK, "prestart hook"),
    ("legacy hook + env, CDI spec", visible("0", hook=PRE), {}, CDI, "prestart hook"),
    ("legacy hook + void", visible("void", hook=PRE), {}, OFF, "no GPU"),
    ("CDI hook + value before void", visible("1", "void", hook=CC), {}, CDI, "trailing void"),
    ("runsc annotation", ann("dev.gvisor.internal.nvproxy", "true"), {}, DRIVER, "internal"),
    ("pod annotation, standalone", ann("dev.gvisorgpu.nvproxy", "true"), {}, DRIVER, "gvisorgpu"),
    ("policy always", {}, {"nvproxy": "always"}, DRIVER, "policy nvproxy = always"),
    ("policy never", devs(), {"nvproxy": "never"}, OFF, "policy nvproxy = never"),
]


@pytest.mark.parametrize(
    ("description", "spec", "options", "expected", "reason"),
    DETECTION,
    ids=[case[0] for case in DETECTION],
)
def test_detection(
    description: str,
    spec: dict[str, Any],
    options: dict[str, Any],
    expected: tuple[bool, str],
    reason: str,
) -> None:
    host = options.get("host", HOST)
    config = GpuConfig(**{k: v for k, v in options.items() if k != "host"})
    result = run(spec, host, config)
    assert (result.decision.gpu, result.decision.mode) == expected
    assert any(reason in r for r in result.decision.reasons), result.decision.reasons
    assert result.nvproxy is expected[0]
    assert result.refusals == ()


def test_every_mode_has_a_pipeline() -> None:
    assert set(PIPELINES) == {"none", "cdi", "hook", "driver"}
    for mode, steps in PIPELINES.items():
        names = [s.__name__ for s in steps]
        assert "keep_gpu_device_nodes" in names
        assert ("add_nvproxy_flags" in names) is (mode != "none")


# --- rewrites: whole spec in, whole spec out ------------------------------------

RESOLVED_BY_CONTAINERD = {
    "ociVersion": "1.1.0",
    "process": {
        "env": ["PATH=/usr/bin", "NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_VISIBLE_DEVICES=void"]
    },
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        LIB_MOUNT,
        mount("/run/nvidia-persistenced/socket", "noexec"),
    ],
    "hooks": {"createContainer": [LDCACHE_HOOK]},
    "linux": {
        "devices": [
            dev("/dev/nvidia-modeset", 195, 254),
            UVM,
            dev("/dev/nvidia-uvm-tools", 508, 1),
            CTL,
            GPU0,
            dev("/dev/dri/card1", 226, 1),
        ],
        "resources": {
            "devices": [
                {"allow": False, "access": "rwm"},
                allow(195, 254),
                allow(508, 0),
                allow(508, 1),
                allow(195, 255),
                allow(195, 0),
                allow(226, 1),
            ]
        },
    },
}
RESOLVED_PLANNED = {
    "ociVersion": "1.1.0",
    "process": {"env": ["PATH=/usr/bin", "NVIDIA_VISIBLE_DEVICES=void"]},
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}, LIB_MOUNT],
    "linux": {
        "devices": [UVM, CTL, GPU0],
        "resources": {
            "devices": [
                {"allow": False, "access": "rwm"},
                allow(508, 0),
                allow(195, 255),
                allow(195, 0),
            ]
        },
    },
}
ETC_MOUNTS = [
    LIB_MOUNT,
    mount("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.90.07"),
    mount("/usr/bin/nvidia-smi"),
    mount("/usr/bin/nvidia-persistenced"),
]

REWRITES = [
    (
        "containerd resolved: keep GPU nodes, drop the rest, one void",
        RESOLVED_BY_CONTAINERD,
        HOST,
        RESOLVED_PLANNED,
    ),
    (
        "raw CDI annotation resolved from the fixtures (device 1 only in etc/)",
        {
            "process": {"env": ["PATH=/bin"]},
            "annotations": {"cdi.k8s.io/gpu": "nvidia.com/gpu=1"},
            "linux": {},
        },
        HOST,
        {
            "process": {"env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=void"]},
            "annotations": {"cdi.k8s.io/gpu": "nvidia.com/gpu=1"},
            "linux": {
                "devices": [UVM, CTL, GPU1],
                "resources": {"devices": [allow(508, 0), allow(195, 255), allow(195, 1)]},
            },
            "mounts": ETC_MOUNTS,
        },
    ),
    (
        "env index becomes nvidia.com/gpu=0, run/ wins over etc/",
        {"process": {"env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=0"]}, "linux": {}},
        HOST,
        {
            "process": {"env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=void"]},
            "linux": {
                "devices": [CTL, UVM, GPU0],
                "resources": {"devices": [allow(195, 255), allow(508, 0), allow(195, 0)]},
            },
            "mounts": [LIB_MOUNT],
        },
    ),
    (
        "legacy hook with a CDI spec: hook removed, CDI applied",
        {
            "process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]},
            "hooks": {"prestart": [LEGACY_HOOK]},
            "linux": {},
        },
        HOST,
        {
            "process": {"env": ["NVIDIA_VISIBLE_DEVICES=void"]},
            "linux": {
                "devices": [CTL, UVM, GPU0],
                "resources": {"devices": [allow(195, 255), allow(508, 0), allow(195, 0)]},
            },
            "mounts": [LIB_MOUNT],
        },
    ),
    (
        "legacy hook without a CDI spec: runsc's hook path, one env value",
        {
            "process": {"env": ["NVIDIA_VISIBLE_DEVICES=void", "NVIDIA_VISIBLE_DEVICES=0,1"]},
            "hooks": {"prestart": [LEGACY_HOOK]},
            "linux": {"devices": [dev("/dev/nvidia-modeset", 195, 254)]},
        },
        NO_CDI_HOST,
        {
            "process": {"env": ["NVIDIA_VISIBLE_DEVICES=0,1"]},
            "hooks": {"prestart": [LEGACY_HOOK]},
            "linux": {},
        },
    ),
    (
        "no GPU: NVIDIA nodes and their rules go, others stay",
        {
            "linux": {
                "devices": [
                    dev("/dev/fuse", 10, 229),
                    {"path": "/dev/nvidia-modeset"},
                    dev("/dev/nvidia0", 10, 0),
                ],
                "resources": {"devices": [allow(10, 229), allow(10, 0)]},
            }
        },
        HOST,
        {
            "linux": {
                "devices": [dev("/dev/fuse", 10, 229)],
                "resources": {"devices": [allow(10, 229)]},
            }
        },
    ),
    (
        "numbers filled from the host, duplicates dropped",
        {
            "linux": {
                "devices": [
                    {"path": "/dev/nvidiactl"},
                    {"path": "/dev/nvidia0"},
                    {"path": "/dev/nvidia-uvm"},
                    CTL,
                ]
            }
        },
        HOST,
        {"linux": {"devices": [CTL, GPU0, UVM]}},
    ),
    (
        "numbers without host nodes: fixed NVIDIA numbering",
        {"linux": {"devices": [{"path": "/dev/nvidiactl"}, {"path": "/dev/nvidia3", "type": "c"}]}},
        dataclasses.replace(HOST, device_nodes={}),
        {"linux": {"devices": [CTL, dev("/dev/nvidia3", 195, 3)]}},
    ),
]


@pytest.mark.parametrize(
    ("description", "spec", "host", "expected"), REWRITES, ids=[c[0] for c in REWRITES]
)
def test_rewrite(
    description: str, spec: dict[str, Any], host: HostFacts, expected: dict[str, Any]
) -> None:
    before = copy.deepcopy(spec)
    result = run(spec, host)
    assert result.refusals == ()
    assert result.spec == expected
    assert spec == before, "plan must not change its input"
    assert run(result.spec, host).spec == result.spec, "plan must be idempotent"


def _containerd_resolves(spec: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """What containerd's CRI plugin hands over after injecting CDI devices."""
    resolved = copy.deepcopy(spec)
    res = resolve([parse_qualified_name(n) for n in names], SPECS)
    for _, edits in res.edits:
        apply_edits(resolved, edits, HOST.device_nodes)
    return resolved


@pytest.mark.parametrize("names", [["nvidia.com/gpu=0"], ["nvidia.com/gpu=1", "nvidia.com/gpu=0"]])
def test_already_resolved_is_not_injected_twice(names: list[str]) -> None:
    raw = {
        "process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]},
        "annotations": {"cdi.k8s.io/dp": ",".join(names)},
    }
    ours = run(raw).spec
    theirs = run(_containerd_resolves(raw, names)).spec
    assert theirs == ours
    paths = [d["path"] for d in ours["linux"]["devices"]]
    assert len(paths) == len(set(paths))


def test_hook_mode_notes_and_env() -> None:
    spec = {
        "process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]},
        "hooks": {"prestart": [LEGACY_HOOK]},
    }
    result = run(spec, NO_CDI_HOST)
    assert result.decision.mode == "hook"
    assert any("nvidia-container-cli --device=all" in n for n in result.notes)


def test_old_runsc_hooks_dropped_with_warning_new_runsc_keeps_them() -> None:
    spec = {"annotations": {"cdi.k8s.io/a": "nvidia.com/gpu=1"}}
    old = run(spec)
    assert "hooks" not in old.spec
    assert any("skips createContainer hooks before release-20260520.0" in w for w in old.warnings)
    new = run(spec, dataclasses.replace(RUNSC_2026, supported_drivers=None))
    args = [h["args"][1] for h in new.spec["hooks"]["createContainer"]]
    assert args == ["create-symlinks", "update-ldcache", "disable-device-node-modification"]
    mid = run(spec, dataclasses.replace(RUNSC_2026, runsc_release=20260525))
    args = [h["args"][1] for h in mid.spec["hooks"]["createContainer"]]
    assert "disable-device-node-modification" not in args
    assert any("gVisor #13283" in w for w in mid.warnings)


def test_unknown_release_assumes_old_for_hooks() -> None:
    result = run(
        {"annotations": {"cdi.k8s.io/a": "nvidia.com/gpu=1"}},
        dataclasses.replace(HOST, runsc_release=None),
    )
    assert "hooks" not in result.spec
    assert any("release is unknown" in w for w in result.warnings)


def test_missing_host_node_is_a_warning_not_a_refusal() -> None:
    result = run(
        {"linux": {"devices": [CTL, GPU0]}}, dataclasses.replace(HOST, device_nodes={})
    )
    assert result.refusals == ()
    assert any("host has no /dev/nvidiactl, /dev/nvidia0" in w for w in result.warnings)


# --- runsc flags -------------------------------------------------------------------

FLAGS = [
    ("no GPU: nothing", {}, HOST, CONFIG, []),
    ("GPU on 20240729", {"linux": {"devices": [CTL]}}, HOST, CONFIG, ["--nvproxy=true"]),
    (
        "forced driver ABI",
        {"linux": {"devices": [CTL]}},
        HOST,
        GpuConfig(driver_version="550.90.07"),
        ["--nvproxy=true", "--nvproxy-driver-version=550.90.07"],
    ),
    (
        "ptrace default: systrap for GPU work",
        {"linux": {"devices": [CTL]}},
        RUNSC_2023,
        CONFIG,
        ["--nvproxy=true", "--platform=systrap"],
    ),
    (
        "legacy hook before 20240305: nvproxy-docker",
        {"process": {"env": ["NVIDIA_VISIBLE_DEVICES=0"]}, "hooks": {"prestart": [LEGACY_HOOK]}},
        dataclasses.replace(RUNSC_2023, cdi_specs=()),
        CONFIG,
        ["--nvproxy=true", "--nvproxy-docker=true", "--platform=systrap"],
    ),
    (
        "no systrap known: stay on the default",
        {"linux": {"devices": [CTL]}},
        dataclasses.replace(RUNSC_2023, runsc_platforms=frozenset({"ptrace"})),
        CONFIG,
        ["--nvproxy=true"],
    ),
    (
        "config platform for a non-GPU container",
        {},
        HOST,
        GpuConfig(platform="ptrace"),
        ["--platform=ptrace"],
    ),
    (
        "the container's capabilities, on a runsc that has the flag",
        {"process": {"env": ["NVIDIA_DRIVER_CAPABILITIES=graphics,compute"]}, **devs(CTL)},
        RUNSC_2026,
        GRAPHICS_OK,
        ["--nvproxy=true", "--nvproxy-allowed-driver-capabilities=compute,graphics"],
    ),
    (
        "capabilities all: what the config allows",
        {"process": {"env": ["NVIDIA_DRIVER_CAPABILITIES=all"]}, **devs(CTL)},
        RUNSC_2026,
        GRAPHICS_OK,
        ["--nvproxy=true", "--nvproxy-allowed-driver-capabilities=compute,graphics,utility"],
    ),
    (
        "default capabilities: no flag though the config allows more",
        devs(CTL),
        RUNSC_2026,
        GRAPHICS_OK,
        ["--nvproxy=true"],
    ),
    (
        "narrower than runsc's default",
        {"process": {"env": ["NVIDIA_DRIVER_CAPABILITIES=compute"]}, **devs(CTL)},
        RUNSC_2026,
        CONFIG,
        ["--nvproxy=true", "--nvproxy-allowed-driver-capabilities=compute"],
    ),
    (
        "narrower, on a runsc without the flag",
        {"process": {"env": ["NVIDIA_DRIVER_CAPABILITIES=compute"]}, **devs(CTL)},
        HOST,
        CONFIG,
        ["--nvproxy=true"],
    ),
    (
        "unsupported driver allowed on a runsc that has the flag",
        {"linux": {"devices": [CTL]}},
        dataclasses.replace(RUNSC_2026, driver_version="595.71.05"),
        GpuConfig(allow_unsupported_driver=True),
        ["--nvproxy=true", "--nvproxy-allow-unsupported-driver=true"],
    ),
]


@pytest.mark.parametrize(
    ("description", "spec", "host", "config", "args"), FLAGS, ids=[c[0] for c in FLAGS]
)
def test_flags(
    description: str, spec: dict[str, Any], host: HostFacts, config: GpuConfig, args: list[str]
) -> None:
    result = run(spec, host, config)
    assert result.refusals == ()
    assert [f"--{name}={value}" for name, value in result.runsc_flags.items()] == args
    assert set(result.runsc_flags) <= host.runsc_flags, "never a flag the binary lacks"


def test_warnings_that_are_not_refusals() -> None:
    ptrace = run({"linux": {"devices": [CTL]}}, config=GpuConfig(platform="ptrace"))
    assert any("systrap is the tested" in w for w in ptrace.warnings)
    kvm = run({"linux": {"devices": [CTL]}}, RUNSC_2026, GpuConfig(platform="kvm"))
    assert kvm.refusals == () and any("cudaMallocManaged" in w for w in kvm.warnings)
    no_list = run({"linux": {"devices": [CTL]}}, RUNSC_2023)
    assert any("cannot list supported drivers" in w for w in no_list.warnings)
    padded = run(
        {"linux": {"devices": [CTL]}}, dataclasses.replace(HOST, driver_version="550.90.7")
    )
    assert padded.refusals == ()


def test_sandbox_argument_overrides_annotations() -> None:
    spec = {
        "annotations": {"io.kubernetes.cri.container-type": "container",
                        "io.kubernetes.cri.sandbox-id": "pod-1"},
        "linux": {"devices": [CTL]},
    }
    inferred = run(spec)
    assert inferred.decision.role == "member"
    assert any("cannot tell whether pod sandbox" in w for w in inferred.warnings)
    explicit = run(spec, sandbox=SandboxRole.standalone())
    assert explicit.decision.role == "standalone" and explicit.warnings == ()


def test_pod_sandbox_allows_what_the_config_allows() -> None:
    """Later containers may ask for up to the sandbox's allowed set."""
    gpu_pod = SandboxRole.pod_sandbox(pod_has_gpus=True)
    sandbox = run({}, RUNSC_2026, GRAPHICS_OK, sandbox=gpu_pod)
    assert sandbox.runsc_flags["nvproxy-allowed-driver-capabilities"] == "compute,graphics,utility"
    old = run({}, HOST, GRAPHICS_OK, sandbox=gpu_pod)
    assert old.ok and "nvproxy-allowed-driver-capabilities" not in old.runsc_flags
    assert any("cannot allow graphics" in w for w in old.warnings)
