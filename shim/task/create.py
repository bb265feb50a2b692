"""The Create path up to runsc: options → config, load spec → plan → write spec.

This is the seam between the task service and the GPU planner: the planner is
pure, so everything it needs (runsc's capabilities, the host's driver, device
nodes and CDI specs, the container's place in its pod) is gathered here first
and passed in as values. The ``plan`` command calls :func:`plan_create` too,
so the dry run decides exactly as Create does, kubelet lookup included.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import betterproto

from shim import logfmt
from shim.api.containerd.task.v2 import CreateTaskRequest
from shim.config import RuntimeConfig
from shim.config.options import load_config
from shim.errors import FailedPrecondition, InvalidArgument
from shim.gpu import _oci as oci
from shim.gpu._bound import clip, listing
from shim.gpu.detect import CdiCache, gather_host_facts
from shim.gpu.facts import Allocation, SandboxRole
from shim.gpu.plan import Plan, plan
from shim.kube.pod import PodRole, pod_role
from shim.oci import bundle as bundle_io
from shim.oci import compat
from shim.runsc import CommandRunner, GlobalOptions, ProbeCache, RunscCapabilities, probe
from shim.task import cgroups
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
                  runner: CommandRunner, probes: ProbeCache,
                  cdi_cache: CdiCache | None = None) -> Prepared:
    """Everything Create decides before runsc runs; refusals raise here.

    A refusal for malformed input (a bad CDI name or NVIDIA_VISIBLE_DEVICES
    entry, an unknown driver capability) is InvalidArgument: the same request
    fails anywhere. Everything else (the host's driver or runsc, the config's
    policy, the pod's sandbox, the kubelet's allocation) is FailedPrecondition:
    the request is well-formed and the node's state decides it.
    """
    if req.checkpoint:
        raise InvalidArgument(f"container {req.id}: restoring from a checkpoint is not supported")
    config = load_config(req.options if betterproto.serialized_on_wire(req.options) else None)
    logfmt.apply_config(config.log_level, config.shim_log_path(req.id))
    caps = await probe(config.binary_name, runner, probes)
    spec = bundle_io.load_spec(req.bundle)
    decided = await plan_create(spec, caps, config, container_id=req.id, bundle=req.bundle,
                                namespace=namespace, sandboxes=sandboxes, cdi_cache=cdi_cache)
    result = decided.plan
    if result.refusals:
        refused = InvalidArgument if result.bad_input else FailedPrecondition
        raise refused("; ".join(result.refusals))
    problems = compat.unsupported(result.spec, pod_sandbox=decided.role.kind == "sandbox")
    if problems:
        raise FailedPrecondition("; ".join(f"container {req.id}: {cause}. Fix: {fix}."
                                           for cause, fix in problems))
    _check_seccomp(req.id, result.spec, decided.runsc, config)
    _place_systemd_cgroup(req.id, result.spec)
    for warning in (*config.warnings, *result.warnings):
        log.warning(warning, extra={"container_id": req.id})
    if result.spec != spec:
        bundle_io.write_spec(req.bundle, result.spec)
    log.info("starting container with nvproxy" if decided.nvproxy else "creating container",
             extra={"container_id": req.id, "nvproxy_enabled": str(decided.nvproxy).lower(),
                    "role": decided.role.kind, "network": decided.runsc.network,
                    "runsc": caps.describe(), **_gpu_fields(result)})
    linux = result.spec.get("linux") or {}
    params = CreateParams(
        id=req.id, bundle=req.bundle, mounts=mounts_from(req.rootfs),
        stdio=StdioPaths(req.stdin, req.stdout, req.stderr, req.terminal), runsc=decided.runsc,
        sandbox_id=decided.joined.id if decided.joined is not None else None,
        cgroups_path=str(linux.get("cgroupsPath") or ""),
        memory_limit=((linux.get("resources") or {}).get("memory") or {}).get("limit"),
        seccomp_profile=bool(linux.get("seccomp")),
        exec_seccomp="warn" if config.seccomp == "warn" else "refuse",
    )
    booted = None
    if decided.role.kind == "sandbox":
        booted = Sandbox(req.id, decided.runsc, result.nvproxy, decided.role.pod_name,
                         decided.role.pod_namespace, _pod_annotations(spec))
    return Prepared(params, booted)


def _gpu_fields(result: Plan) -> dict[str, str]:
    """The GPU decision for the create log line: why, which GPU nodes, what
    was set aside, and how the grant compares with the kubelet's allocation."""
    decision = result.decision
    fields = {"gpu_reasons": clip("; ".join(decision.reasons), 400)}
    if decision.gpu:
        nodes = [str(d.get("path")) for d in oci.devices(result.spec)
                 if str(d.get("path", "")).startswith("/dev/nvidia")]
        fields["gpu_devices"] = listing(nodes, 16) or "none"
    if decision.ignored:
        fields["gpu_ignored"] = clip("; ".join(decision.ignored), 600)
    if decision.allocation:
        fields["gpu_allocation"] = clip(decision.allocation, 400)
    return fields


def _pod_annotations(spec: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The pod annotations containerd forwarded into a sandbox's spec: all
    but its own io.kubernetes.cri.* keys, which it sets on every spec."""
    found = oci.annotations_of(dict(spec))
    return tuple(sorted((k, v) for k, v in found.items()
                        if not k.startswith("io.kubernetes.cri.")))


async def plan_create(spec: dict[str, Any], caps: RunscCapabilities, config: RuntimeConfig, *,
                      container_id: str, bundle: str, namespace: str,
                      sandboxes: Mapping[str, Sandbox] | None,
                      cdi_cache: CdiCache | None = None) -> CreatePlan:
    """The GPU plan and runsc options for one container.

    ``sandboxes`` are the pod sandboxes this shim serves; None is the dry run
    of the ``plan`` command, where an app container's sandbox is not known.
    The kubelet is asked while the host is read: reading CDI specs parses
    files, so it runs in a worker thread, off the daemon's event loop.
    """
    role = pod_role(spec.get("annotations") or {})
    joined = _joined_sandbox(container_id, role, sandboxes)
    sandbox_role, host = await asyncio.gather(
        _sandbox_role(role, joined, config),
        asyncio.to_thread(gather_host_facts, caps, config.gpu.cdi_dirs, cache=cdi_cache))
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


async def _sandbox_role(role: PodRole, joined: Sandbox | None,
                        config: RuntimeConfig) -> SandboxRole:
    if role.kind == "member":
        return await _member_role(role, joined, config)
    if role.kind == "standalone":
        return SandboxRole.standalone()
    if config.gpu.nvproxy != "auto":
        return SandboxRole.pod_sandbox(kubelet=f"not asked: policy nvproxy = {config.gpu.nvproxy}")
    if not (role.pod_name and role.pod_namespace):
        return SandboxRole.pod_sandbox(kubelet="not asked: the sandbox's spec names no pod")
    # The pause container carries no GPU request; ask the kubelet what the pod got.
    from shim.kube.kubelet import lookup_pod_gpus

    found = await lookup_pod_gpus(config.pod_resources_socket, role.pod_name,
                                  role.pod_namespace, vendors=tuple(config.gpu.cdi_vendors))
    _log_kubelet(config.pod_resources_socket, found.devices is None, found.reason,
                 role.pod_name)
    has_gpus = None if found.devices is None else bool(found.devices)
    return SandboxRole.pod_sandbox(pod_has_gpus=has_gpus, kubelet=found.reason)


async def _member_role(role: PodRole, joined: Sandbox | None,
                       config: RuntimeConfig) -> SandboxRole:
    """An app container: its sandbox's state, the pod's own annotations, and
    the kubelet's allocation for this container when the sandbox has nvproxy
    (in a sandbox without it, a GPU request is refused whatever was allocated)."""
    nvproxy = None if joined is None else joined.nvproxy
    member = SandboxRole.member(
        role.sandbox_id, sandbox_nvproxy=nvproxy,
        pod_annotations=None if joined is None else joined.pod_annotations)
    # The sandbox's names were set by containerd on the pause spec; prefer them.
    name = joined.pod_name if joined is not None else role.pod_name
    pod_ns = joined.pod_namespace if joined is not None else role.pod_namespace
    if nvproxy is False or config.gpu.nvproxy == "never":
        return member
    if not (name and pod_ns):
        return _with(member, kubelet="not asked: the pod's name is not known")
    from shim.kube.kubelet import lookup_container_gpus, lookup_pod

    pod = f"{pod_ns}/{name}"
    if not role.container_name:
        # The kubelet may still answer: then which share is this container's is unknown.
        answer = await lookup_pod(config.pod_resources_socket, name, pod_ns)
        if not answer.reachable:
            return _with(member, kubelet=answer.reason)
        why = ("its spec has no io.kubernetes.cri.container-name, so the kubelet's "
               "allocation for it cannot be found")
        return _with(member, allocation=Allocation(pod, "(unnamed)", unknown=why))
    found = await lookup_container_gpus(config.pod_resources_socket, name, pod_ns,
                                        role.container_name,
                                        vendors=tuple(config.gpu.cdi_vendors))
    _log_kubelet(config.pod_resources_socket, found.devices is None, found.reason, name)
    if found.devices is None:
        return _with(member, kubelet=found.reason)
    ids, cdi_names = found.devices
    return _with(member, kubelet=found.reason,
                 allocation=Allocation(pod, role.container_name, ids, cdi_names))


def _with(role: SandboxRole, **changes: Any) -> SandboxRole:
    import dataclasses

    return dataclasses.replace(role, **changes)


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


_CGROUP_ROOT = "/sys/fs/cgroup"


def _place_systemd_cgroup(container_id: str, spec: dict[str, Any]) -> None:
    """containerd writes ``cgroupsPath`` as ``slice:prefix:name`` under the
    kubelet's systemd cgroup driver; runsc without ``--systemd-cgroup`` (the
    only mode on cgroup v1) would make that a cgroup below its own, outside the
    pod's slice and its limits. Rewrite it to the scope's cgroupfs path when the
    pod's slice exists (``shim.task.cgroups``)."""
    linux = spec.get("linux") or {}
    path = str(linux.get("cgroupsPath") or "")
    scope = cgroups.systemd_cgroup(path)
    if scope is None:
        return
    parent = os.path.dirname(scope).lstrip("/")
    exists = any(os.path.isdir(os.path.join(_CGROUP_ROOT, hierarchy, parent))
                 for hierarchy in ("memory", "unified", ""))
    placed = cgroups.placed_in_slice(path, exists)
    if placed is None:
        log.warning("cgroupsPath %s names a slice that does not exist here; runsc will put the "
                    "sandbox below its own cgroup", path, extra={"container_id": container_id})
        return
    linux["cgroupsPath"] = placed
    log.info("cgroupsPath %s placed at %s", path, placed, extra={"container_id": container_id})


def _log_kubelet(socket: str, unanswered: bool, reason: str, pod: str | None) -> None:
    """A kubelet that has a socket but did not answer is worth a warning; no
    socket at all is a node without Kubernetes, and an answer is news."""
    level = logging.WARNING if unanswered and os.path.exists(socket) else logging.INFO
    log.log(level, "pod resources: %s", reason, extra={"pod": pod})
