"""critest's ginkgo JSON reports, one per runtime handler, side by side.

Pure: JSON in, rows, totals and text out; no processes, no files. scripts/conformance
runs critest and feeds its reports here.

A ginkgo v2 JSON report is a list of suite reports; each has ``SpecReports``,
one per node that ran or could have run. Only ``It`` nodes are specs; a failed
suite-level node (BeforeSuite, ...) is kept apart, as it fails the whole run.
A spec that called ``Skip()`` is ``skipped`` with the reason as its failure
message; one that a focus or skip filter left out is ``skipped`` with no message,
and counts as not run here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BASELINE",
    "FAILED_STATES",
    "NOT_RUN",
    "Comparison",
    "Run",
    "SpecResult",
    "compare",
    "parse_report",
    "render",
    "spec_name",
    "to_json",
]

BASELINE = "runc"
NOT_RUN = "not run"
# ginkgo's SpecState names (types.SpecState) that mean the spec did not pass.
FAILED_STATES = frozenset({"failed", "panicked", "interrupted", "aborted", "timedout"})
_KNOWN_STATES = FAILED_STATES | {"passed", "skipped", "pending"}


@dataclass(frozen=True)
class SpecResult:
    """One spec's outcome with one handler."""

    name: str
    state: str  # passed, failed, skipped, timedout, ... or NOT_RUN
    seconds: float = 0.0
    message: str = ""  # the failure or skip message, first lines only
    location: str = ""  # file:line of the It node in critest's source
    node: str = ""  # where it failed when not in the It itself, e.g. AfterEach

    @property
    def failed(self) -> bool:
        return self.state in FAILED_STATES

    @property
    def reason(self) -> str:
        """One line for the report: the gRPC error when the message holds one
        (ginkgo puts it under "Unexpected error:" and a Go type), else the
        message's lines joined."""
        lines = [line.strip() for line in self.message.splitlines() if line.strip()]
        grpc = next((line for line in lines if "rpc error:" in line), None)
        return grpc or " ".join(lines)


@dataclass(frozen=True)
class Run:
    """A parsed report: the specs by name, and suite-level failures."""

    specs: dict[str, SpecResult]
    suite_failures: tuple[str, ...] = ()
    seconds: float = 0.0


def _message(failure: Any, lines: int) -> str:
    if not isinstance(failure, Mapping):
        return ""
    text = str(failure.get("Message") or "").strip()
    return "\n".join(text.splitlines()[:lines])


def _location(loc: Any) -> str:
    if not isinstance(loc, Mapping) or not loc.get("FileName"):
        return ""
    name = str(loc["FileName"])
    # Keep the path from the repository's own folders on (pkg/validate/...).
    for marker in ("/pkg/", "/cmd/"):
        if marker in name:
            name = name[name.index(marker) + 1:]
            break
    return f"{name}:{loc.get('LineNumber', 0)}"


def spec_name(report: Mapping[str, Any]) -> str:
    """The full text ginkgo prints: container texts, then the It's own text."""
    texts = [str(t) for t in report.get("ContainerHierarchyTexts") or [] if t]
    return " ".join([*texts, str(report.get("LeafNodeText") or "")]).strip()


def parse_report(data: Any, *, message_lines: int = 6) -> Run:
    """A ginkgo v2 JSON report (as loaded by json.load) → a ``Run``.

    Refuses, naming the field, anything that is not a list of suite reports
    with SpecReports, so a truncated or foreign file is not read as "no specs".
    """
    if not isinstance(data, list):
        raise ValueError("ginkgo JSON report: expected a list of suite reports at the top, "
                         f"got {type(data).__name__}")
    found: list[SpecResult] = []
    suite_failures: list[str] = []
    seconds = 0.0
    for i, suite in enumerate(data):
        if not isinstance(suite, Mapping) or not isinstance(suite.get("SpecReports"), list):
            raise ValueError(f"ginkgo JSON report: suite {i} has no SpecReports list")
        seconds += float(suite.get("RunTime") or 0) / 1e9
        for report in suite["SpecReports"]:
            state = str(report.get("State") or "")
            if state not in _KNOWN_STATES:
                raise ValueError(f"ginkgo JSON report: unknown State {state!r} "
                                 f"for {spec_name(report)!r}")
            message = _message(report.get("Failure"), message_lines)
            if report.get("LeafNodeType") != "It":
                if state in FAILED_STATES:
                    suite_failures.append(f"{report.get('LeafNodeType')}: {message}")
                continue
            if state == "skipped" and not message:
                state = NOT_RUN
            failure = report.get("Failure") or {}
            node = str(failure.get("FailureNodeType") or "") if state in FAILED_STATES else ""
            found.append(SpecResult(spec_name(report), state,
                                    float(report.get("RunTime") or 0) / 1e9, message,
                                    _location(report.get("LeafNodeLocation")),
                                    "" if node == "It" else node))
    # Two specs with the same text (critest has some) are told apart by source line.
    counts = Counter(r.name for r in found)
    specs = {}
    for r in found:
        name = r.name if counts[r.name] == 1 else f"{r.name} ({r.location})"
        specs[name] = SpecResult(name, r.state, r.seconds, r.message, r.location, r.node)
    return Run(specs, tuple(suite_failures), seconds)


@dataclass
class Comparison:
    """Handlers' runs side by side, first handler first."""

    handlers: tuple[str, ...]
    rows: list[tuple[str, dict[str, SpecResult]]] = field(default_factory=list)

    def result(self, name: str, handler: str) -> SpecResult:
        for row_name, results in self.rows:
            if row_name == name:
                return results.get(handler, SpecResult(name, NOT_RUN))
        raise KeyError(name)

    def totals(self, handler: str) -> dict[str, int]:
        """passed / failed / skipped counts (ginkgo's failure kinds count as failed)."""
        counts: Counter[str] = Counter()
        for _, results in self.rows:
            r = results.get(handler)
            if r is None or r.state == NOT_RUN:
                continue
            counts["failed" if r.failed else r.state] += 1
        return {k: counts.get(k, 0) for k in ("passed", "failed", "skipped", "pending")
                if k != "pending" or counts.get(k)}

    def differences(self, good: str, bad: str) -> list[str]:
        """Specs that pass with `good` and do not pass (fail or skip) with `bad`."""
        return [name for name, results in self.rows
                if results.get(good, SpecResult(name, NOT_RUN)).state == "passed"
                and results.get(bad, SpecResult(name, NOT_RUN)).state not in ("passed", NOT_RUN)]


def compare(runs: Mapping[str, Run]) -> Comparison:
    """One row per spec any handler knows, sorted by name."""
    handlers = tuple(runs)
    names = sorted({name for run in runs.values() for name in run.specs})
    comparison = Comparison(handlers)
    for name in names:
        comparison.rows.append((name, {h: runs[h].specs[name] for h in handlers
                                       if name in runs[h].specs}))
    return comparison


def _cell(result: SpecResult | None) -> str:
    if result is None or result.state == NOT_RUN:
        return "-"
    return result.state


def _shorten(text: str, width: int) -> str:
    return text if width <= 0 or len(text) <= width else text[:width - 1] + "…"


def render(comparison: Comparison, *, title: str = "", name_width: int = 0,
           show_not_run: bool = False) -> str:
    """The side-by-side table, the totals, and the lists of differences (text)."""
    handlers = comparison.handlers
    widths = [max(len(h), 8) for h in handlers]
    lines = [title] if title else []
    head = "  ".join(h.ljust(w) for h, w in zip(handlers, widths, strict=True))
    lines += [f"{head}  spec", "  ".join("-" * w for w in widths) + "  ----"]
    for name, results in comparison.rows:
        if not show_not_run and all(_cell(results.get(h)) == "-" for h in handlers):
            continue
        cells = "  ".join(_cell(results.get(h)).ljust(w) for h, w in zip(handlers, widths,
                                                                        strict=True))
        lines.append(f"{cells}  {_shorten(name, name_width)}")
    lines.append("")
    for handler in handlers:
        totals = comparison.totals(handler)
        lines.append(f"{handler}: " + ", ".join(f"{n} {k}" for k, n in totals.items()))
    for good, bad in _pairs(handlers):
        diff = comparison.differences(good, bad)
        lines += ["", f"passes with {good}, not with {bad} ({len(diff)}):"]
        for name in diff:
            r = comparison.result(name, bad)
            where = f" in {r.node}" if r.node else ""
            lines.append(f"  [{r.state}{where}] {name}")
            if r.reason:
                lines.append(f"      {_shorten(r.reason, 200)}")
    return "\n".join(lines)


def _pairs(handlers: Sequence[str]) -> Iterable[tuple[str, str]]:
    """(baseline, other) for every other handler, then the reverse direction."""
    if BASELINE not in handlers:
        return []
    others = [h for h in handlers if h != BASELINE]
    return [(BASELINE, h) for h in others] + [(h, BASELINE) for h in others]


def to_json(comparison: Comparison) -> dict[str, Any]:
    """The comparison as plain data for --json."""
    pairs = list(_pairs(comparison.handlers))
    return {
        "handlers": list(comparison.handlers),
        "totals": {h: comparison.totals(h) for h in comparison.handlers},
        "differences": {f"passes with {g}, not with {b}": comparison.differences(g, b)
                        for g, b in pairs},
        "specs": [{"name": name, "results": {
            h: {"state": r.state, "seconds": round(r.seconds, 3), "message": r.message,
                "location": r.location, "failed_in": r.node}
            for h, r in results.items()}} for name, results in comparison.rows],
    }
