"""The trust model, as tables: who may ask plan() for which GPU (shim/gpu/TRUST.md).

A standalone container's spec counts as written (its caller is root). In a
CRI pod, pod annotations and env are the pod author's: a pod's sandbox boots
nvproxy from policy or the kubelet's answer, and an app container gets only
GPUs the node put in its spec, at most those the kubelet allocated to it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from shim.gpu import _oci as oci
from shim.gpu.config import GpuConfig
from shim.gpu.facts import Allocation, GpuInfo, HostFacts, SandboxRole
from shim.gpu.plan import Plan, plan
from tests.unit import gpu_hosts

UUID0 = "GPU-4f4c8a2e-1b7d-4c3a-9e51-0a6d2b9c7e10"
UUID1 = "GPU-9b0e7d31-52c6-4e8f-b1a4-7c3e5d2f8a61"
# The fixture host, with the driver's GPU table as /proc/driver/nvidia/gpus shows it.
HOST = dataclasses.replace(
    gpu_hosts.HOST,
    gpus=(GpuInfo("0000:3b:00.0", 0, UUID0), GpuInfo("0000:86:00.0", 1, UUID1)),
)
NO_CDI = dataclasses.replace(HOST, cdi_specs=())
CTL = {"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255}
LEGACY = {"prestart": [{"path": "/usr/bin/nvidia-container-runtime-hook", "args": ["x"]}]}
POD = "default/train"


def spec(*, nodes: tuple[int, ...] = (), env: str | None = None,
         annotations: dict[str, str] | None = None, hooks: dict[str, Any] | None = None,
         extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    devices = [CTL] if nodes or extra else []
    devices += [{"path": f"/dev/nvidia{n}", "type": "c", "major": 195, "minor": n}
                for n in nodes]
    out: dict[str, Any] = {"process": {"args": ["true"]}}
    if devices or extra:
        out["linux"] = {"devices": devices + (extra or [])}
    if env is not None:
        out["process"]["env"] = [f"NVIDIA_VISIBLE_DEVICES={env}"]
    if annotations:
        out["annotations"] = dict(annotations)
    if hooks:
        out["hooks"] = hooks
    return out


def member(alloc: Allocation | None = None, *, pod_annotations: dict[str, str] | None = None,
           kubelet: str = "") -> SandboxRole:
    return SandboxRole.member(
        "pod-1", sandbox_nvproxy=True, allocation=alloc, kubelet=kubelet,
        pod_annotations=tuple(sorted((pod_annotations or {}).items())))


def alloc(*ids: str, cdi: tuple[str, ...] = (), unknown: str | None = None) -> Allocation:
    return Allocation(POD, "main", tuple(ids), cdi, unknown)


DEFAULT = GpuConfig()


def run(s: dict[str, Any], role: SandboxRole, config: GpuConfig = DEFAULT,
        host: HostFacts = HOST) -> Plan:
    return plan(s, host, config, container_id="c1", sandbox=role)


ENV_IN_PODS = GpuConfig(accept_visible_devices_env_in_pods=True)
CDI0 = {"cdi.k8s.io/dp": "nvidia.com/gpu=0"}

# (description, spec, role, config, host, gpu, ok, fragment in refusal / allocation / ignored)
MEMBERS = [
    ("node within the allocation, by UUID", spec(nodes=(0,)), member(alloc(UUID0)),
     GpuConfig(), HOST, True, True, "within the allocation"),
    ("node within the allocation, by index (CDI names GPUs by index)", spec(nodes=(0,)),
     member(alloc("0")), GpuConfig(), HOST, True, True, "within the allocation"),
    ("node within the allocation, by GKE's nvidiaN", spec(nodes=(1,)), member(alloc("nvidia1")),
     GpuConfig(), NO_CDI, True, True, "within the allocation"),
    ("node within a DRA allocation", spec(nodes=(0,)), member(alloc(cdi=("nvidia.com/gpu=0",))),
     GpuConfig(), HOST, True, True, "within the allocation"),
    ("node beyond the allocation", spec(nodes=(1,)), member(alloc(UUID0)),
     GpuConfig(), HOST, True, False, f"granted /dev/nvidia1 ({UUID1}), beyond what the node"),
    ("two nodes, one allocated", spec(nodes=(0, 1)), member(alloc("0")),
     GpuConfig(), HOST, True, False, "granted /dev/nvidia1"),
    ("node, nothing allocated", spec(nodes=(0,)), member(alloc()),
     GpuConfig(), HOST, True, False, "the kubelet allocated no GPU to container main"),
    ("an id no source knows", spec(nodes=(0,)), member(alloc("GPU-unknown")),
     GpuConfig(), HOST, True, False, "cannot tell which GPU GPU-unknown"),
    ("an index without a CDI spec cannot be mapped", spec(nodes=(0,)), member(alloc("0")),
     GpuConfig(), NO_CDI, True, False, "nvidia-ctk cdi generate"),
    ("sources that disagree map to nothing", spec(nodes=(0,)), member(alloc(UUID0)),
     GpuConfig(), dataclasses.replace(HOST, gpus=(GpuInfo("0000:3b:00.0", 1, UUID0),)),
     True, False, "sources disagree"),
    ("the container's share is unknown", spec(nodes=(0,)),
     member(alloc(unknown="its spec has no container name")),
     GpuConfig(), HOST, True, False, "but its spec has no container name"),
    ("no kubelet: granted, not checked", spec(nodes=(0,)),
     member(None, kubelet="no kubelet pod-resources socket at /k.sock"),
     GpuConfig(), HOST, True, True, "not checked: no kubelet pod-resources socket"),
    ("a GPU node under another path counts by its numbers",
     spec(extra=[{"path": "/dev/gpu7", "type": "c", "major": 195, "minor": 1}]),
     member(alloc(UUID0)), GpuConfig(), HOST, True, False, "granted /dev/gpu7"),
    ("container-level CDI annotation within", spec(annotations=CDI0), member(alloc("0")),
     GpuConfig(), HOST, True, True, "within the allocation"),
    ("container-level CDI annotation beyond", spec(annotations=CDI0), member(alloc("1")),
     GpuConfig(), HOST, True, False, "granted /dev/nvidia0"),
    ("pod-level CDI annotation grants nothing", spec(annotations=CDI0),
     member(alloc(), pod_annotations=CDI0), GpuConfig(), HOST, False, True,
     "a pod annotation, written by the pod's author, grants no device"),
    ("pod-level key, container-level value: the container's counts",
     spec(annotations=CDI0), member(alloc("0"), pod_annotations={"cdi.k8s.io/dp": "x"}),
     GpuConfig(), HOST, True, True, "within the allocation"),
    ("env alone grants nothing", spec(env="all"), member(alloc()),
     GpuConfig(), HOST, False, True, "accept_visible_devices_env_in_pods is off"),
    ("malformed env is ignored with the env", spec(env="0,bogus"), member(alloc()),
     GpuConfig(), HOST, False, True, "ignored with the rest of NVIDIA_VISIBLE_DEVICES"),
    ("a MIG env is ignored with the env", spec(nodes=(0,), env="MIG-1"), member(alloc("0")),
     GpuConfig(), HOST, True, True, "within the allocation"),
    ("hook + env grants nothing", spec(env="all", hooks=LEGACY), member(alloc()),
     GpuConfig(), HOST, False, True, "is the pod author's"),
    ("env accepted, beyond the allocation", spec(env="1"), member(alloc("0")),
     ENV_IN_PODS, HOST, True, False, "granted /dev/nvidia1"),
    ("hook + env accepted, within (by UUID in /proc)", spec(env=UUID1, hooks=LEGACY),
     member(alloc("nvidia1")), ENV_IN_PODS, NO_CDI, True, True, "within the allocation"),
    ("hook + env accepted, beyond", spec(env=UUID1, hooks=LEGACY), member(alloc(UUID0)),
     ENV_IN_PODS, NO_CDI, True, False, f"NVIDIA_VISIBLE_DEVICES entry {UUID1}"),
    ("hook + env=all accepted needs every GPU", spec(env="all", hooks=LEGACY),
     member(alloc(UUID0)), ENV_IN_PODS, NO_CDI, True, False,
     "NVIDIA_VISIBLE_DEVICES=all (every GPU of the host)"),
]


def _texts(result: Plan) -> list[str]:
    return [*result.refusals, result.decision.allocation, *result.decision.ignored]


@pytest.mark.parametrize(("description", "s", "role", "config", "host", "gpu", "ok", "fragment"),
                         MEMBERS, ids=[m[0] for m in MEMBERS])
def test_pod_members(description: str, s: dict[str, Any], role: SandboxRole, config: GpuConfig,
                     host: HostFacts, gpu: bool, ok: bool, fragment: str) -> None:
    result = run(s, role, config, host)
    assert result.decision.gpu is gpu, result.decision
    assert result.ok is ok, result.refusals
    assert any(fragment in t for t in _texts(result)), _texts(result)
    assert not result.bad_input  # none of these is malformed: the node's state decides
    if not gpu:
        assert not [d for d in oci.devices(result.spec) if "nvidia" in str(d.get("path"))]


def test_refused_grant_names_the_fix() -> None:
    result = run(spec(nodes=(1,)), member(alloc(UUID0)))
    (refusal,) = result.refusals
    assert refusal.startswith("container c1: it is granted /dev/nvidia1")
    assert f"the kubelet allocated {UUID0} to container main of pod {POD}" in refusal
    assert "resources.limits nvidia.com/gpu" in refusal


# (description, spec, role, config, nvproxy, fragment in reasons or ignored)
SANDBOXES = [
    ("the kubelet reports GPUs", spec(), SandboxRole.pod_sandbox(pod_has_gpus=True,
                                                                 kubelet="kubelet Get: ..."),
     GpuConfig(), True, "the kubelet allocated GPUs to the pod"),
    ("a pod CDI annotation is no GPU for the pod", spec(annotations=CDI0),
     SandboxRole.pod_sandbox(pod_has_gpus=False), GpuConfig(), False,
     "a pod annotation, written by the pod's author"),
    ("env in the sandbox is ignored", spec(env="all"), SandboxRole.pod_sandbox(), GpuConfig(),
     False, "NVIDIA_VISIBLE_DEVICES=all: ignored in a pod's sandbox"),
    ("the annotation without a kubelet, not accepted",
     spec(annotations={"dev.gvisorgpu.nvproxy": "true"}), SandboxRole.pod_sandbox(),
     GpuConfig(), False, "accept_pod_nvproxy_annotation is off"),
    ("the annotation without a kubelet, accepted",
     spec(annotations={"dev.gvisorgpu.nvproxy": "true"}),
     SandboxRole.pod_sandbox(kubelet="no kubelet pod-resources socket at /k.sock"),
     GpuConfig(accept_pod_nvproxy_annotation=True), True,
     "no kubelet answer: no kubelet pod-resources socket"),
    ("the kubelet's no beats an accepted annotation",
     spec(annotations={"dev.gvisorgpu.nvproxy": "true"}),
     SandboxRole.pod_sandbox(pod_has_gpus=False), GpuConfig(accept_pod_nvproxy_annotation=True),
     False, "the kubelet answered, and it allocated no GPU"),
    ("runsc's own annotation is no switch in a pod",
     spec(annotations={"dev.gvisor.internal.nvproxy": "true"}), SandboxRole.pod_sandbox(),
     GpuConfig(), False, "annotation dev.gvisor.internal.nvproxy=true: ignored"),
]


@pytest.mark.parametrize(("description", "s", "role", "config", "nvproxy", "fragment"),
                         SANDBOXES, ids=[c[0] for c in SANDBOXES])
def test_pod_sandboxes(description: str, s: dict[str, Any], role: SandboxRole,
                       config: GpuConfig, nvproxy: bool, fragment: str) -> None:
    result = run(s, role, config)
    assert result.ok, result.refusals
    assert result.nvproxy is nvproxy
    assert any(fragment in t for t in (*result.decision.reasons, *result.decision.ignored)), (
        result.decision)
    assert "dev.gvisor.internal.nvproxy" not in oci.annotations_of(result.spec)


def test_sandbox_keeps_no_gpu_node() -> None:
    """nvproxy is on for the pod through the flag; the pause holds no GPU."""
    result = run(spec(nodes=(0,)), SandboxRole.pod_sandbox(pod_has_gpus=True))
    assert result.nvproxy and result.decision.mode == "driver"
    assert not [d for d in oci.devices(result.spec) if "nvidia" in str(d.get("path"))]


@pytest.mark.parametrize(("description", "s", "gpu"), [
    ("CDI annotation", spec(annotations=CDI0), True),
    ("env alone", spec(env="all"), True),
    ("our annotation", spec(annotations={"dev.gvisorgpu.nvproxy": "true"}), True),
    ("runsc's annotation", spec(annotations={"dev.gvisor.internal.nvproxy": "true"}), True),
    ("hook + env", spec(env="0", hooks=LEGACY), True),
], ids=lambda v: v if isinstance(v, str) else "")
def test_standalone_spec_counts_as_written(description: str, s: dict[str, Any],
                                           gpu: bool) -> None:
    """ctr's caller is root on the node: today's semantics stay."""
    result = run(s, SandboxRole.standalone())
    assert result.decision.gpu is gpu and result.decision.ignored == ()
    assert result.decision.allocation == ""
    if "dev.gvisor.internal.nvproxy" in (s.get("annotations") or {}):
        assert oci.annotations_of(result.spec) == s["annotations"]


def test_pod_member_loses_runsc_annotation_and_untrusted_env() -> None:
    """runsc acts on both by itself, whatever the shim decided."""
    s = spec(env="all", hooks=LEGACY, annotations={"dev.gvisor.internal.nvproxy": "true",
                                                   "dev.gvisor.spec.nvproxy": "true"})
    result = run(s, member(alloc()))
    assert result.ok and not result.decision.gpu
    assert oci.env_values(result.spec, "NVIDIA_VISIBLE_DEVICES") == ["void"]
    assert "annotations" not in result.spec
    # Idempotent, like every step.
    again = run(result.spec, member(alloc()))
    assert again.spec == result.spec
    # With env accepted in pods the hook path is the container's to use.
    trusted = run(spec(env="0", hooks=LEGACY), member(None), ENV_IN_PODS, NO_CDI)
    assert trusted.decision.mode == "hook"
    assert oci.env_values(trusted.spec, "NVIDIA_VISIBLE_DEVICES") == ["0"]


def test_member_without_known_pod_annotations_says_so() -> None:
    role = SandboxRole.member("pod-1", sandbox_nvproxy=None)  # the plan command's dry run
    result = run(spec(annotations=CDI0), role)
    assert result.decision.gpu
    assert any("cannot be told apart" in n for n in result.notes)


# Which refusals are bad input (InvalidArgument) and which are state (FailedPrecondition).
STATUSES = [
    ("malformed CDI name", spec(annotations={"cdi.k8s.io/x": "nvidia.com/gpu"}),
     SandboxRole.standalone(), HOST, True),
    ("malformed NVIDIA_VISIBLE_DEVICES", spec(env="0,bogus"), SandboxRole.standalone(), HOST,
     True),
    ("unknown driver capability",
     {"process": {"env": ["NVIDIA_DRIVER_CAPABILITIES=warp"]}, "linux": {"devices": [CTL]}},
     SandboxRole.standalone(), HOST, True),
    ("non-boolean annotation", spec(annotations={"dev.gvisorgpu.nvproxy": "yes please"}),
     SandboxRole.standalone(), HOST, True),
    ("no driver on the host", spec(nodes=(0,)), SandboxRole.standalone(),
     dataclasses.replace(HOST, driver_version=None), False),
    ("unresolvable CDI device", spec(annotations={"cdi.k8s.io/x": "nvidia.com/gpu=7"}),
     SandboxRole.standalone(), HOST, False),
    ("MIG", spec(env="MIG-1"), SandboxRole.standalone(), HOST, False),
    ("beyond the allocation", spec(nodes=(1,)), member(alloc("0")), HOST, False),
    ("sandbox without nvproxy", spec(nodes=(0,)),
     SandboxRole.member("pod-1", sandbox_nvproxy=False), HOST, False),
]


@pytest.mark.parametrize(("description", "s", "role", "host", "bad_input"), STATUSES,
                         ids=[c[0] for c in STATUSES])
def test_refusal_kind(description: str, s: dict[str, Any], role: SandboxRole, host: HostFacts,
                      bad_input: bool) -> None:
    result = run(s, role, host=host)
    assert result.refusals, result
    assert result.bad_input is bad_input
