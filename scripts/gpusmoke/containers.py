"""The shim's plan for a bundle, and containers run through the shim with ctr
on the private containerd; how each outcome reads (ok / refused / failed).

The rootfs of every container is the host's own root, read-only, so no image
is pulled and the host's python3 and NVIDIA userspace are there to run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gpusmoke.bounded import Outcome, run
from gpusmoke.report import Step

__all__ = ["ANNOTATION", "Ask", "boot_log_hints", "classify", "container_env", "oci_bundle",
           "plan_step", "run_container"]

ANNOTATION = ("cdi.k8s.io/smoke", "nvidia.com/gpu=all")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PLAN_KEYS = ("ok", "decision", "refusals", "warnings", "runsc_flags", "runsc_argv")


class Ctr(Protocol):
    """tests/e2e/containerd.py's Ctr: argv for one daemon and namespace."""

    def argv(self, *args: str) -> list[str]: ...


@dataclass(frozen=True)
class Ask:
    """One container: its step name, id, command, runtime config and GPU request."""

    name: str
    cid: str
    argv: tuple[str, ...]
    config: Path
    gpu: str | None = None  # "cdi" (annotation), "env" (NVIDIA_VISIBLE_DEVICES) or None
    marker: str | None = None  # a line stdout must hold for "ok"
    label: str = ""


def container_env(facts: dict[str, Any], gpu: str | None) -> list[str]:
    env = [f"PATH={SYSTEM_PATH}", "HOME=/tmp"]
    libs = facts.get("nvidia_libs", {}).get("container_ld_library_path")
    if gpu and libs:
        # What nvidia-ctk's ldconfig hook would do for libraries ld.so does not know.
        env.append(f"LD_LIBRARY_PATH={libs}")
    if gpu == "env":
        env.append("NVIDIA_VISIBLE_DEVICES=all")
    return env


def oci_bundle(ctr_binary: Path, dest: Path, argv: Sequence[str], env: Sequence[str],
               annotations: dict[str, str], timeout: float) -> Path:
    """A bundle from ctr's default spec (`ctr oci spec`, no daemon needed) with
    the host's root as rootfs, as `ctr c create --rootfs /` would make it."""
    out = run([str(ctr_binary), "oci", "spec"], timeout=timeout)
    if not out.ok:
        raise RuntimeError(f"ctr oci spec {out.why()}")
    spec = json.loads(out.stdout)
    spec["process"]["args"], spec["process"]["env"] = list(argv), list(env)
    spec["root"] = {"path": "/", "readonly": True}
    spec["annotations"] = annotations
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text(json.dumps(spec, indent=2))
    return dest


def _gist(result: dict[str, Any]) -> str:
    if result["refusals"]:
        return "\n".join(result["refusals"])
    flags = " ".join(f"--{k}={v}" for k, v in result["runsc_flags"].items())
    return (f"decision gpu={result['decision']['gpu']} mode={result['decision']['mode']}"
            + (f"; runsc {flags}" if flags else ""))


def plan(shim: Path, bundle: Path, config: Path, cid: str,
         timeout: float) -> tuple[dict[str, Any] | None, str, str]:
    """The shim's plan as JSON (None when plan itself errs), a gist, and the text form."""
    base = [str(shim), "plan", str(bundle), "--config", str(config), "--id", cid]
    text = run(base, timeout=timeout)
    out = run([*base, "--json"], timeout=timeout)
    try:
        result: dict[str, Any] = json.loads(out.stdout)
    except ValueError:
        return None, out.why() if not out.ok else "plan printed no JSON", text.text
    return result, _gist(result), text.text


def plan_step(name: str, shim: Path, bundle: Path, config: Path, cid: str,
              timeout: float) -> Step:
    result, gist, text = plan(shim, bundle, config, cid, timeout)
    print(f"$ {shim.name} plan {bundle} --config {config} --id {cid}\n{text}", flush=True)
    status = "failed" if result is None else "ok" if result["ok"] else "refused"
    return Step(name, status, gist, output=text, data={"plan": result} if result else {})


class _Ran(Protocol):
    returncode: int | None
    stdout: str
    stderr: str


def classify(name: str, plan_result: dict[str, Any] | None, out: _Ran,
             marker: str | None) -> Step:
    """ok / refused / failed for one `ctr task start` run."""
    text = out.stdout + out.stderr
    ctr_error = [ln for ln in out.stderr.splitlines() if ln.startswith("ctr: ")]
    if out.returncode == 0 and (marker is None or marker in out.stdout):
        shown = [ln for ln in out.stdout.strip().splitlines() if ln != marker]
        return Step(name, "ok", "\n".join(shown[-8:]) or "exit 0", 0, text)
    if ctr_error:
        error = ctr_error[-1].removeprefix("ctr: ")
        if plan_result is not None and not plan_result["ok"]:
            return Step(name, "refused", "\n".join(plan_result["refusals"]) or error,
                        out.returncode, text)
        return Step(name, "failed", f"runsc/shim error: {error}", out.returncode, text)
    last = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()[-1]
    return Step(name, "failed", f"exited {out.returncode}: {last}", out.returncode, text)


def boot_log_hints(logs: Sequence[Path], limit: int = 15) -> str:
    """runsc boot log lines about the GPU or errors, without its flag and spec dumps."""
    lines: list[str] = []
    for p in sorted(logs):
        for ln in p.read_text(errors="replace").splitlines():
            head = re.match(r"([IWEF])\d{4} [^]]*\] (.*)", ln)
            if head is None or head.group(2).startswith(("Config.", "Args:", "Spec:")):
                continue
            if head.group(1) in "EF" or re.search(r"nvproxy|nvidia|unsupported|panic|error",
                                                  head.group(2), re.I):
                lines.append(ln)
    return "\n".join(lines[-limit:])


def _ctr(ctr: Ctr, *args: str, timeout: float = 15.0) -> Outcome:
    return run(ctr.argv(*args), timeout=timeout)


def _plan_of(ctr: Ctr, shim: Path, ask: Ask, plans: Path,
             timeout: float) -> tuple[dict[str, Any] | None, str]:
    info = _ctr(ctr, "c", "info", ask.cid)
    try:
        spec = json.loads(info.stdout)["Spec"]
    except (ValueError, KeyError):
        return None, f"ctr c info {info.why()}"
    bundle = plans / ask.cid
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(spec, indent=2))
    result, gist, _ = plan(shim, bundle, ask.config, ask.cid, timeout)
    return result, gist


def run_container(ctr: Ctr, shim: Path, ask: Ask, env: Sequence[str], *, runtime: Sequence[str],
                  timeout: float, workdir: Path, log_dir: Path) -> Step:
    """Create, plan, start (bounded) and always remove one container."""
    print(f"\n=== {ask.name}: {ask.label}", flush=True)
    logs_before = set(log_dir.rglob("*boot*"))
    annotation = ["--annotation", "=".join(ANNOTATION)] if ask.gpu == "cdi" else []
    env_args = [a for e in env for a in ("--env", e)]
    created = _ctr(ctr, "c", "create", *runtime, "--runtime-config-path", str(ask.config),
                   "--rootfs", "--read-only", *annotation, *env_args, "/", ask.cid, *ask.argv)
    if not created.ok:
        return Step(ask.name, "failed", f"ctr container create {created.why()}",
                    created.returncode, created.text)
    try:
        result, gist = _plan_of(ctr, shim, ask, workdir / "plans", timeout=30)
        print(f"plan: {gist}\n$ ctr task start {ask.cid}", flush=True)
        out = _ctr(ctr, "task", "start", ask.cid, timeout=timeout)
        sys_out = out.stdout + out.stderr
        print(sys_out, end="" if sys_out.endswith("\n") or not sys_out else "\n", flush=True)
        if out.timed_out:
            step = Step(ask.name, "failed", out.why(), None, out.text)
        else:
            step = classify(ask.name, result, out, ask.marker)
        step.seconds = out.seconds
        step.data = {"argv": list(ask.argv), "config": ask.config.name, "plan_gist": gist,
                     "plan": {k: result.get(k) for k in _PLAN_KEYS} if result else None}
        if step.status == "failed":
            hints = boot_log_hints(sorted(set(log_dir.rglob("*boot*")) - logs_before))
            if hints:
                print("runsc boot log (nvproxy/error lines):\n" + hints)
                step.output += "\n--- runsc boot log ---\n" + hints
        return step
    finally:
        _ctr(ctr, "task", "kill", "-s", "SIGKILL", ask.cid, timeout=10)
        _ctr(ctr, "task", "rm", "-f", ask.cid, timeout=20)
        _ctr(ctr, "c", "rm", ask.cid, timeout=10)
