"""The smoke run's record: one ``Step`` per thing tried, the host facts, and
the SUMMARY. The JSON file is rewritten after every step, so a run cut short
from outside still leaves what it found."""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = ["HARNESS", "Report", "Step", "Tee"]

# A failure of one of these means the script could not do its job (exit 1);
# any other step's failure is a finding about the host.
HARNESS = ("install-deps", "cdi-spec", "containerd", "cleanup")
STATUSES = ("ok", "refused", "failed", "skipped")


@dataclass
class Step:
    name: str
    status: str  # one of STATUSES
    detail: str = ""
    exit_code: int | None = None
    output: str = ""
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    facts: dict[str, Any] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    workdir: str = ""
    leftovers: list[str] = field(default_factory=list)
    interrupted: bool = False
    error: str = ""
    json_paths: list[Path] = field(default_factory=list)

    def add(self, step: Step) -> Step:
        step.seconds = round(step.seconds, 2)
        self.steps.append(step)
        print(f"--> {step.name}: {step.status}" + (f": {step.detail}" if step.detail else ""),
              flush=True)
        self.save()
        return step

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)

    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        harness_failed = any(s.name in HARNESS and s.status == "failed" for s in self.steps)
        return 1 if self.error or harness_failed else 0

    def summary(self, head: Sequence[str] = ()) -> str:
        lines = ["", "=== SUMMARY", *(f"  {line}" for line in head)]
        for s in self.steps:
            wrapped = [w for ln in (s.detail or "-").splitlines()
                       for w in textwrap.wrap(ln, 76, break_on_hyphens=False)] or ["-"]
            lines.append(f"  {s.name:<14} {s.status.upper():<8} {wrapped[0]}")
            lines += [f"  {'':<14} {'':<8} {w}" for w in wrapped[1:]]
        if self.error:
            lines.append(f"  error: {self.error}")
        code = self.exit_code()
        verdict = {0: "ran and reported", 1: "the smoke script itself failed",
                   130: "interrupted"}[code]
        lines.append(f"result: {verdict} (exit {code})")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code(), "interrupted": self.interrupted,
                "error": self.error, "workdir": self.workdir, "facts": self.facts,
                "steps": [asdict(s) for s in self.steps], "leftovers": self.leftovers}

    def save(self) -> None:
        text = json.dumps(self.to_json(), indent=2, default=str) + "\n"
        for path in self.json_paths:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)


class Tee:
    """A text stream that writes to several (the terminal and a results file)."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()

    def isatty(self) -> bool:
        return False
