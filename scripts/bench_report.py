"""The benchmark's report: machine facts, Markdown tables, and the JSON form."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

from bench_procs import Mem
from bench_rows import FLOOR, GO, OURS, Result, Sleepers
from bench_stats import DASH, TIMES, Spread, paired_ratios, spread
from bench_trace import Overhead, Timeline

__all__ = ["machine_facts", "render", "to_json"]

# Goals from the design's performance budgets: (row, comparison, ratio).
GOALS = {"latency": ("≤", 1.0), "exec": ("≤", 1.0), "memory": ("≤", 1.0),
         "sleepers": ("≤", 1.0), "parallel": ("≤", 1.0), "throughput": ("≥", 1.5)}


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except OSError as e:
        return f"unknown ({e.strerror})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) \
        else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _cgroups() -> str:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "cgroup v2"
    if Path("/sys/fs/cgroup/unified").exists():
        return "cgroup v1 (hybrid, v2 mounted at /sys/fs/cgroup/unified)"
    return "cgroup v1"


def _mem_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def machine_facts(runsc: Path, containerd: Mapping[str, Path]) -> dict[str, object]:
    versions = {}
    for v, binary in containerd.items():
        line = _first_line([str(binary), "--version"])
        m = re.search(r"\b(\d+\.\d+\.\d+\S*)", line)
        versions[v] = m.group(1) if m else line
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": round(_mem_gib(), 1),
        "kernel": platform.release(), "cgroups": _cgroups(),
        "runsc": _first_line([str(runsc), "--version"]).removeprefix("runsc version "),
        "containerd": versions, "python": platform.python_version(),
        "load_at_start": os.getloadavg(),
    }


# --- cells -------------------------------------------------------------------

def _samples(r: Result, row: str, v: str) -> Spread | None:
    return spread(list(r.samples.get(row, {}).get(v, {}).values()))


def _cell(s: Spread | None, fmt: str, failed: bool) -> str:
    if s is None:
        return "FAILED" if failed else "—"
    return s.cell(fmt)


def _ratio_cell(xs: list[float]) -> str:
    s = spread(xs)
    if s is None:
        return "—"
    if s.n < 2:
        return f"{s.median:.2f}{TIMES}"
    return f"{s.median:.2f}{TIMES} ({s.p10:.2f}{DASH}{s.p90:.2f})"


def _goal(row: str) -> str:
    if row not in GOALS:
        return "—"
    op, x = GOALS[row]
    return f"{op} {x:.2f}{TIMES}"


def _mib(ms: list[Mem], attr: str) -> float:
    return sum(int(getattr(m, attr)) for m in ms) / 2**20


def _memory_cell(m: Mapping[str, list[Mem]] | None) -> tuple[str, float | None]:
    if not m or not m.get("task"):
        return "—", None
    task, shared = m["task"], m.get("shared", [])
    total = _mib(task, "pss") + _mib(shared, "pss")
    cell = (f"PSS {total:.1f}: serving it RSS {_mib(task, 'rss'):.1f} / PSS "
            f"{_mib(task, 'pss'):.1f} / USS {_mib(task, 'uss'):.1f}")
    if shared:
        cell += (f"; shared ({len(shared)}) RSS {_mib(shared, 'rss'):.1f} / PSS "
                 f"{_mib(shared, 'pss'):.1f} / USS {_mib(shared, 'uss'):.1f}")
    return cell, total


def _sleepers_cell(s: Sleepers | None) -> tuple[str, float | None]:
    if s is None:
        return "—", None
    cell = f"{s.per_container_pss_mib:.1f} (total {s.total_pss_mib:.0f} in {s.processes} processes"
    if s.shared_pss_mib:
        cell += f"; shared {s.shared_pss_mib:.1f}"
    return cell + ")", s.per_container_pss_mib


def _main_table(r: Result, args: object) -> list[str]:
    a = vars(args)
    failed = {v: r.failures.get(v, {}) for v in (OURS, GO, FLOOR)}
    lines = ["| measure | this shim | Go shim | ratio | goal |", "|---|---|---|---|---|"]

    def sampled(row: str, title: str, fmt: str) -> None:
        if row not in r.samples and not any(row in f for f in failed.values()):
            return
        ours, go = _samples(r, row, OURS), _samples(r, row, GO)
        rounds = r.samples.get(row, {})
        ratio = _ratio_cell(paired_ratios(rounds.get(OURS, {}), rounds.get(GO, {})))
        lines.append(f"| {title} | {_cell(ours, fmt, row in failed[OURS])} | "
                     f"{_cell(go, fmt, row in failed[GO])} | {ratio} | {_goal(row)} |")

    sampled("latency", f"`ctr run --rm … echo`, s (n={a['runs']})", ".3f")
    if FLOOR in r.samples.get("latency", {}):
        lines.append(f"| floor: `runsc run` alone, s | "
                     f"{_cell(_samples(r, 'latency', FLOOR), '.3f', False)} | | | |")
    sampled("exec", f"`ctr task exec … true`, s (n={a['exec_runs']})", ".3f")
    if r.memory:
        (oc, ot), (gc, gt) = _memory_cell(r.memory.get(OURS)), _memory_cell(r.memory.get(GO))
        ratio = f"{ot / gt:.2f}{TIMES} (PSS)" if ot and gt else "—"
        lines.append(f"| one sleeping container: shim processes, MiB | {oc} | {gc} | {ratio} "
                     f"| {_goal('memory')} |")
    if r.sleepers:
        (oc, op), (gc, gp) = (_sleepers_cell(r.sleepers.get(OURS)),
                              _sleepers_cell(r.sleepers.get(GO)))
        ratio = f"{op / gp:.2f}{TIMES}" if op and gp else "—"
        lines.append(f"| {a['sleepers']} sleeping containers: PSS of all shim processes per "
                     f"container, MiB | {oc} | {gc} | {ratio} | {_goal('sleepers')} |")
    sampled("parallel", f"{a['parallel']} {TIMES} `ctr run --rm` in parallel, wall s "
            f"({a['parallel_rounds']} rounds)", ".2f")
    sampled("throughput", f"stdout, {a['throughput_mib']} MiB `dd` through `ctr run`, MiB/s "
            f"({a['throughput_runs']} runs)", ".0f")
    sampled("cpu", f"CPU (user+sys) of shim processes per container, ms (n={a['runs']})", ".1f")
    sampled("runsc-cpu", "for reference: CPU of the runsc calls per container, ms", ".1f")
    first = r.extra.get("cpu_first_ms")
    if isinstance(first, dict) and first:
        cells = [f"{first[v]:.0f}" if v in first else "—" for v in (OURS, GO)]
        lines.append(f"| CPU of the first container after containerd started, ms | "
                     f"{cells[0]} | {cells[1]} | | |")
    return lines


def _timeline_table(tl: Mapping[str, Timeline]) -> list[str]:
    rows = {v: t.rows() for v, t in tl.items()}
    counts = {v: len(t.runs) for v, t in tl.items()}
    labels = sorted({k for r in rows.values() for k in r},
                    key=lambda k: min(r[k][0] for r in rows.values() if k in r))
    lines = ["| event (ms after `ctr run` started) | this shim | Go shim |", "|---|---|---|"]

    def cell(v: str, label: str) -> str:
        if label not in rows.get(v, {}):
            return ""
        b, e, n = rows[v][label]
        seen = "" if n == counts[v] else f" ({n}/{counts[v]} runs)"
        return f"{b:.0f}{DASH}{e:.0f}{seen}"

    for label in labels:
        lines.append(f"| {label} | {cell(OURS, label)} | {cell(GO, label)} |")

    def derived(f: str) -> str:
        x = getattr(tl[OURS], f)() if OURS in tl else None
        y = getattr(tl[GO], f)() if GO in tl else None
        return " | ".join("" if z is None else f"{z:.0f}" for z in (x, y))

    lines.append(f"| `ctr run` returns | {derived('ctr_exit_ms')} |")
    lines.append(f"| last runsc call before that ends → `ctr run` returns | "
                 f"{derived('tail_ms')} |")
    return lines


def render(facts: Mapping[str, object], results: list[Result], args: object,
           imports: Mapping[str, str | float]) -> str:
    a = vars(args)
    load = facts.get("load_at_start")
    load_end = facts.get("load_at_end")
    cd_versions = facts["containerd"]
    assert isinstance(cd_versions, dict)
    out = [
        f"### scripts/bench, {facts['date']}",
        "",
        f"Machine: {facts['cpu']}, {facts['cores']} cores, {facts['memory_gib']} GiB, Linux "
        f"{facts['kernel']}, {facts['cgroups']}; load average {_load(load)} at the start, "
        f"{_load(load_end)} at the end. runsc {facts['runsc']} "
        f"(`{' '.join(a['flags'])}`), busybox image, Python {facts['python']}.",
        f"Cells: median (p10{DASH}p90; min{DASH}max). Ratio: this shim / Go shim, the median "
        f"(p10{DASH}p90) of the ratios of samples taken in the same round.",
    ]
    for r in results:
        out += ["", f"#### containerd {cd_versions.get(r.version, r.version)}", ""]
        out += _main_table(r, args)
        tl = r.extra.get("timeline")
        if isinstance(tl, dict) and any(t.runs for t in tl.values()):
            out += ["", f"Per-phase timeline: median begin{DASH}end of each call over "
                    f"{max(len(t.runs) for t in tl.values())} traced runs per shim.", ""]
            out += _timeline_table(tl)
        ov, own = r.extra.get("overhead"), r.extra.get("wrapper_cpu_ms")
        if isinstance(ov, Overhead):
            cpu = (f"; each runsc wrapper used {own:.1f} ms CPU in the shim's cgroup, "
                   "taken out of the CPU row" if isinstance(own, float) else "")
            out += ["", f"Trace wrappers (timeline and CPU rows only) add {ov.run_ms:.1f} ms "
                    f"to each runsc call and {ov.shim_ms:.1f} ms before each shim action "
                    f"(wall, against the bare binary){cpu}."]
        for v, rows in r.failures.items():
            for row, why in rows.items():
                out.append(f"\nFAILED: {v}, {row}: {why}")
        if r.leftovers:
            out.append("\nLEFTOVERS (removed): " + "; ".join(r.leftovers))
    if imports:
        out += ["", _imports_line(imports)]
    return "\n".join(out) + "\n"


def _load(x: object) -> str:
    return f"{x[0]:.2f}" if isinstance(x, tuple | list) and x else "?"


def _imports_line(imports: Mapping[str, str | float]) -> str:
    if "error" in imports:
        return f"Start-path import cost: failed: {imports['error']}"
    return (f"Start-path import cost (`python -X importtime`, {imports['modules']}): "
            f"{float(imports['cumulative_ms']):.1f} ms cumulative; wall "
            f"{float(imports['wall_import_ms']):.0f} ms vs a bare interpreter's "
            f"{float(imports['wall_bare_ms']):.0f} ms.")


def to_json(facts: Mapping[str, object], results: list[Result], args: object,
            imports: Mapping[str, str | float]) -> dict[str, object]:
    def summary(r: Result) -> dict[str, object]:
        rows: dict[str, object] = {}
        for row, by_v in r.samples.items():
            entry: dict[str, object] = {
                v: {"samples": [by_v[v][k] for k in sorted(by_v[v])],
                    "summary": (s.as_dict() if (s := spread(list(by_v[v].values()))) else None)}
                for v in by_v}
            ratios = spread(paired_ratios(by_v.get(OURS, {}), by_v.get(GO, {})))
            if ratios is not None:
                entry["ratio"] = ratios.as_dict()
            rows[row] = entry
        extra: dict[str, object] = {}
        for k, val in r.extra.items():
            if isinstance(val, dict) and all(isinstance(t, Timeline) for t in val.values()):
                extra[k] = {v: t.as_dict() for v, t in val.items()}
            elif isinstance(val, Overhead):
                extra[k] = vars(val)
            else:
                extra[k] = val
        return {"rows": rows,
                "memory": {v: {k: [m.as_dict() for m in ms] for k, ms in by.items()}
                           for v, by in r.memory.items()},
                "sleepers": {v: {**vars(x), "per_container_pss_mib": x.per_container_pss_mib}
                             for v, x in r.sleepers.items()}, **extra, "failures": r.failures,
                "leftovers": r.leftovers}

    return {"machine": dict(facts), "args": {k: v for k, v in vars(args).items()
                                             if k != "json"},
            "containerd": {r.version: summary(r) for r in results}, "imports": dict(imports)}
