"""The planner's working state, passed to every step.

``plan`` copies the caller's spec once into ``Context.spec``; steps edit that
copy and append to the accumulators. Nothing here outlives one ``plan`` call,
and ``plan`` freezes the result into a ``Plan``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from shim.gpu._bound import MAX_MESSAGE, clip
from shim.gpu.config import GpuConfig
from shim.gpu.facts import HostFacts, SandboxRole
from shim.gpu.request import GpuRequest

__all__ = ["Context", "Mode", "Step"]

# none: no GPU. cdi: GPUs reach the sandbox as device nodes (resolved by
# containerd, or by us from CDI names). hook: runsc's own nvidia-container-cli
# path, driven by the legacy prestart hook. driver: nvproxy on, no GPU named
# (a pod sandbox, NVIDIA_VISIBLE_DEVICES=none, policy always).
Mode = Literal["none", "cdi", "hook", "driver"]

# Refusals kept per plan; what a person needs is the first few causes.
MAX_REFUSALS = 20


@dataclass
class Context:
    spec: dict[str, Any]
    host: HostFacts
    config: GpuConfig
    container_id: str
    role: SandboxRole
    request: GpuRequest = field(default_factory=GpuRequest)
    gpu: bool = False
    mode: Mode = "none"
    reasons: list[str] = field(default_factory=list)
    flags: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    # The same refusals as (cause, fix), for callers that show them apart.
    problems: list[tuple[str, str]] = field(default_factory=list)
    # Whether a refusal is for malformed input (InvalidArgument) rather than
    # for the host's or the pod's state (FailedPrecondition).
    bad_input: bool = False
    dropped_refusals: int = 0
    # GPU signals the trust rules set aside (pod-author input in a pod).
    ignored: list[str] = field(default_factory=list)
    # How the grant compares with the kubelet's allocation (members only).
    allocation: str = ""

    def note(self, step: str, text: str) -> None:
        """Why a step did what it did, or nothing (nvidia's "nil modifier" log)."""
        self.notes.append(f"{step}: {text}")

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def refuse(self, cause: str, fix: str, *, bad_input: bool = False) -> None:
        """Every refusal names the container, the cause and the fix. Both are
        clipped and the count is capped, whatever the input held."""
        cause, fix = clip(cause, MAX_MESSAGE), clip(fix, MAX_MESSAGE)
        text = f"container {self.container_id}: {cause}. Fix: {fix}."
        self.bad_input = self.bad_input or bad_input
        if text in self.refusals:
            return
        if len(self.refusals) >= MAX_REFUSALS:
            self.dropped_refusals += 1
            return
        self.refusals.append(text)
        self.problems.append((cause, fix))

    def ignore(self, text: str) -> None:
        """A GPU signal the trust rules set aside; also a note of ``trust``."""
        if text not in self.ignored:
            self.ignored.append(text)
            self.note("trust", text)

    def has_flag(self, name: str) -> bool:
        return name in self.host.runsc_flags

    def set_flag(self, name: str, value: str) -> bool:
        """Only flags the probed binary lists; runsc exits 2 on any other."""
        if not self.has_flag(name):
            return False
        self.flags[name] = value
        return True

    @property
    def reason_text(self) -> str:
        return clip("; ".join(self.reasons), 400) or "no GPU signal"


Step = Callable[[Context], None]
