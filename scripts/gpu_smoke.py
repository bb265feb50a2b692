"""GPU smoke test behind scripts/gpu-smoke (run that as root: it installs first).

On a GPU host it records what containerd-shim-gvisorgpu-v1 does there, end to
end: host facts (kernel and whether it is gVisor itself, the NVIDIA driver as
/proc and nvidia-smi see it, the GPUs, /dev/nvidia* with their numbers, where
the driver's libraries are), whether runsc can run a sandbox here at all, the
shim's `doctor`, its `plan` for a CDI request and for NVIDIA_VISIBLE_DEVICES=all,
then containers through the shim on a private containerd: nvidia-smi with the
host driver as is, a plain container, and nvidia-smi plus a CUDA driver-API
check with nvproxy's driver ABI forced to the newest this runsc supports.

Every command is bounded and the run keeps to --budget seconds; a refusal or a
runsc failure is an outcome, reported in the SUMMARY. Exit 0 when the script
ran and reported, 1 when it could not do its job (not root, no runsc,
containerd would not start, leftovers), 130 when interrupted. Everything
started is stopped on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[0:0] = [str(REPO), str(REPO / "scripts")]

import psutil  # noqa: E402
from gpusmoke import bounded, cdi, containers, host, logs  # noqa: E402
from gpusmoke.containers import Ask  # noqa: E402
from gpusmoke.report import Report, Step, Tee  # noqa: E402

from tests import paths  # noqa: E402
from tests.e2e import containerd as cd  # noqa: E402
from tests.e2e import leftovers  # noqa: E402

CLEANUP_RESERVE = 60.0
RESULT_FILES = ("gpu-smoke.json", "gpu-smoke.txt", "gpu-smoke-logs.tar.gz")


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


class Smoke:
    """One run: the report, the time budget, the private containerd and its files."""

    def __init__(self, args: argparse.Namespace, report: Report, runsc: Path) -> None:
        self.args, self.report, self.runsc = args, report, runsc
        self.budget = bounded.Budget(args.budget, CLEANUP_RESERVE)
        self.daemon = cd.Containerd(pick_containerd(args.containerd),
                                    workdir=cd.short_tempdir("gsmoke-"))
        self.workdir = self.daemon.workdir
        self.log_dir = self.workdir / "runsc-logs"
        self.log_dir.mkdir()
        report.workdir = str(self.workdir)

    def attempt(self, name: str, fn: Callable[..., Step], *args: Any, need: float = 5,
                **kwargs: Any) -> Step:
        """Run one step; its own crash is a failed step, not the end of the run."""
        if self.budget.spent(need):
            return self.report.add(Step(name, "skipped", f"the {self.args.budget:.0f} s time "
                                        "budget is spent (see --budget)"))
        start = time.monotonic()
        try:
            step = fn(*args, **kwargs)
        except Exception as e:
            step = Step(name, "failed", f"{type(e).__name__}: {e}", output=traceback.format_exc())
        step.name = name
        step.seconds = step.seconds or round(time.monotonic() - start, 2)
        return self.report.add(step)

    def config(self, name: str, forced: str | None) -> Path:
        extra: dict[str, object] = {"cdi_spec_dirs": [str(self.workdir / "cdi")], "debug": True}
        if forced:
            extra["nvproxy_driver_version"] = forced
        return self.daemon.write_runtime_config(
            name=name, runsc=self.runsc, extra=extra,
            runsc_config={"platform": self.args.platform, "debug-log": f"{self.log_dir}/"})


# --- steps ---------------------------------------------------------------------

def install_step(args: argparse.Namespace) -> Step:
    if args.deps_status:
        text = ""
        if args.deps_log:
            with contextlib.suppress(OSError):
                text = args.deps_log.read_text(errors="replace")
                args.deps_log.unlink()
        banner("install")
        print(text.rstrip() or "(no output)")
        last = (text.strip().splitlines() or ["run by scripts/gpu-smoke"])[-1]
        return Step("install-deps", args.deps_status, last, output=text)
    if args.skip_install:
        return Step("install-deps", "skipped", "--skip-install")
    out = bounded.run([str(REPO / "scripts/install-deps")], timeout=1800)
    return Step("install-deps", "ok" if out.ok else "failed", "" if out.ok else out.why(),
                out.returncode, out.text)


def probe_step(s: Smoke) -> Step:
    """Whether runsc can run any sandbox here (nested in gVisor it may not)."""
    root = s.daemon.runsc_root / "probe"
    uname = shutil.which("uname") or "/bin/uname"
    argv = [str(s.runsc), f"--root={root}", f"--platform={s.args.platform}", "--network=none",
            "--debug", f"--debug-log={s.log_dir}/probe/", "do", uname, "-r"]
    print("$ " + " ".join(argv), flush=True)
    out = bounded.run(argv, timeout=s.budget.cap(s.args.probe_timeout), cwd="/")
    print(out.text, end="", flush=True)
    listed = bounded.run([str(s.runsc), f"--root={root}", "list", "-quiet"], timeout=10)
    for cid in listed.stdout.split():
        bounded.run([str(s.runsc), f"--root={root}", "delete", "-force", cid], timeout=20)
    if out.ok:
        return Step("runsc-probe", "ok", f"runsc do ran a sandbox ({s.args.platform}); its "
                    f"kernel: {out.stdout.strip()}", 0, out.text, out.seconds)
    gvisor = s.report.facts.get("host", {}).get("inside_gvisor")
    hint = "; this host is itself gVisor, where runsc may not nest" if gvisor else ""
    return Step("runsc-probe", "failed", f"runsc do {out.why()}{hint}", out.returncode,
                out.text, out.seconds)


def doctor_step(s: Smoke, config: Path) -> Step:
    argv = [str(paths.SHIM), "doctor", "--config", str(config)]
    print("$ " + " ".join(argv), flush=True)
    out = bounded.run(argv, timeout=s.budget.cap(45), env=s.daemon.env)
    print(out.text, end="", flush=True)
    # Rows read "ok  | FAIL" + two spaces + the check padded + two spaces + detail.
    rows = [(ln[:4].strip(), *[*ln[6:].split("  ", 1), ""][:2])
            for ln in out.stdout.splitlines() if ln.startswith(("ok  ", "FAIL"))]
    if out.timed_out or not rows:
        return Step("doctor", "failed", f"doctor {out.why()}", out.returncode, out.text)
    fails = [f"{check.strip()}: {detail.strip()[:120]}" for ok, check, detail in rows
             if ok == "FAIL"]
    detail = f"{len(rows) - len(fails)} checks ok, {len(fails)} FAIL" + (
        "\n" + "\n".join(fails) if fails else "")
    return Step("doctor", "ok", detail, out.returncode, out.text,
                data={"rows": [{"ok": ok == "ok", "check": c.strip(), "detail": d.strip()}
                               for ok, c, d in rows]})


def plan_bundle_step(s: Smoke, gpu: str, config: Path) -> Step:
    facts = s.report.facts
    smi = facts["nvidia_smi"] or "nvidia-smi"
    annotations = dict([containers.ANNOTATION]) if gpu == "cdi" else {}
    bundle = containers.oci_bundle(s.daemon.bindir / "ctr", s.workdir / "plans" / f"plan-{gpu}",
                                   [smi], containers.container_env(facts, gpu), annotations,
                                   timeout=30)
    return containers.plan_step(f"plan-{gpu}", paths.SHIM, bundle, config, f"plan-{gpu}",
                                timeout=s.budget.cap(20))


def containerd_step(s: Smoke) -> Step:
    banner(f"private containerd {s.daemon.version} in {s.workdir}")
    try:
        s.daemon.start(timeout=s.budget.cap(30))
    except (RuntimeError, TimeoutError, OSError) as e:
        return Step("containerd", "failed", str(e))
    version = bounded.run([str(s.daemon.binary), "--version"], timeout=10).stdout.strip()
    s.report.facts["containerd"], s.report.facts["containerd_pid"] = version, s.daemon.pid
    return Step("containerd", "ok", version)


def forced_version(args: argparse.Namespace, facts: dict[str, Any]) -> tuple[str | None, str]:
    """The ABI to force, or None with the reason there is none."""
    if args.driver_version:
        return args.driver_version, "--driver-version"
    newest = facts["runsc"]["newest_supported"]
    if facts["driver_supported"]:
        return None, "the host driver is supported by this runsc: nothing to force"
    if newest is None:
        return None, "runsc cannot list its supported drivers: pass --driver-version X.Y.Z"
    return newest, "the newest driver this runsc supports"


def asks(s: Smoke, as_is: Path, forced: Path | None) -> list[Ask]:
    facts = s.report.facts
    smi = facts["nvidia_smi"] or "nvidia-smi"
    # A file, not `python3 -c`: ctr takes arguments that start with "-" after
    # the container id for its own flags. The rootfs is the host's root, so the
    # container sees the file at the same path.
    check = s.workdir / "cuda_check.py"
    shutil.copyfile(REPO / "scripts/gpusmoke/cuda_check.py", check)
    cuda = (facts["container_python"], str(check))
    found = [Ask("smi-as-is", "smoke-smi", (smi,), as_is, "cdi", None,
                 f"{smi} with the host driver as is"),
             Ask("cuda-as-is", "smoke-cuda", cuda, as_is, "cdi", "CUDA_CHECK_OK",
                 "CUDA driver-API check with the host driver as is"),
             Ask("plain", "smoke-plain", ("/bin/cat", "/proc/version"), as_is, None, None,
                 "a plain container (no GPU) on the same containerd: its kernel is gVisor's")]
    if forced is not None:
        abi = facts.get("forced_driver_version")
        found += [Ask("smi-forced", "smoke-smi-forced", (smi,), forced, "cdi", None,
                      f"{smi} with nvproxy_driver_version = {abi}"),
                  Ask("cuda-forced", "smoke-cuda-forced", cuda, forced, "cdi", "CUDA_CHECK_OK",
                      f"CUDA driver-API check with nvproxy_driver_version = {abi}")]
    return found


def container_steps(s: Smoke, as_is: Path, forced: Path | None, no_force: str) -> None:
    probe = s.report.step("runsc-probe")
    limit = s.args.timeout if probe is None or probe.status == "ok" else min(s.args.timeout, 30)
    for ask in asks(s, as_is, forced):
        smi = s.report.step("smi-as-is")
        if ask.name == "cuda-as-is" and smi is not None and smi.status == "refused":
            s.report.add(Step(ask.name, "skipped", "the shim refuses GPU containers with the "
                              "host driver as is (see smi-as-is)"))
            continue
        timeout = min(limit, 60) if ask.gpu is None else limit
        s.attempt(ask.name, containers.run_container, s.daemon.ctr, paths.SHIM, ask,
                  containers.container_env(s.report.facts, ask.gpu),
                  need=10, runtime=["--runtime", cd.RUNTIME_GVISORGPU],
                  timeout=s.budget.cap(timeout), workdir=s.workdir, log_dir=s.log_dir)
    if forced is None:
        for name in ("smi-forced", "cuda-forced"):
            s.report.add(Step(name, "skipped", no_force))


def smoke(args: argparse.Namespace, report: Report) -> None:
    report.add(install_step(args))
    runsc = args.runsc or paths.RUNSC_2024
    if runsc is None or not Path(runsc).exists():
        raise RuntimeError(f"runsc not found ({runsc or 'runsc 20240729 is not in the cache'}):"
                           " run scripts/install-deps or pass --runsc PATH")
    s = Smoke(args, report, Path(runsc).resolve())
    try:
        banner("host facts")
        report.facts = host.gather(s.runsc, paths.SHIM, timeout=s.budget.cap(20))
        try:
            host.print_facts(report.facts)
        except Exception:  # printing is a courtesy: the JSON has every fact
            traceback.print_exc(file=sys.stdout)
        for part, error in report.facts.get("errors", {}).items():
            print(f"could not gather the {part} facts:\n{error}")
        forced, why = forced_version(args, report.facts)
        report.facts["forced_driver_version"], report.facts["forced_why"] = forced, why
        print(f"forced ABI:      {forced or 'none'} ({why})")
        as_is = s.config("gvisorgpu-as-is.toml", None)
        forced_config = s.config("gvisorgpu-forced.toml", forced) if forced else None
        banner("can runsc run a sandbox here?")
        s.attempt("runsc-probe", probe_step, s)
        banner(f"CDI spec for this host's GPUs ({args.cdi})")
        s.attempt("cdi-spec", cdi.make_cdi, s.workdir / "cdi", args.cdi, report.facts,
                  s.budget.cap(45))
        banner("the shim's doctor")
        s.attempt("doctor", doctor_step, s, as_is)
        for gpu in ("cdi", "env"):
            banner(f"the shim's plan for a bundle that asks by {gpu.upper()}")
            s.attempt(f"plan-{gpu}", plan_bundle_step, s, gpu, as_is)
        if s.attempt("containerd", containerd_step, s).status == "ok":
            container_steps(s, as_is, forced_config, why)
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        cleanup(s, report)


# --- cleanup -------------------------------------------------------------------

def forkservers(daemon_pid: int | None) -> list[psutil.Process]:
    """The shim's forkserver processes that serve our containerd (its title
    names the containerd pid it watches)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        words = " ".join(a for a in proc.info["cmdline"] or [] if a).split()
        if daemon_pid and leftovers.is_forkserver(words) and words[-1] == str(daemon_pid):
            found.append(proc)
    return found


def remove_all(daemon: cd.Containerd) -> list[str]:
    """Every task and container of our daemon, killed and removed, each call bounded."""
    removed: list[str] = []
    listed = bounded.run(daemon.ctr.argv("namespaces", "ls", "-q"), timeout=10)
    for ns in listed.stdout.split():
        ctr = daemon.ctr.with_namespace(ns)
        for task in bounded.run(ctr.argv("task", "ls", "-q"), timeout=10).stdout.split():
            removed.append(f"task {ns}/{task}")
            bounded.run(ctr.argv("task", "kill", "-s", "SIGKILL", task), timeout=10)
            bounded.run(ctr.argv("task", "rm", "-f", task), timeout=20)
        for container in bounded.run(ctr.argv("c", "ls", "-q"), timeout=10).stdout.split():
            removed.append(f"container {ns}/{container}")
            bounded.run(ctr.argv("c", "rm", container), timeout=10)
    return removed


def bundle_logs(s: Smoke) -> Step:
    results = s.args.results
    if s.args.keep_logs is not None:
        s.args.keep_logs.mkdir(parents=True, exist_ok=True)
        shutil.copytree(s.log_dir, s.args.keep_logs / "runsc", dirs_exist_ok=True)
        if s.daemon.log_path.exists():
            shutil.copy(s.daemon.log_path, s.args.keep_logs / "containerd.log")
    if results is None:
        return Step("logs", "skipped", "no --results folder")
    tar = results / RESULT_FILES[2]
    w = s.workdir
    sources = [w / "containerd.log", s.log_dir, w / "cdi", w / "nvidia-ctk.yaml", w / "plans",
               *sorted(w.glob("*.toml"))]
    count = logs.bundle_logs(tar, w, [p for p in sources if p.exists()])
    return Step("logs", "ok", f"{tar}: {count} files, {tar.stat().st_size >> 10} KiB")


def cleanup(s: Smoke, report: Report) -> None:
    banner("cleanup")
    daemon = s.daemon
    daemon_pid = daemon.pid
    removed = remove_all(daemon) if daemon_pid is not None else []
    helpers = forkservers(daemon_pid)
    daemon.close()
    # The shim's forkserver serves one containerd and leaves when it does.
    _, alive = psutil.wait_procs(helpers, timeout=10)
    found = [f"process {p.pid}: shim forkserver of containerd {daemon_pid}" for p in alive]
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    found += leftovers.wait_clean(s.workdir, daemon.runsc_root, None, grace=10)
    if found:
        leftovers.clean(s.workdir, daemon.runsc_root)
    try:
        logs_step = bundle_logs(s)
    except (OSError, ValueError) as e:
        logs_step = Step("logs", "failed", f"{type(e).__name__}: {e}")
    leftovers.kill_processes(s.workdir)
    leftovers.remove_tree(s.workdir)
    # After an interrupt, the containers of the step that was cut short are
    # removed here by design; otherwise each step removes its own.
    expected = removed if report.interrupted else []
    report.leftovers = found + [f"removed at the end: {r}" for r in removed if r not in expected]
    gone = "" if not s.workdir.exists() else f"; {s.workdir} could not be removed"
    if report.leftovers or gone:
        report.add(Step("cleanup", "failed", "left behind (now removed): "
                        + "; ".join(report.leftovers) + gone))
    else:
        report.add(Step("cleanup", "ok", f"containerd stopped, {s.workdir} removed, "
                        "no shim or runsc process left"))
    report.add(logs_step)


# --- main ----------------------------------------------------------------------

def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def pick_containerd(wanted: str | None) -> str:
    for version in [wanted] if wanted else ["2.1", "1.7", "1.6"]:
        if cd.missing_for(version) is None:
            return version
    raise RuntimeError(cd.missing_for(wanted or "2.1") or "no containerd installed")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/gpu-smoke", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="scripts/gpu-smoke itself also takes --offline KIT "
                                       "and --make-offline-kit KIT (see the README).")
    p.add_argument("--runsc", type=Path, metavar="PATH",
                   help="runsc binary (default: 20240729 from the cache)")
    p.add_argument("--driver-version", metavar="X.Y.Z",
                   help="the nvproxy_driver_version to force in the forced-ABI containers "
                        "(default: the newest driver runsc lists)")
    p.add_argument("--platform", default="systrap", choices=["systrap", "ptrace", "kvm"])
    p.add_argument("--containerd", choices=["1.6", "1.7", "2.1"],
                   help="containerd version (default: the newest installed)")
    p.add_argument("--cdi", choices=["auto", "nvidia-ctk", "minimal"], default="auto",
                   help="CDI spec source (auto: nvidia-ctk when installed)")
    p.add_argument("--timeout", type=float, default=90, metavar="SECONDS",
                   help="seconds per GPU container (a plain one gets at most 60)")
    p.add_argument("--probe-timeout", type=float, default=25, metavar="SECONDS",
                   help="seconds for the first `runsc do` probe")
    p.add_argument("--budget", type=float, default=300, metavar="SECONDS",
                   help=f"the whole run, cleanup included ({CLEANUP_RESERVE:.0f} s are kept "
                        "for it); steps that no longer fit are skipped")
    p.add_argument("--results", type=Path, metavar="DIR",
                   help=f"write {', '.join(RESULT_FILES)} here")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the summary as JSON here")
    p.add_argument("--keep-logs", type=Path, metavar="DIR",
                   help="copy containerd and runsc logs here")
    p.add_argument("--skip-install", action="store_true", help="do not run scripts/install-deps")
    p.add_argument("--deps-status", help=argparse.SUPPRESS)  # set by scripts/gpu-smoke
    p.add_argument("--deps-log", type=Path, help=argparse.SUPPRESS)  # ditto; read, then removed
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    report = Report()
    if args.json is not None:
        report.json_paths.append(args.json)
    if args.results is not None:
        args.results.mkdir(parents=True, exist_ok=True)
        report.json_paths.append(args.results / RESULT_FILES[0])
        text = (args.results / RESULT_FILES[1]).open("w")
        sys.stdout = Tee(sys.__stdout__ or sys.stdout, text)
    if os.geteuid() != 0:
        report.error = "run as root (containerd, runsc and the GPU device nodes need it)"
    else:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _interrupt)
        try:
            smoke(args, report)
        except KeyboardInterrupt:
            report.interrupted = True
        except Exception as e:  # the script's own failure: still summarise
            report.error = f"{type(e).__name__}: {e}"
    print(report.summary(host.key_facts(report.facts)), flush=True)
    report.save()
    return report.exit_code()


if __name__ == "__main__":
    sys.exit(main())
