"""Summaries of benchmark samples: median, p10/p90, min/max, and paired ratios."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["DASH", "TIMES", "Spread", "paired_ratios", "spread"]

# The report's typography, spelled as escapes for the linter's sake.
DASH, TIMES = "\u2013", "\u00d7"


@dataclass(frozen=True)
class Spread:
    median: float
    p10: float
    p90: float
    min: float
    max: float
    n: int

    def scaled(self, factor: float) -> Spread:
        return Spread(self.median * factor, self.p10 * factor, self.p90 * factor,
                      self.min * factor, self.max * factor, self.n)

    def cell(self, fmt: str = ".3f", unit: str = "") -> str:
        """`median unit (p10-p90; min-max)` with en dashes; the bands are left
        out for one sample."""
        head = f"{self.median:{fmt}}{unit}"
        if self.n < 2:
            return head
        return (f"{head} ({self.p10:{fmt}}{DASH}{self.p90:{fmt}}; "
                f"{self.min:{fmt}}{DASH}{self.max:{fmt}})")

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "p10": self.p10, "p90": self.p90,
                "min": self.min, "max": self.max, "n": self.n}


def _quantile(xs: Sequence[float], q: float) -> float:
    # Linear interpolation between closest ranks, like numpy's default: stable
    # for the small sample counts a benchmark run has.
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def spread(xs: Sequence[float]) -> Spread | None:
    if not xs:
        return None
    return Spread(statistics.median(xs), _quantile(xs, 0.1), _quantile(xs, 0.9),
                  min(xs), max(xs), len(xs))


def paired_ratios(a: Mapping[int, float], b: Mapping[int, float]) -> list[float]:
    """a[r]/b[r] for every round r both have: samples of one round were taken
    back to back, so their ratio is free of the machine's slower drift."""
    return [a[r] / b[r] for r in sorted(a.keys() & b.keys()) if b[r] > 0]
