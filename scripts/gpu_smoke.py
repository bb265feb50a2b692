"""GPU smoke test behind scripts/gpu-smoke (run that as root: it installs first).

On a real GPU host it shows, end to end, whether a container in gVisor gets the
GPUs through containerd-shim-gvisorgpu-v1: host facts, a CDI spec for the
host's GPUs, a private containerd, the shim's plan, then `nvidia-smi -L` and a
small CUDA driver-API check run through the shim with ctr. The container's
rootfs is the host's own root, read-only, so no image has to be pulled and the
host's python3 and NVIDIA userspace are there to run.

A refusal or a runsc failure is an outcome, reported in the SUMMARY; the exit
code is 0 when the script ran and reported, 1 when the harness itself could not
do its job (not root, no runsc, containerd would not start, leftovers), 130
when interrupted. Everything started is stopped on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import yaml  # noqa: E402

from tests import paths  # noqa: E402
from tests.e2e import containerd as cd  # noqa: E402
from tests.e2e import leftovers  # noqa: E402

CDI_KIND = "nvidia.com/gpu"
ANNOTATION = "cdi.k8s.io/smoke=nvidia.com/gpu=all"
NVIDIA_MAJOR = 195
# What compute/utility containers need from the driver's userspace (the rest of
# what nvidia-ctk mounts is graphics, video or 32-bit).
LIB_PREFIXES = ("libcuda.so", "libcudadebugger.so", "libnvidia-ml.so",
                "libnvidia-ptxjitcompiler.so", "libnvidia-nvvm.so", "libnvidia-gpucomp.so",
                "libnvidia-cfg.so", "libnvidia-opencl.so", "libnvidia-allocator.so")
_LDCONFIG_ARCH = {"x86_64": "x86-64", "aarch64": "AArch64"}
_HARNESS = ("install-deps", "cdi-spec", "containerd", "cleanup")

# Runs inside the container with the host's python3: the CUDA driver API only,
# so nothing but libcuda.so.1 is needed. The last line is the verdict.
CUDA_CHECK = r"""
import ctypes, sys
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError as e:
    sys.exit(f"cannot load the CUDA driver library: {e}")
def call(fn, *args):
    rc = getattr(cuda, fn)(*args)
    if rc:
        name = ctypes.c_char_p()
        cuda.cuGetErrorName(rc, ctypes.byref(name))
        sys.exit(f"{fn} failed: CUresult {rc} ({(name.value or b'?').decode()})")
call("cuInit", 0)
ver, count = ctypes.c_int(), ctypes.c_int()
call("cuDriverGetVersion", ctypes.byref(ver))
call("cuDeviceGetCount", ctypes.byref(count))
print(f"cuInit ok, driver API {ver.value // 1000}.{ver.value % 1000 // 10}, "
      f"{count.value} device(s)")
if count.value < 1:
    sys.exit("no CUDA device visible")
size = 1 << 20
for i in range(count.value):
    dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
    name, total = ctypes.create_string_buffer(256), ctypes.c_size_t()
    call("cuDeviceGet", ctypes.byref(dev), i)
    call("cuDeviceGetName", name, 256, dev)
    call("cuDeviceTotalMem_v2", ctypes.byref(total), dev)
    call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), dev)
    call("cuCtxSetCurrent", ctx)
    call("cuMemAlloc_v2", ctypes.byref(ptr), ctypes.c_size_t(size))
    call("cuMemsetD8_v2", ptr, ctypes.c_ubyte(0x5A), ctypes.c_size_t(size))
    host = (ctypes.c_ubyte * size)()
    call("cuMemcpyDtoH_v2", host, ptr, ctypes.c_size_t(size))
    call("cuMemFree_v2", ptr)
    call("cuDevicePrimaryCtxRelease_v2", dev)
    if bytes(host).count(0x5A) != size:
        sys.exit(f"GPU {i}: 1 MiB memset/copy-back mismatch")
    print(f"GPU {i}: {name.value.decode()}, {total.value >> 20} MiB, "
          f"1 MiB alloc/memset/copy/free ok")
print("CUDA_CHECK_OK")
"""


@dataclass
class Step:
    name: str
    status: str  # ok | refused | failed | skipped
    detail: str = ""
    exit_code: int | None = None
    output: str = ""


@dataclass
class Report:
    facts: dict[str, Any] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    workdir: str = ""
    leftovers: list[str] = field(default_factory=list)
    interrupted: bool = False
    error: str = ""

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        print(f"--> {step.name}: {step.status}" + (f": {step.detail}" if step.detail else ""),
              flush=True)
        return step

    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        harness_failed = any(s.name in _HARNESS and s.status == "failed" for s in self.steps)
        return 1 if self.error or harness_failed else 0

    def summary(self) -> str:
        lines = ["", "=== SUMMARY"]
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


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def run(argv: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run to completion; a missing binary reads as exit 127, like a shell."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError as e:
        return subprocess.CompletedProcess(list(argv), 127, "", str(e))


# --- host facts --------------------------------------------------------------

def parse_driver_version(text: str) -> str | None:
    """The kernel module version from /proc/driver/nvidia/version."""
    for line in text.splitlines():
        if line.startswith("NVRM version:"):
            match = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", line + " ")
            if match:
                return match.group(1)
    return None


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def device_nodes(dev: Path = Path("/dev")) -> dict[str, tuple[int, int]]:
    """The host's /dev/nvidia* character devices: path -> (major, minor)."""
    found = {}
    for p in sorted(dev.glob("nvidia*")):
        try:
            st = p.stat()
        except OSError:
            continue
        if p.is_char_device():
            found[str(p)] = (os.major(st.st_rdev), os.minor(st.st_rdev))
    return found


def parse_ldconfig(text: str, machine: str) -> list[str]:
    """Paths of the driver libraries in `ldconfig -p` output for this machine's ABI."""
    arch = _LDCONFIG_ARCH.get(machine, machine)
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
        if not match or not match.group(1).startswith(LIB_PREFIXES):
            continue
        name, flags, path = match.groups()
        if arch in flags.split(",") and name not in found:
            found[name] = path
    return sorted(found.values())


def host_facts(runsc: Path) -> dict[str, Any]:
    facts: dict[str, Any] = {"kernel": platform.release(), "machine": platform.machine()}
    try:
        banner_text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        banner_text = ""
    facts["driver_version"] = parse_driver_version(banner_text)
    facts["driver_banner"] = banner_text.strip()
    facts["device_nodes"] = {p: f"{a}:{b}" for p, a, b in
                             ((p, *n) for p, n in device_nodes().items())}
    version = run([str(runsc), "--version"])
    supported = run([str(runsc), "nvproxy", "list-supported-drivers"])
    facts["runsc"] = {
        "path": str(runsc),
        "version": (version.stdout.splitlines() or ["?"])[0],
        "supported_drivers": supported.stdout.split() if supported.returncode == 0 else None,
        "supported_error": "" if supported.returncode == 0 else
        f"`runsc nvproxy list-supported-drivers` exited {supported.returncode} "
        "(runsc older than release-20231106.0 cannot list them)",
    }
    listed = facts["runsc"]["supported_drivers"]
    drv = facts["driver_version"]
    facts["driver_supported"] = None if drv is None or listed is None else any(
        version_key(v) == version_key(drv) for v in listed)
    facts["nvidia_ctk"] = shutil.which("nvidia-ctk")
    facts["nvidia_smi"] = shutil.which("nvidia-smi")
    if facts["nvidia_smi"]:
        out = run([facts["nvidia_smi"], "-L"], timeout=60)
        facts["host_nvidia_smi_L"] = (out.stdout + out.stderr).strip()
    # The distribution's python3 first: it needs nothing but the root filesystem.
    facts["container_python"] = next(
        (p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)),
        os.path.realpath(sys.executable))
    facts["shim"] = run([str(paths.SHIM), "version"]).stdout.strip()
    return facts


def print_facts(facts: dict[str, Any]) -> None:
    r = facts["runsc"]
    drv = facts["driver_version"] or "none (/proc/driver/nvidia/version is missing)"
    print(f"kernel:          {facts['kernel']} ({facts['machine']})")
    print(f"NVIDIA driver:   {drv}")
    nodes = facts["device_nodes"]
    print("device nodes:    " + (", ".join(f"{p} {n}" for p, n in nodes.items()) or "none"))
    print(f"runsc:           {r['path']} ({r['version']})")
    print("nvproxy drivers: " + (" ".join(r["supported_drivers"])
                                 if r["supported_drivers"] is not None else r["supported_error"]))
    if facts["driver_supported"] is False:
        print(f"                 host driver {facts['driver_version']} is NOT in this list: "
              "use --driver-version with an ABI-equivalent listed version, "
              "or --runsc with a newer runsc")
    print(f"nvidia-ctk:      {facts['nvidia_ctk'] or 'not installed'}")
    print(f"nvidia-smi:      {facts['nvidia_smi'] or 'not installed'}")
    if facts.get("host_nvidia_smi_L"):
        print("host nvidia-smi -L (outside gVisor):\n  "
              + facts["host_nvidia_smi_L"].replace("\n", "\n  "))
    print(f"shim:            {facts['shim']}")
    print(f"container rootfs: / (read-only); python: {facts['container_python']}")


# --- CDI ---------------------------------------------------------------------

def minimal_cdi_spec(nodes: dict[str, tuple[int, int]], mounts: Sequence[str]) -> dict[str, Any]:
    """A CDI spec in the shape nvidia-ctk writes: one device per GPU plus "all".

    Without any /dev/nvidiaN (a host with no driver) it names GPU 0 anyway, so
    the request still reaches the shim and its refusal is what gets reported.
    """
    def node(path: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"path": path, "type": "c"}
        if path in nodes:
            entry["major"], entry["minor"] = nodes[path]
        return entry

    gpus = sorted((p for p in nodes if re.fullmatch(r"/dev/nvidia\d+", p)),
                  key=lambda p: int(p.removeprefix("/dev/nvidia"))) or ["/dev/nvidia0"]
    devices = [{"name": p.removeprefix("/dev/nvidia"),
                "containerEdits": {"deviceNodes": [node(p)]}} for p in gpus]
    devices.append({"name": "all", "containerEdits": {"deviceNodes": [node(p) for p in gpus]}})
    common = ["/dev/nvidiactl", "/dev/nvidia-uvm"]
    common += [p for p in ("/dev/nvidia-uvm-tools",) if p in nodes]
    return {
        "cdiVersion": "0.5.0",
        "kind": CDI_KIND,
        "devices": devices,
        "containerEdits": {
            "env": ["NVIDIA_VISIBLE_DEVICES=void"],
            "deviceNodes": [node(p) for p in common],
            "mounts": [{"hostPath": m, "containerPath": m,
                        "options": ["ro", "nosuid", "nodev", "bind"]} for m in mounts],
        },
    }


def without_hooks(spec: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The spec without containerEdits hooks, and how many there were."""
    edits = [spec.get("containerEdits") or {}]
    edits += [d.get("containerEdits") or {} for d in spec.get("devices") or []]
    return spec, sum(len(e.pop("hooks", None) or []) for e in edits)


def host_mounts(facts: dict[str, Any]) -> list[str]:
    libs = parse_ldconfig(run(["ldconfig", "-p"]).stdout, facts["machine"])
    real = [os.path.realpath(p) for p in libs]
    return sorted(set(real + ([facts["nvidia_smi"]] if facts["nvidia_smi"] else [])))


def make_cdi(cdi_dir: Path, source: str, facts: dict[str, Any]) -> Step:
    cdi_dir.mkdir(parents=True, exist_ok=True)
    note = ""
    if source in ("auto", "nvidia-ctk") and facts["nvidia_ctk"]:
        generated = cdi_dir.parent / "nvidia-ctk.yaml"
        out = run([facts["nvidia_ctk"], "cdi", "generate", f"--output={generated}"],
                  timeout=120)
        if out.returncode == 0 and generated.exists():
            spec, hooks = without_hooks(yaml.safe_load(generated.read_text()))
            target = cdi_dir / "nvidia.json"
            target.write_text(json.dumps(spec, indent=2))
            names = [d.get("name") for d in spec.get("devices", [])]
            detail = f"generated by nvidia-ctk: {target}, devices {names}"
            if hooks:
                # They would run against the rootfs, which here is the host's own root:
                # ldconfig hooks would rewrite the host's ld.so.cache.
                detail += (f"; dropped {hooks} hook(s): the rootfs is the host's root, where the"
                           " libraries and their links already are")
            return Step("cdi-spec", "ok", detail)
        note = f"nvidia-ctk cdi generate exited {out.returncode}: " + out.stderr.strip()[-500:]
        if source == "nvidia-ctk":
            return Step("cdi-spec", "failed", note, out.returncode, out.stdout + out.stderr)
    elif source == "nvidia-ctk":
        return Step("cdi-spec", "failed", "nvidia-ctk is not installed")
    nodes = device_nodes()
    spec = minimal_cdi_spec(nodes, host_mounts(facts))
    target = cdi_dir / "nvidia.json"
    target.write_text(json.dumps(spec, indent=2))
    gpus = len(spec["devices"]) - 1
    why = note or ("nvidia-ctk is not installed" if source == "auto" else "asked for")
    detail = (f"minimal spec written by this script ({why}): {target}, {gpus} GPU device(s), "
              f"{len(spec['containerEdits']['mounts'])} mounts")
    if not any(re.fullmatch(r"/dev/nvidia\d+", p) for p in nodes):
        detail += "; no /dev/nvidiaN on this host, so it names GPU 0 with NVIDIA's numbering"
    return Step("cdi-spec", "ok", detail)


# --- containers through the shim ----------------------------------------------

def plan(bundle: Path, config: Path, cid: str, show: bool) -> tuple[dict[str, Any] | None, str]:
    """The shim's plan as JSON (None when plan itself errs) and a one-line gist."""
    base = [str(paths.SHIM), "plan", str(bundle), "--config", str(config), "--id", cid]
    if show:
        print("$ " + " ".join(base), flush=True)
        text = run(base)
        sys.stdout.write(text.stdout + text.stderr)
    out = run([*base, "--json"])
    try:
        result: dict[str, Any] = json.loads(out.stdout)
    except ValueError:
        return None, (out.stderr or out.stdout).strip() or f"plan exited {out.returncode}"
    if result["refusals"]:
        return result, "\n".join(result["refusals"])
    flags = " ".join(f"--{k}={v}" for k, v in result["runsc_flags"].items())
    return result, f"decision gpu={result['decision']['gpu']} mode={result['decision']['mode']}" \
                   + (f"; runsc {flags}" if flags else "")


def classify(name: str, plan_result: dict[str, Any] | None, out: subprocess.CompletedProcess[str],
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


def run_container(daemon: cd.Containerd, config: Path, cid: str, argv: Sequence[str],
                  label: str, name: str, marker: str | None, timeout: float, show_plan: bool,
                  report: Report, log_dir: Path) -> None:
    ctr = daemon.ctr
    logs_before = set(log_dir.rglob("*boot*"))
    env = ["--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "--env", "HOME=/tmp"]
    created = ctr("c", "create", *cd.gvisorgpu_args(config), "--rootfs", "--read-only",
                  "--annotation", ANNOTATION, *env, "/", cid, *argv)
    if created.returncode != 0:
        report.add(Step(name, "failed", f"ctr container create: {created.stderr.strip()}",
                        created.returncode))
        return
    try:
        info = json.loads(ctr("c", "info", cid).stdout)
        bundle = daemon.workdir / "plans" / cid
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_text(json.dumps(info["Spec"], indent=2))
        if show_plan:
            banner("the shim's plan for the GPU container (decision, refusals, runsc command)")
        result, gist = plan(bundle, config, cid, show_plan)
        if show_plan:
            status = "failed" if result is None else "ok" if result["ok"] else "refused"
            report.add(Step("plan", status, gist,
                            output=" ".join(result["runsc_argv"]) if result else ""))
        banner(f"{name} through the shim: {label}")
        print(f"$ ctr task start {cid}", flush=True)
        try:
            out = ctr("task", "start", cid, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            report.add(Step(name, "failed", f"no result after {timeout:.0f}s",
                            output=str(e.output or "")))
            return
        sys.stdout.write(out.stdout + out.stderr)
        step = report.add(classify(name, result, out, marker))
        if step.status == "failed":
            hints = boot_log_hints(sorted(set(log_dir.rglob("*boot*")) - logs_before))
            if hints:
                print("runsc boot log (nvproxy/error lines):\n" + hints)
                step.output += "\n--- runsc boot log ---\n" + hints
    finally:
        ctr("task", "kill", "-s", "SIGKILL", cid)
        ctr("task", "rm", "-f", cid)
        ctr("c", "rm", cid)


# --- main --------------------------------------------------------------------

def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def pick_containerd(wanted: str | None) -> str:
    for version in [wanted] if wanted else ["2.1", "1.7", "1.6"]:
        if cd.missing_for(version) is None:
            return version
    raise RuntimeError(cd.missing_for(wanted or "2.1") or "no containerd installed")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/gpu-smoke", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runsc", type=Path, metavar="PATH",
                   help="runsc binary (default: 20240729 from the cache)")
    p.add_argument("--driver-version", metavar="X.Y.Z",
                   help="nvproxy_driver_version: claim this ABI-equivalent driver")
    p.add_argument("--platform", default="systrap", choices=["systrap", "ptrace", "kvm"])
    p.add_argument("--containerd", choices=["1.6", "1.7", "2.1"],
                   help="containerd version (default: the newest installed)")
    p.add_argument("--cdi", choices=["auto", "nvidia-ctk", "minimal"], default="auto",
                   help="CDI spec source (auto: nvidia-ctk when installed)")
    p.add_argument("--timeout", type=float, default=300, metavar="SECONDS",
                   help="seconds per container")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the summary as JSON here")
    p.add_argument("--keep-logs", type=Path, metavar="DIR",
                   help="copy containerd and runsc logs here")
    p.add_argument("--skip-install", action="store_true", help="do not run scripts/install-deps")
    p.add_argument("--deps-status", help=argparse.SUPPRESS)  # set by scripts/gpu-smoke
    return p.parse_args(argv)


def install_step(args: argparse.Namespace) -> Step:
    if args.deps_status:
        return Step("install-deps", args.deps_status, "run by scripts/gpu-smoke")
    if args.skip_install:
        return Step("install-deps", "skipped", "--skip-install")
    out = subprocess.run([str(REPO / "scripts/install-deps")], stdin=subprocess.DEVNULL,
                         check=False)
    return Step("install-deps", "ok" if out.returncode == 0 else "failed",
                "" if out.returncode == 0 else f"exited {out.returncode}", out.returncode)


def smoke(args: argparse.Namespace, report: Report) -> None:
    report.add(install_step(args))
    runsc = args.runsc or paths.RUNSC_2024
    if runsc is None or not Path(runsc).exists():
        raise RuntimeError(f"runsc not found ({runsc or 'runsc 20240729 is not in the cache'}):"
                           " run scripts/install-deps or pass --runsc PATH")
    runsc = Path(runsc).resolve()
    banner("host facts")
    report.facts = host_facts(runsc)
    print_facts(report.facts)
    version = pick_containerd(args.containerd)
    daemon = cd.Containerd(version, workdir=cd.short_tempdir("gsmoke-"))
    report.workdir = str(daemon.workdir)
    log_dir = daemon.workdir / "runsc-logs"
    log_dir.mkdir()
    try:
        banner(f"CDI spec for this host's GPUs ({args.cdi})")
        cdi = report.add(make_cdi(daemon.workdir / "cdi", args.cdi, report.facts))
        if cdi.status != "ok":
            return
        banner(f"private containerd {version} in {daemon.workdir}")
        try:
            daemon.start()
        except (RuntimeError, TimeoutError, OSError) as e:
            report.add(Step("containerd", "failed", str(e)))
            return
        report.facts["containerd"] = run([str(daemon.binary), "--version"]).stdout.strip()
        report.facts["containerd_pid"] = daemon.pid
        report.add(Step("containerd", "ok", report.facts["containerd"]))
        extra: dict[str, object] = {"cdi_spec_dirs": [str(daemon.workdir / "cdi")],
                                    "debug": True}
        if args.driver_version:
            extra["nvproxy_driver_version"] = args.driver_version
        config = daemon.write_runtime_config(
            runsc=runsc, extra=extra,
            runsc_config={"platform": args.platform, "debug-log": f"{log_dir}/"})
        print(config.read_text())
        smi = report.facts["nvidia_smi"] or "nvidia-smi"
        python = report.facts["container_python"]
        run_container(daemon, config, "smoke-smi", [smi, "-L"], f"{smi} -L", "nvidia-smi -L",
                      None, args.timeout, True, report, log_dir)
        # A file, not `python3 -c`: ctr 1.6 takes arguments that start with "-"
        # after the container id for its own flags. The rootfs is the host's root,
        # so the container sees the file at the same path.
        check = daemon.workdir / "cuda_check.py"
        check.write_text(CUDA_CHECK)
        run_container(daemon, config, "smoke-cuda", [python, str(check)],
                      f"{python} {check} (cuInit, cuDeviceGetCount, cuDeviceGetName, "
                      "cuMemAlloc/cuMemFree of 1 MiB)", "cuda-check", "CUDA_CHECK_OK",
                      args.timeout, False, report, log_dir)
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        cleanup(daemon, args.keep_logs, report)


def forkservers(daemon_pid: int | None) -> list[psutil.Process]:
    """The shim's forkserver processes that serve our containerd (its pid is their last arg)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if daemon_pid and "shim.manager.forkserver" in cmdline and cmdline[-1] == str(daemon_pid):
            found.append(proc)
    return found


def cleanup(daemon: cd.Containerd, keep_logs: Path | None, report: Report) -> None:
    banner("cleanup")
    daemon_pid = daemon.pid
    removed = daemon.remove_all() if daemon_pid is not None else []
    helpers = forkservers(daemon_pid)
    daemon.close()
    # The shim's forkserver serves one containerd and leaves when it does.
    _, alive = psutil.wait_procs(helpers, timeout=10)
    found = [f"process {p.pid}: shim forkserver of containerd {daemon_pid}" for p in alive]
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    found += leftovers.wait_clean(daemon.workdir, daemon.runsc_root, None, grace=10)
    if found:
        leftovers.clean(daemon.workdir, daemon.runsc_root)
    if keep_logs is not None:
        keep_logs.mkdir(parents=True, exist_ok=True)
        shutil.copytree(daemon.workdir / "runsc-logs", keep_logs / "runsc", dirs_exist_ok=True)
        if daemon.log_path.exists():
            shutil.copy(daemon.log_path, keep_logs / "containerd.log")
    leftovers.kill_processes(daemon.workdir)
    leftovers.remove_tree(daemon.workdir)
    # After an interrupt, the containers of the step that was cut short are
    # removed here by design; otherwise each step removes its own.
    expected = removed if report.interrupted else []
    report.leftovers = found + [f"removed at the end: {r}" for r in removed if r not in expected]
    gone = "" if not daemon.workdir.exists() else f"; {daemon.workdir} could not be removed"
    if report.leftovers or gone:
        report.add(Step("cleanup", "failed", "left behind (now removed): "
                        + "; ".join(report.leftovers) + gone))
    else:
        report.add(Step("cleanup", "ok", f"containerd stopped, {daemon.workdir} removed, "
                        "no shim or runsc process left"))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    report = Report()
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
    print(report.summary(), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report.exit_code()


if __name__ == "__main__":
    sys.exit(main())
