"""Show a ``Plan`` to people (``render_text``) and to tools (``render_json``).

The ``plan`` command prints these for the same ``Plan`` Create would act on;
``runsc_argv`` is the exact command line the caller would run.
"""

from __future__ import annotations

import difflib
import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from shim.gpu.plan import Plan

__all__ = ["render_json", "render_text", "spec_diff"]


def _pretty(spec: Mapping[str, Any]) -> list[str]:
    return json.dumps(spec, indent=2, sort_keys=True).splitlines(keepends=True)


def spec_diff(original: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """A unified diff of the two specs as sorted, indented JSON ("" if equal)."""
    lines = difflib.unified_diff(
        _pretty(original), _pretty(new), fromfile="config.json", tofile="config.json (planned)"
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _section(title: str, items: Sequence[str], mark: str) -> list[str]:
    if not items:
        return []
    return [f"{title}:", *(f"  {mark} {item}" for item in items)]


def render_text(plan: Plan, *, original_spec: Mapping[str, Any], runsc_argv: Sequence[str]) -> str:
    """Decision, reasons, refusals, warnings, notes, spec diff, runsc command."""
    decision = plan.decision
    verdict = f"GPU via nvproxy (mode {decision.mode})" if decision.gpu else "no GPU"
    outcome = "REFUSED: runsc will not be called" if plan.refusals else "ok"
    lines = [
        f"container: {plan.container_id} ({decision.role})",
        f"decision:  {verdict}",
        f"outcome:   {outcome}",
        *_section("reasons", decision.reasons, "-"),
        *_section("ignored (pod author's input)", decision.ignored, "~"),
        *([f"allocation: {decision.allocation}"] if decision.allocation else []),
        *_section("refusals", plan.refusals, "x"),
        *_section("warnings", plan.warnings, "!"),
        *_section("steps", plan.notes, "-"),
        "spec changes:",
    ]
    diff = spec_diff(original_spec, plan.spec)
    lines += [f"  {line}" for line in diff.splitlines()] if diff else ["  (none)"]
    lines += ["runsc command:", f"  {shlex.join(runsc_argv)}"]
    return "\n".join(lines) + "\n"


def render_json(
    plan: Plan, *, original_spec: Mapping[str, Any], runsc_argv: Sequence[str]
) -> dict[str, Any]:
    """One JSON-ready object for tools; ``spec`` is the spec Create writes."""
    return {
        "container_id": plan.container_id,
        "ok": plan.ok,
        "decision": {
            "gpu": plan.decision.gpu,
            "mode": plan.decision.mode,
            "role": plan.decision.role,
            "reasons": list(plan.decision.reasons),
            "ignored": list(plan.decision.ignored),
            "allocation": plan.decision.allocation,
        },
        "bad_input": plan.bad_input,
        "refusals": list(plan.refusals),
        "warnings": list(plan.warnings),
        "notes": list(plan.notes),
        "runsc_flags": dict(plan.runsc_flags),
        "runsc_argv": list(runsc_argv),
        "spec_changed": plan.spec != dict(original_spec),
        "spec": plan.spec,
    }
