"""``plan``: decide, rewrite and refuse a container spec for runsc with nvproxy.

Theory of operation. ``plan`` is a pure function of the spec, the ``HostFacts``
gathered by ``shim.gpu.detect``, the operator's ``GpuConfig`` and the
container's place in a pod. It deep-copies the spec once, runs a list of small
named steps over that copy, and freezes the outcome into a ``Plan``. The first
two steps (``detect``, ``decide``) read the GPU signals and choose a mode; the
mode picks the remaining steps, as the NVIDIA toolkit's modifier factory picks
modifiers. Every step is idempotent, so ``plan`` applied to its own output
changes nothing, and a step with nothing to do leaves a note saying why. Create
and the ``plan`` command both call this function, so the dry run shows exactly
what Create does.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from shim.gpu._checks import (
    add_nvproxy_flags,
    check_capabilities,
    check_driver_supported,
    check_mig,
    check_runsc_nvproxy,
    choose_platform,
)
from shim.gpu._context import Context, Mode, Step
from shim.gpu._decide import decide, detect
from shim.gpu._grant import check_allocation
from shim.gpu._rewrite import (
    clean_cdi_edits_for_runsc,
    keep_gpu_device_nodes,
    remove_legacy_hook,
    resolve_cdi,
    sync_visible_devices,
)
from shim.gpu._trust import drop_pod_runsc_annotation, void_untrusted_visible_devices
from shim.gpu.config import GpuConfig
from shim.gpu.facts import HostFacts, SandboxRole
from shim.gpu.request import POD_ANNOTATION

__all__ = ["PIPELINES", "POD_ANNOTATION", "Decision", "Mode", "Plan", "plan"]

# In every mode: what the pod's author could switch on behind the decision.
_HEAD: tuple[Step, ...] = (detect, decide, drop_pod_runsc_annotation,
                           void_untrusted_visible_devices)
_CHECKS_BEFORE: tuple[Step, ...] = (check_runsc_nvproxy, check_mig)
_CHECKS_AFTER: tuple[Step, ...] = (
    check_allocation,
    check_capabilities,
    check_driver_supported,
    choose_platform,
    add_nvproxy_flags,
)
PIPELINES: Mapping[Mode, tuple[Step, ...]] = MappingProxyType(
    {
        "none": (keep_gpu_device_nodes, choose_platform),
        "cdi": (
            *_CHECKS_BEFORE,
            resolve_cdi,
            remove_legacy_hook,
            keep_gpu_device_nodes,
            clean_cdi_edits_for_runsc,
            sync_visible_devices,
            *_CHECKS_AFTER,
        ),
        "hook": (
            *_CHECKS_BEFORE,
            keep_gpu_device_nodes,
            clean_cdi_edits_for_runsc,
            sync_visible_devices,
            *_CHECKS_AFTER,
        ),
        "driver": (
            *_CHECKS_BEFORE,
            keep_gpu_device_nodes,
            clean_cdi_edits_for_runsc,
            *_CHECKS_AFTER,
        ),
    }
)
# The order flags take on the command line, so argv is stable across runs.
_FLAG_ORDER = (
    "nvproxy",
    "nvproxy-docker",
    "nvproxy-driver-version",
    "nvproxy-allowed-driver-capabilities",
    "nvproxy-allow-unsupported-driver",
    "platform",
)


@dataclass(frozen=True)
class Decision:
    gpu: bool
    mode: Mode
    # Which rules fired (or why none did).
    reasons: tuple[str, ...]
    role: str
    # GPU signals set aside because, in a pod, they are the pod author's.
    ignored: tuple[str, ...] = ()
    # An app container's grant against the kubelet's allocation ("" if none).
    allocation: str = ""


@dataclass(frozen=True)
class Plan:
    """What Create will do: the spec to write, the global runsc flags to add
    before the subcommand, and why. Refusals mean: do not call runsc."""

    container_id: str
    spec: dict[str, Any]
    runsc_flags: Mapping[str, str]
    decision: Decision
    notes: tuple[str, ...]
    warnings: tuple[str, ...]
    refusals: tuple[str, ...]
    # Each refusal as (cause, fix), in the same order.
    problems: tuple[tuple[str, str], ...] = ()
    # Whether a refusal is for malformed input (InvalidArgument) rather than
    # for the state of the host, the pod or the config (FailedPrecondition).
    bad_input: bool = False

    @property
    def ok(self) -> bool:
        return not self.refusals

    @property
    def nvproxy(self) -> bool:
        return self.runsc_flags.get("nvproxy") == "true"



def _ordered(flags: dict[str, str]) -> Mapping[str, str]:
    rank = {name: i for i, name in enumerate(_FLAG_ORDER)}
    ordered = sorted(flags.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))
    return MappingProxyType(dict(ordered))


def _freeze(ctx: Context) -> Plan:
    return Plan(
        container_id=ctx.container_id,
        spec=ctx.spec,
        runsc_flags=_ordered(ctx.flags),
        decision=Decision(ctx.gpu, ctx.mode, tuple(ctx.reasons), ctx.role.kind,
                          tuple(ctx.ignored), ctx.allocation),
        notes=tuple(ctx.notes),
        warnings=tuple(ctx.warnings),
        refusals=tuple(_refusals(ctx)),
        problems=tuple(ctx.problems),
        bad_input=ctx.bad_input,
    )


def _refusals(ctx: Context) -> list[str]:
    if not ctx.dropped_refusals:
        return ctx.refusals
    return [*ctx.refusals, f"container {ctx.container_id}: {ctx.dropped_refusals} more "
                           "refusal(s) left out"]


def plan(
    spec: Mapping[str, Any],
    host: HostFacts,
    config: GpuConfig,
    *,
    container_id: str,
    sandbox: SandboxRole,
) -> Plan:
    """Plan one container. ``sandbox`` says where it sits in a pod (the caller
    reads that from the CRI annotations and what it knows of the pod's
    sandbox, ``shim.kube.pod``). ``spec`` is not changed."""
    work: dict[str, Any] = copy.deepcopy(dict(spec))
    ctx = Context(spec=work, host=host, config=config, container_id=container_id, role=sandbox)
    for step in _HEAD:
        step(ctx)
    for step in PIPELINES[ctx.mode]:
        step(ctx)
    return _freeze(ctx)
