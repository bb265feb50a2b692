"""The Create path up to runsc: options → config, load spec → plan → write spec.

This is the seam between the task service and the GPU planner: the planner is
pure, so everything it needs (runsc's capabilities, the host's driver, device
nodes and CDI specs, the container's place in its pod) is gathered here first
and passed in as values. The ``plan`` command calls :func:`plan_create` too,
so the dry run decides exactly as Create does, kubelet lookup included.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import betterproto

from shim import logfmt
from shim.api.containerd.task.v2 import CreateTaskRequest
from shim.config import RuntimeConfig
from shim.config.options import load_config
from shim.errors import FailedPrecondition, InvalidArgument
from shim.gpu.detect import gather_host_facts
from shim.gpu.facts import SandboxRole
from shim.gpu.plan import POD_ANNOTATION, Plan, plan
from shim.kube.pod import PodRole, pod_role
from shim.oci import bundle as bundle_io
from shim.runsc import CommandRunner, GlobalOptions, ProbeCache, RunscCapabilities, probe
from shim.task.container import CreateParams, mounts_from
from shim.task.pod import Sandbox
from shim.task.runsc_options import member_options, sandbox_options, seccomp_enforced
from shim.task.stdio import StdioPaths

__all__ = ["CreatePlan", "Prepared", "plan_create", "prepare"]

log = logging.getLogger("shim.task")


@dataclass(frozen=True)
class CreatePlan:
    """Everything Create decides before runsc runs."""

    role: PodRole
    # The sandbox a pod's app container joins; None for a sandbox or standalone.
    joined: Sandbox | None
    plan: Plan
    runsc: GlobalOptions

    @property
    def nvproxy(self) -> bool:
        return self.joined.nvproxy if self.joined is not None else self.plan.nvproxy


@dataclass(frozen=True)
class Prepared:
    params: CreateParams
    # Set when this container boots a pod's sandbox: what its members will join.
    sandbox: Sandbox | None


async def prepare(req: CreateTaskRequest, *, namespace: str, sandboxes: Mapping[str, Sandbox],
                  runner: CommandRunner, probes: ProbeCache) -> Prepared:
    """Everything Create decides before runsc runs; refusals raise here."""
    if req.checkpoint:
        raise InvalidArgument(f"container {req.id}: restoring from a checkpoint is not supported")
    config = load_config(req.options if betterproto.serialized_on_wire(req.options) else None)
    logfmt.apply_config(config.log_level, config.shim_log_path(req.id))
    caps = await probe(config.binary_name, runner, probes)
    spec = bundle_io.load_spec(req.bundle)
    decided = await plan_create(spec, caps, config, container_id=req.id, bundle=req.bundle,
                                namespace=namespace, sandboxes=sandboxes)
    result = decided.plan
    if result.refusals:
        raise FailedPrecondition("; ".join(result.refusals))
    _check_seccomp(req.id, result.spec, decided.runsc, config)
    for warning in (*config.warnings, *result.warnings):
        log.warning(warning, extra={"container_id": req.id})
    if result.spec != spec:
        bundle_io.write_spec(req.bundle, result.spec)
    log.info("starting container with nvproxy" if decided.nvproxy else "creating container",
             extra={"container_id": req.id, "nvproxy_enabled": str(decided.nvproxy).lower(),
                    "role": decided.role.kind, "network": decided.runsc.network,
                    "runsc": caps.describe(), "gpu_reasons": "; ".join(result.decision.reasons)})
    linux = result.spec.get("linux") or {}
    params = CreateParams(
        id=req.id, bundle=req.bundle, mounts=mounts_from(req.rootfs),
        stdio=StdioPaths(req.stdin, req.stdout, req.stderr, req.terminal), runsc=decided.runsc,
        sandbox_id=decided.joined.id if decided.joined is not None else None,
        cgroups_path=str(linux.get("cgroupsPath") or ""),
        memory_limit=((linux.get("resources") or {}).get("memory") or {}).get("limit"),
    )
    booted = Sandbox(req.id, decided.runsc, result.nvproxy) \
        if decided.role.kind == "sandbox" else None
    return Prepared(params, booted)


async def plan_create(spec: dict[str, Any], caps: RunscCapabilities, config: RuntimeConfig, *,
                      container_id: str, bundle: str, namespace: str,
                      sandboxes: Mapping[str, Sandbox] | None) -> CreatePlan:
    """The GPU plan and runsc options for one container.

    ``sandboxes`` are the pod sandboxes this shim serves; None is the dry run
    of the ``plan`` command, where an app container's sandbox is not known.
    """
    role = pod_role(spec.get("annotations") or {})
    joined = _joined_sandbox(container_id, role, sandboxes)
    sandbox_role = await _sandbox_role(role, joined, config, spec)
    host = gather_host_facts(caps, config.gpu.cdi_dirs)
    result = plan(spec, host, config.gpu, container_id=container_id, sandbox=sandbox_role)
    if joined is not None:
        runsc = member_options(joined.runsc, bundle)
    else:
        runsc = sandbox_options(config, caps, result, namespace=namespace,
                                container_id=container_id, bundle=bundle)
    return CreatePlan(role, joined, result, runsc)


def _joined_sandbox(container_id: str, role: PodRole,
                    sandboxes: Mapping[str, Sandbox] | None) -> Sandbox | None:
    if role.kind != "member" or sandboxes is None:
        return None
    assert role.sandbox_id is not None
    joined = sandboxes.get(role.sandbox_id)
    if joined is None:
        raise FailedPrecondition(
            f"container {container_id} joins pod sandbox {role.sandbox_id}, which this shim "
            "does not serve; the pod's sandbox container must be created first with the same "
            "runtime handler")
    return joined


async def _sandbox_role(role: PodRole, joined: Sandbox | None, config: RuntimeConfig,
                        spec: dict[str, Any]) -> SandboxRole:
    if role.kind == "member":
        return SandboxRole.member(role.sandbox_id,
                                  sandbox_nvproxy=None if joined is None else joined.nvproxy)
    if role.kind == "standalone":
        return SandboxRole.standalone()
    annotations = spec.get("annotations") or {}
    if config.gpu.nvproxy != "auto" or POD_ANNOTATION in annotations \
            or not (role.pod_name and role.pod_namespace):
        return SandboxRole.pod_sandbox()
    # The pause container carries no GPU request; ask the kubelet what the pod got.
    from shim.kube.kubelet import lookup_pod_gpus

    found = await lookup_pod_gpus(config.pod_resources_socket, role.pod_name,
                                  role.pod_namespace, vendors=tuple(config.gpu.cdi_vendors))
    log.info("pod resources: %s", found.reason, extra={"pod": role.pod_name})
    has_gpus = None if found.devices is None else bool(found.devices)
    return SandboxRole.pod_sandbox(pod_has_gpus=has_gpus)


def _check_seccomp(container_id: str, spec: dict[str, Any], runsc: GlobalOptions,
                   config: RuntimeConfig) -> None:
    """A container's seccomp profile is enforced (runsc --oci-seccomp), or the
    container is refused; ``seccomp = "warn"`` runs it anyway and says so. A
    security runtime never drops a profile silently."""
    if not (spec.get("linux") or {}).get("seccomp") or seccomp_enforced(runsc):
        return
    cause = (f"container {container_id} has a seccomp profile, but its sandbox runs without "
             "--oci-seccomp, so runsc would not enforce it")
    if config.seccomp == "warn":
        log.warning("%s; running it anyway (seccomp = \"warn\")", cause,
                    extra={"container_id": container_id})
        return
    raise FailedPrecondition(
        f"{cause}. Fix: use a runsc that has --oci-seccomp, remove oci-seccomp = \"false\" from "
        '[runsc_config] (for a pod: before its sandbox starts), or set seccomp = "warn" in '
        "the shim's runtime config to run without the profile")
