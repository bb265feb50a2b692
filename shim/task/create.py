"""The Create path up to runsc: options → config, load spec → plan → write spec.

This is the seam between the task service and the GPU planner: the planner is
pure, so everything it needs (runsc's capabilities, the host's driver, device
nodes and CDI specs) is gathered here first and passed in as values.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import betterproto

from shim import bundle as bundle_io
from shim.api.containerd.task.v2 import CreateTaskRequest
from shim.config import RuntimeConfig, load_config, resolve_network
from shim.errors import FailedPrecondition, InvalidArgument
from shim.gpu.detect import gather_host_facts
from shim.gpu.facts import SandboxRole
from shim.gpu.plan import POD_ANNOTATION, Plan, plan
from shim.runsc import (
    FLAG_PANIC_LOG,
    GlobalOptions,
    RunscCapabilities,
    check_flags,
    probe,
    resolve_binary,
)
from shim.task.container import CreateParams, mounts_from, runsc_log_path
from shim.task.pod import PodRole, Sandbox, pod_role
from shim.task.stdio import StdioPaths

__all__ = ["Prepared", "plan_bundle", "prepare"]

log = logging.getLogger("shim.task")


@dataclass(frozen=True)
class Prepared:
    params: CreateParams
    # Set when this container boots a pod's sandbox: what its members will join.
    sandbox: Sandbox | None


async def prepare(req: CreateTaskRequest, *, namespace: str,
                  sandboxes: Mapping[str, Sandbox]) -> Prepared:
    """Everything Create decides before runsc runs; refusals raise here."""
    if req.checkpoint:
        raise InvalidArgument(f"container {req.id}: restoring from a checkpoint is not supported")
    options = req.options if betterproto.serialized_on_wire(req.options) else None
    config = load_config(options)
    caps = await probe(resolve_binary(config.binary_name))
    spec = bundle_io.load_spec(req.bundle)
    role = pod_role(spec)
    joined = _joined_sandbox(req.id, role, sandboxes)
    sandbox_role = await _sandbox_role(role, joined, config, spec)
    result = plan_bundle(spec, caps, config, container_id=req.id, sandbox=sandbox_role)
    if result.refusals:
        raise FailedPrecondition("; ".join(result.refusals))
    for warning in (*config.warnings, *result.warnings):
        log.warning(warning, extra={"container_id": req.id})
    if result.spec != spec:
        bundle_io.write_spec(req.bundle, result.spec)
    if joined is not None:
        runsc = _member_options(joined.runsc, req.bundle)
    else:
        network = resolve_network(config.network, result.spec)
        runsc = _global_options(config, caps, result, namespace=namespace, network=network,
                                container_id=req.id, bundle=req.bundle)
    nvproxy = joined.nvproxy if joined is not None else result.nvproxy
    log.info("starting container with nvproxy" if nvproxy else "creating container",
             extra={"container_id": req.id, "nvproxy_enabled": str(nvproxy).lower(),
                    "role": role.kind, "network": runsc.network, "runsc": caps.describe(),
                    "gpu_reasons": "; ".join(result.decision.reasons)})
    resources = ((result.spec.get("linux") or {}).get("resources") or {})
    params = CreateParams(
        id=req.id, bundle=req.bundle, mounts=mounts_from(req.rootfs),
        stdio=StdioPaths(req.stdin, req.stdout, req.stderr, req.terminal), runsc=runsc,
        sandbox_id=joined.id if joined is not None else None,
        cgroups_path=str((result.spec.get("linux") or {}).get("cgroupsPath") or ""),
        memory_limit=(resources.get("memory") or {}).get("limit"),
    )
    booted = Sandbox(req.id, runsc, result.nvproxy) if role.kind == "sandbox" else None
    return Prepared(params, booted)


def _joined_sandbox(container_id: str, role: PodRole,
                    sandboxes: Mapping[str, Sandbox]) -> Sandbox | None:
    if role.kind != "member":
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
        assert joined is not None
        return SandboxRole.member(joined.id, sandbox_nvproxy=joined.nvproxy)
    if role.kind == "standalone":
        return SandboxRole.standalone()
    annotations = spec.get("annotations") or {}
    if config.gpu.nvproxy != "auto" or POD_ANNOTATION in annotations \
            or not (role.pod_name and role.pod_namespace):
        return SandboxRole.pod_sandbox()
    # The pause container carries no GPU request; ask the kubelet what the pod got.
    from shim.kubelet import lookup_pod_gpus

    found = await lookup_pod_gpus(config.pod_resources_socket, role.pod_name,
                                  role.pod_namespace, vendors=tuple(config.gpu.cdi_vendors))
    log.info("pod resources: %s", found.reason, extra={"pod": role.pod_name})
    has_gpus = None if found.devices is None else bool(found.devices)
    return SandboxRole.pod_sandbox(pod_has_gpus=has_gpus)


def plan_bundle(spec: dict[str, Any], caps: RunscCapabilities, config: RuntimeConfig, *,
                container_id: str, sandbox: SandboxRole | None = None) -> Plan:
    """The GPU plan for one spec; the ``plan`` command calls this too."""
    host = gather_host_facts(
        runsc_path=caps.path, runsc_version=caps.version, runsc_release=caps.release,
        runsc_flags=caps.flags, runsc_default_platform=caps.default_platform,
        supported_drivers=caps.supported_drivers, cdi_dirs=config.gpu.cdi_dirs,
        runsc_platforms=caps.platforms,
    )
    return plan(spec, host, config.gpu, container_id=container_id, sandbox=sandbox)


def _member_options(sandbox: GlobalOptions, bundle: str) -> GlobalOptions:
    """A member is driven with its sandbox's flags; only runsc's command log is
    its own. The panic log stays the sandbox's: the sandbox process, started
    with the pause container's flags, is what writes it when it crashes."""
    return replace(sandbox, log=runsc_log_path(bundle))


def _global_options(config: RuntimeConfig, caps: RunscCapabilities, result: Plan, *,
                    namespace: str, network: str, container_id: str,
                    bundle: str) -> GlobalOptions:
    flags = dict(result.runsc_flags)
    platform = flags.pop("platform", None) or config.platform
    if caps.has_flag(FLAG_PANIC_LOG):
        # Where a crashing sandbox says why; RunscError reads it back.
        flags[FLAG_PANIC_LOG] = os.path.join(bundle, "runsc-panic.log")
    # A root of its own per sandbox: runsc resolves ids by prefix, so with
    # `web-1` gone and `web-10` alive in one root, `runsc delete web-1` would
    # find web-10 (DESIGN.md, facts measured here).
    root = os.path.join(config.runsc_root(namespace), container_id)
    base = config.global_options(namespace=namespace, network=network,  # type: ignore[arg-type]
                                 log=runsc_log_path(bundle), extra=flags)
    debug_log = base.debug_log
    if base.debug and debug_log is None:
        # `debug = true` alone: runsc's per-command debug logs under the root,
        # one folder per sandbox, outside the sandbox's own runsc state.
        debug_log = os.path.join(config.root, "debug", namespace, container_id) + "/"
    elif debug_log is not None:
        debug_log = debug_log.replace("%ID%", container_id)
    opts = GlobalOptions(
        binary=caps.path, root=root, log=base.log, log_format=base.log_format, debug=base.debug,
        debug_log=debug_log, platform=platform, network=base.network, extra=base.extra,
    )
    check_flags(caps, opts.flag_names())
    return opts
