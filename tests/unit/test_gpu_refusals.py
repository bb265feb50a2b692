"""plan() refusals and pod roles, as tables. Every refusal must name the
container, the cause and the fix; each row checks fragments of all three."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from shim.gpu.config import GpuConfig
from shim.gpu.facts import HostFacts, SandboxRole
from shim.gpu.plan import Plan, plan
from tests.unit import gpu_hosts
from tests.unit.gpu_hosts import RUNSC_2026, role_of

# A runsc beside the distro's one, with a short driver list: refusals quote both.
HOST = dataclasses.replace(
    gpu_hosts.HOST,
    runsc_path="/opt/runsc-2024/runsc",
    supported_drivers=("535.104.12", "550.54.15", "550.90.07"),
)
# The Debian bookworm build: no nvproxy at all.
RUNSC_2022 = dataclasses.replace(
    HOST,
    runsc_path="/usr/bin/runsc",
    runsc_version="0.0~20221219.0",
    runsc_release=20221219,
    runsc_flags=frozenset({"platform"}),
    runsc_default_platform="ptrace",
    runsc_platforms=frozenset({"ptrace", "kvm"}),
    supported_drivers=None,
)
# What the e2e machine looks like: no driver, no nodes, CDI specs in a test dir.
NO_GPU = dataclasses.replace(HOST, driver_version=None, device_nodes={})
CTL = {"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255}
GPU = {"linux": {"devices": [CTL]}}


def env(*entries: str) -> dict[str, Any]:
    return {"process": {"env": list(entries)}, "linux": {"devices": [CTL]}}


def cdi(value: str) -> dict[str, Any]:
    return {"annotations": {"cdi.k8s.io/req": value}}


def run(
    spec: dict[str, Any], host: HostFacts, config: GpuConfig, role: SandboxRole | None = None
) -> Plan:
    return plan(spec, host, config, container_id="job-7",
                sandbox=role if role is not None else role_of(spec))


C = GpuConfig()
REFUSALS = [
    # detection input
    (
        "CDI name without device",
        cdi("nvidia.com/gpu"),
        HOST,
        C,
        ["not a qualified CDI name", "vendor/class=name"],
    ),
    ("CDI device path", cdi("/dev/nvidia0"), HOST, C, ["device path"]),
    ("CDI bad vendor, even foreign", cdi("-bad.com/gpu=0"), HOST, C, ["invalid vendor"]),
    (
        "visible-devices garbage",
        env("NVIDIA_VISIBLE_DEVICES=gpu0"),
        HOST,
        C,
        ["'gpu0'", "GPU indices"],
    ),
    (
        "pod annotation not boolean",
        {"annotations": {"dev.gvisorgpu.nvproxy": "yes"}},
        HOST,
        C,
        ["not a boolean", '"true"'],
    ),
    # CDI resolution
    (
        "unresolvable index",
        cdi("nvidia.com/gpu=7"),
        HOST,
        C,
        ["unresolvable CDI device(s) nvidia.com/gpu=7", "defines 0, 1, GPU-", "regenerate"],
    ),
    (
        "unknown kind",
        cdi("nvidia.com/nic=0"),
        HOST,
        C,
        ["no CDI spec in /etc/cdi, /var/run/cdi defines nvidia.com/nic", "nvidia-ctk cdi generate"],
    ),
    (
        "env ask, no CDI spec",
        {"process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]}},
        dataclasses.replace(HOST, cdi_specs=(), cdi_errors=("/etc/cdi/x.yaml: bad",)),
        C,
        [
            "nvidia.com/gpu=all",
            "failed to load: /etc/cdi/x.yaml: bad",
            "NVIDIA_VISIBLE_DEVICES=void",
        ],
    ),
    (
        "env bad CDI name",
        {"process": {"env": ["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=-1"]}},
        HOST,
        C,
        ["NVIDIA_VISIBLE_DEVICES", "vendor/class=name"],
    ),
    # runsc
    (
        "runsc without nvproxy",
        GPU,
        RUNSC_2022,
        C,
        [
            "runsc at /usr/bin/runsc (0.0~20221219.0) has no --nvproxy",
            "release-20230529.0",
            "binary_name",
        ],
    ),
    (
        "forced driver without the flag",
        GPU,
        dataclasses.replace(HOST, runsc_flags=frozenset({"nvproxy"})),
        GpuConfig(driver_version="550.90.07"),
        ["--nvproxy-driver-version (first in release-20240422.0)", "remove nvproxy_driver_version"],
    ),
    # driver
    (
        "no driver",
        GPU,
        NO_GPU,
        C,
        [
            "no NVIDIA driver is loaded",
            "/proc/driver/nvidia/version",
            "nvproxy_driver_version in the shim config",
        ],
    ),
    (
        "unsupported driver",
        GPU,
        dataclasses.replace(HOST, driver_version="535.161.08"),
        C,
        [
            "535.161.08 is not supported by runsc at /opt/runsc-2024/runsc (0.0~20240729.0)",
            "supports 535.104.12, 550.54.15, 550.90.07",
            "driver_version",
            "release-20260615.0+",
            "--nvproxy-allow-unsupported-driver",
        ],
    ),
    (
        "unsupported even when allowed, without the flag",
        GPU,
        dataclasses.replace(HOST, driver_version="535.161.08"),
        GpuConfig(allow_unsupported_driver=True),
        ["not supported"],
    ),
    # capabilities
    (
        "graphics not allowed",
        env("NVIDIA_DRIVER_CAPABILITIES=compute,graphics"),
        HOST,
        C,
        ["graphics", "allowed_capabilities"],
    ),
    (
        "unknown capability",
        env("NVIDIA_DRIVER_CAPABILITIES=compute,warp"),
        HOST,
        C,
        ["unknown driver capabilities: warp"],
    ),
    (
        "capability nvproxy does not serve",
        env("NVIDIA_DRIVER_CAPABILITIES=display"),
        HOST,
        GpuConfig(allowed_capabilities=frozenset({"compute", "utility", "display"})),
        ["does not serve: display"],
    ),
    (
        "allowed but runsc cannot widen",
        env("NVIDIA_DRIVER_CAPABILITIES=compute,video"),
        dataclasses.replace(HOST, runsc_release=None),
        GpuConfig(allowed_capabilities=frozenset({"compute", "utility", "video"})),
        ["--nvproxy-allowed-driver-capabilities (first in release-20240930.0)"],
    ),
    (
        "allowed but runsc serves it later",
        env("NVIDIA_DRIVER_CAPABILITIES=video"),
        dataclasses.replace(RUNSC_2026, runsc_release=20250110),
        GpuConfig(allowed_capabilities=frozenset({"compute", "utility", "video"})),
        ["video, which nvproxy serves from release-20250113.0"],
    ),
    # MIG
    (
        "MIG uuid in env",
        env("NVIDIA_VISIBLE_DEVICES=MIG-1a2b"),
        HOST,
        C,
        ["MIG", "NVIDIA_VISIBLE_DEVICES=MIG-1a2b", "whole GPUs"],
    ),
    (
        "MIG index in env",
        {"process": {"env": ["NVIDIA_VISIBLE_DEVICES=0:1"]}},
        HOST,
        C,
        ["NVIDIA_VISIBLE_DEVICES=0:1"],
    ),
    ("MIG CDI name", cdi("nvidia.com/gpu=0:1"), HOST, C, ["requests nvidia.com/gpu=0:1"]),
    (
        "MIG caps node",
        {"linux": {"devices": [CTL, {"path": "/dev/nvidia-caps/nvidia-cap12"}]}},
        HOST,
        C,
        ["/dev/nvidia-caps/nvidia-cap12"],
    ),
    (
        "MIG config env",
        env("NVIDIA_MIG_CONFIG_DEVICES=all"),
        HOST,
        C,
        ["NVIDIA_MIG_CONFIG_DEVICES is set"],
    ),
    # platform
    (
        "kvm before 20250326",
        GPU,
        HOST,
        GpuConfig(platform="kvm"),
        ["refuses nvproxy on the kvm platform", "release-20250326.0", 'platform = "systrap"'],
    ),
    (
        "unknown platform",
        {},
        HOST,
        GpuConfig(platform="gvisor-tpu"),
        ["knows no platform 'gvisor-tpu'", "systrap"],
    ),
    (
        "no platform flag",
        {},
        dataclasses.replace(HOST, runsc_flags=frozenset()),
        GpuConfig(platform="ptrace"),
        ["no --platform flag"],
    ),
    # policy
    (
        "policy never with a device",
        GPU,
        HOST,
        GpuConfig(nvproxy="never"),
        ["linux.devices has /dev/nvidiactl", "nvproxy = never", '"auto"'],
    ),
    (
        "policy never with CDI",
        cdi("nvidia.com/gpu=0"),
        HOST,
        GpuConfig(nvproxy="never"),
        ["requests nvidia.com/gpu=0"],
    ),
]


@pytest.mark.parametrize(
    ("description", "spec", "host", "config", "fragments"), REFUSALS, ids=[c[0] for c in REFUSALS]
)
def test_refusal(
    description: str, spec: dict[str, Any], host: HostFacts, config: GpuConfig, fragments: list[str]
) -> None:
    result = run(spec, host, config)
    assert not result.ok
    text = "\n".join(result.refusals)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    for refusal in result.refusals:
        assert refusal.startswith("container job-7: ") and ". Fix: " in refusal


def test_no_driver_with_forced_abi_is_allowed() -> None:
    """The e2e path: a GPU-less host with driver_version forced starts runsc."""
    result = run(cdi("nvidia.com/gpu=0"), NO_GPU, GpuConfig(driver_version="550.90.07"))
    assert result.ok, result.refusals
    assert dict(result.runsc_flags) == {"nvproxy": "true", "nvproxy-driver-version": "550.90.07"}
    assert any("host has no" in w for w in result.warnings)


def test_policy_never_ignores_env_only_ask() -> None:
    result = run(
        {"process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]}}, HOST, GpuConfig(nvproxy="never")
    )
    assert result.ok and not result.nvproxy
    assert any("ignored" in w for w in result.warnings)


def test_refusals_collect_more_than_one_cause() -> None:
    spec = env("NVIDIA_VISIBLE_DEVICES=MIG-1", "NVIDIA_DRIVER_CAPABILITIES=graphics")
    result = run(spec, RUNSC_2022, C)
    assert len(result.refusals) >= 3


# --- pods ---------------------------------------------------------------------------

POD_ANN = {"annotations": {"dev.gvisorgpu.nvproxy": "true"}}
ROLES = [
    (
        "sandbox without a GPU signal",
        {},
        SandboxRole.pod_sandbox(),
        C,
        False,
        "pod sandbox without",
    ),
    (
        "sandbox with the pod annotation, not accepted",
        POD_ANN,
        SandboxRole.pod_sandbox(),
        C,
        False,
        "without a kubelet GPU allocation",
    ),
    (
        "sandbox with the pod annotation, accepted without a kubelet",
        POD_ANN,
        SandboxRole.pod_sandbox(),
        GpuConfig(accept_pod_nvproxy_annotation=True),
        True,
        "dev.gvisorgpu.nvproxy=true (accept_pod_nvproxy_annotation = true",
    ),
    (
        "sandbox with the pod annotation, the kubelet says no GPU",
        POD_ANN,
        SandboxRole.pod_sandbox(pod_has_gpus=False),
        GpuConfig(accept_pod_nvproxy_annotation=True),
        False,
        "without a kubelet GPU allocation",
    ),
    (
        "sandbox the kubelet reports GPUs for",
        {},
        SandboxRole.pod_sandbox(pod_has_gpus=True),
        C,
        True,
        "the kubelet allocated GPUs to the pod",
    ),
    (
        "sandbox, policy always",
        {},
        SandboxRole.pod_sandbox(),
        GpuConfig(nvproxy="always"),
        True,
        "always",
    ),
    (
        "member asking, sandbox has nvproxy",
        GPU,
        SandboxRole.member("pod-1", sandbox_nvproxy=True),
        C,
        True,
        "/dev/nvidiactl",
    ),
    (
        "member not asking, sandbox has nvproxy",
        {},
        SandboxRole.member("pod-1", sandbox_nvproxy=True),
        C,
        False,
        "no GPU signal",
    ),
    (
        "member ignores the pod annotation",
        POD_ANN,
        SandboxRole.member("pod-1", sandbox_nvproxy=True),
        C,
        False,
        "no GPU signal",
    ),
    (
        "member, policy always",
        {},
        SandboxRole.member("pod-1", sandbox_nvproxy=True),
        GpuConfig(nvproxy="always"),
        True,
        "always",
    ),
]


@pytest.mark.parametrize(
    ("description", "spec", "role", "config", "gpu", "reason"), ROLES, ids=[c[0] for c in ROLES]
)
def test_roles(
    description: str,
    spec: dict[str, Any],
    role: SandboxRole,
    config: GpuConfig,
    gpu: bool,
    reason: str,
) -> None:
    result = run(spec, HOST, config, role)
    assert result.ok, result.refusals
    assert result.decision.gpu is gpu and result.nvproxy is gpu
    assert any(reason in r for r in result.decision.reasons), result.decision.reasons
    assert result.decision.role == role.kind


def test_sandbox_with_gpus_is_checked_at_pod_creation() -> None:
    """A pod on an unsupported driver fails when the sandbox is created."""
    result = run({}, NO_GPU, C, SandboxRole.pod_sandbox(pod_has_gpus=True))
    assert any("no NVIDIA driver" in r for r in result.refusals)


@pytest.mark.parametrize(
    ("spec", "hint"),
    [(GPU, False), ({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]}}, True)],
    ids=["device", "env only"],
)
def test_member_in_sandbox_without_nvproxy(spec: dict[str, Any], hint: bool) -> None:
    config = GpuConfig(accept_visible_devices_env_in_pods=True)
    result = run(spec, HOST, config, SandboxRole.member("pod-9", sandbox_nvproxy=False))
    assert not result.nvproxy and not result.bad_input
    (refusal,) = result.refusals
    assert "pod sandbox pod-9 was booted without nvproxy" in refusal
    assert "resources.limits nvidia.com/gpu" in refusal and 'nvproxy = "always"' in refusal
    assert "accept_pod_nvproxy_annotation = true" in refusal
    assert ("NVIDIA_VISIBLE_DEVICES=void" in refusal) is hint


def test_member_env_alone_is_no_ask_in_a_pod() -> None:
    """The pod's author writes the env: by default it asks for nothing, so a
    CUDA image (NVIDIA_VISIBLE_DEVICES=all) runs as a CPU container."""
    spec = {"process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]}}
    result = run(spec, HOST, C, SandboxRole.member("pod-9", sandbox_nvproxy=False))
    assert result.ok and not result.nvproxy
    assert any("accept_visible_devices_env_in_pods is off" in i for i in result.decision.ignored)


def test_sandbox_policy_never_refuses_an_accepted_pod_annotation() -> None:
    config = GpuConfig(nvproxy="never", accept_pod_nvproxy_annotation=True)
    result = run(POD_ANN, HOST, config, SandboxRole.pod_sandbox())
    assert any("nvproxy = never" in r for r in result.refusals)
    kubelet = run({}, HOST, GpuConfig(nvproxy="never"), SandboxRole.pod_sandbox(pod_has_gpus=True))
    assert any("nvproxy = never" in r for r in kubelet.refusals)
    ignored = run(POD_ANN, HOST, GpuConfig(nvproxy="never"), SandboxRole.pod_sandbox())
    assert ignored.ok and not ignored.nvproxy
