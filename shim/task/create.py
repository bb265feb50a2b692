"""The Create path up to runsc: options → config, load spec → plan → write spec.

This is the seam between the task service and the GPU planner: the planner is
pure, so everything it needs (runsc's capabilities, the host's driver, device
nodes and CDI specs) is gathered here first and passed in as values.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import betterproto

from shim import bundle as bundle_io
from shim.api.containerd.task.v2 import CreateTaskRequest
from shim.config import RuntimeConfig, load_config, resolve_network
from shim.errors import FailedPrecondition, InvalidArgument
from shim.gpu.detect import gather_host_facts
from shim.gpu.plan import Plan, plan
from shim.runsc import (
    FLAG_PANIC_LOG,
    GlobalOptions,
    RunscCapabilities,
    check_flags,
    probe,
    resolve_binary,
)
from shim.task.container import CreateParams, mounts_from, runsc_log_path
from shim.task.stdio import StdioPaths

__all__ = ["plan_bundle", "prepare"]

log = logging.getLogger("shim.task")


async def prepare(req: CreateTaskRequest, *, namespace: str) -> CreateParams:
    """Everything Create decides before runsc runs; refusals raise here."""
    if req.checkpoint:
        raise InvalidArgument(f"container {req.id}: restoring from a checkpoint is not supported")
    options = req.options if betterproto.serialized_on_wire(req.options) else None
    config = load_config(options)
    caps = await probe(resolve_binary(config.binary_name))
    spec = bundle_io.load_spec(req.bundle)
    result = plan_bundle(spec, caps, config, container_id=req.id)
    if result.refusals:
        raise FailedPrecondition("; ".join(result.refusals))
    for warning in (*config.warnings, *result.warnings):
        log.warning(warning, extra={"container_id": req.id})
    if result.spec != spec:
        bundle_io.write_spec(req.bundle, result.spec)
    network = resolve_network(config.network, result.spec)
    runsc = _global_options(config, caps, result, namespace=namespace, network=network,
                            container_id=req.id, bundle=req.bundle)
    log.info("starting container with nvproxy" if result.nvproxy else "creating container",
             extra={"container_id": req.id, "nvproxy_enabled": str(result.nvproxy).lower(),
                    "network": network, "runsc": caps.describe(),
                    "gpu_reasons": "; ".join(result.decision.reasons)})
    return CreateParams(
        id=req.id, bundle=req.bundle, mounts=mounts_from(req.rootfs),
        stdio=StdioPaths(req.stdin, req.stdout, req.stderr, req.terminal), runsc=runsc,
    )


def plan_bundle(spec: dict[str, Any], caps: RunscCapabilities, config: RuntimeConfig, *,
                container_id: str) -> Plan:
    """The GPU plan for one spec; the ``plan`` command calls this too."""
    host = gather_host_facts(
        runsc_path=caps.path, runsc_version=caps.version, runsc_release=caps.release,
        runsc_flags=caps.flags, runsc_default_platform=caps.default_platform,
        supported_drivers=caps.supported_drivers, cdi_dirs=config.gpu.cdi_dirs,
        runsc_platforms=caps.platforms,
    )
    return plan(spec, host, config.gpu, container_id=container_id)


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
    opts = GlobalOptions(
        binary=caps.path, root=root, log=base.log, log_format=base.log_format, debug=base.debug,
        debug_log=base.debug_log, platform=platform, network=base.network, extra=base.extra,
    )
    check_flags(caps, opts.flag_names())
    return opts
