"""What the host is: kernel (and whether it is itself gVisor), the NVIDIA
driver as /proc and nvidia-smi each report it, the GPUs, the device nodes with
their numbers, where the driver's userspace lives, and the runsc in use.

The parsers are pure functions; ``gather`` does the IO, every command bounded.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpusmoke.bounded import run

__all__ = ["bus_key", "gather", "gpu_numbering", "gvisor_evidence", "identity", "key_facts",
           "parse_driver_version", "parse_gpu_query", "parse_ldconfig", "print_facts",
           "version_key"]

# What compute/utility containers need from the driver's userspace (the rest of
# what nvidia-ctk mounts is graphics, video or 32-bit).
LIB_PREFIXES = ("libcuda.so", "libcudadebugger.so", "libnvidia-ml.so",
                "libnvidia-ptxjitcompiler.so", "libnvidia-nvvm.so", "libnvidia-gpucomp.so",
                "libnvidia-cfg.so", "libnvidia-opencl.so", "libnvidia-allocator.so")
_LDCONFIG_ARCH = {"x86_64": "x86-64", "aarch64": "AArch64"}
# Where hosts that do not register the driver with ld.so keep it (container
# images for GPU hosts often bind it read-only at /usr/local/nvidia).
DRIVER_DIRS = ("/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib64",
               "/usr/lib/{arch}-linux-gnu")
SMI_DIRS = ("/usr/local/nvidia/bin", "/usr/bin", "/usr/local/bin", "/bin")
GPU_QUERY = "index,name,uuid,pci.bus_id,driver_version,memory.total,compute_cap"
# gVisor's fixed kernel identity (pkg/sentry/kernel version) and its boot banner.
GVISOR_PROC_VERSION = "Linux version 4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016"
GVISOR_DMESG = "Starting gVisor..."


def parse_driver_version(text: str) -> str | None:
    """The kernel module version from /proc/driver/nvidia/version."""
    for line in text.splitlines():
        if line.startswith("NVRM version:"):
            match = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", line + " ")
            if match:
                return match.group(1)
    return None


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


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


def parse_gpu_query(text: str, fields: str = GPU_QUERY) -> list[dict[str, str]]:
    """Rows of `nvidia-smi --query-gpu=FIELDS --format=csv,noheader`."""
    names = fields.split(",")
    rows = []
    for line in text.splitlines():
        values = [v.strip() for v in line.split(",")]
        if len(values) == len(names):
            rows.append(dict(zip(names, values, strict=True)))
    return rows


def gvisor_evidence(proc_version: str, dmesg: str) -> list[str]:
    """Why this kernel looks like gVisor's Sentry (empty: it does not)."""
    found = []
    if proc_version.strip() == GVISOR_PROC_VERSION:
        found.append(f"/proc/version is gVisor's: {GVISOR_PROC_VERSION!r}")
    if GVISOR_DMESG in dmesg:
        found.append(f"dmesg says {GVISOR_DMESG!r}")
    return found


def device_nodes(dev: Path = Path("/dev")) -> dict[str, tuple[int, int]]:
    """/dev/nvidia* and /dev/nvidia-caps/* character devices: path -> (major, minor)."""
    found = {}
    for p in sorted([*dev.glob("nvidia*"), *dev.glob("nvidia-caps/*")]):
        try:
            st = p.stat()
        except OSError:
            continue
        if p.is_char_device():
            found[str(Path("/dev") / p.relative_to(dev))] = (os.major(st.st_rdev),
                                                              os.minor(st.st_rdev))
    return found


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def proc_gpus(proc: Path = Path("/proc")) -> dict[str, dict[str, str]]:
    """/proc/driver/nvidia/gpus/<bus id>/information: the minor number the
    driver gave each GPU, which need not follow nvidia-smi's index order."""
    gpus = {}
    for info in sorted((proc / "driver/nvidia/gpus").glob("*/information")):
        fields = {}
        for line in _read(str(info)).splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        gpus[info.parent.name] = fields
    return gpus


def find_nvidia_smi() -> str | None:
    search = os.pathsep.join([os.environ.get("PATH", ""), *SMI_DIRS])
    return shutil.which("nvidia-smi", path=search)


def find_libs(ldconfig_paths: Sequence[str], machine: str) -> dict[str, Any]:
    """Driver libraries in ld.so's cache and in the usual folders outside it,
    and the folders a container needs on LD_LIBRARY_PATH: those holding a
    libcuda.so.1 or libnvidia-ml.so.1 that the cache does not point at (the
    host's own LD_LIBRARY_PATH first, as the host's programs see them)."""
    cached = {os.path.realpath(p) for p in ldconfig_paths}
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    dirs += [d.format(arch=machine) for d in DRIVER_DIRS]
    outside: list[str] = []
    for d in dict.fromkeys(dirs):
        for prefix in LIB_PREFIXES:
            for path in sorted(glob.glob(os.path.join(d, prefix + "*"))):
                if os.path.realpath(path) not in cached and path not in outside:
                    outside.append(path)
    wanted = [p for p in outside if os.path.basename(p) in ("libcuda.so.1", "libnvidia-ml.so.1")]
    return {"ld_cache": list(ldconfig_paths), "outside_ld_cache": outside,
            "container_ld_library_path": ":".join(dict.fromkeys(os.path.dirname(p)
                                                                for p in wanted))}


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def identity(timeout: float = 10.0) -> dict[str, Any]:
    proc_version = _read("/proc/version").strip()
    dmesg = run(["dmesg"], timeout=timeout)
    evidence = gvisor_evidence(proc_version, dmesg.stdout[:4000])
    os_release = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', _read("/etc/os-release"), re.M))
    return {"uname": " ".join(platform.uname()), "kernel": platform.release(),
            "machine": platform.machine(), "proc_version": proc_version,
            "os": os_release.get("PRETTY_NAME", "?"), "cpus": os.cpu_count(),
            "inside_gvisor": bool(evidence), "gvisor_evidence": evidence,
            "python": sys.version.split()[0], "dpkg": shutil.which("dpkg")}


def bus_key(bus_id: str) -> tuple[int, ...] | None:
    """A PCI address as numbers: nvidia-smi writes 00000000:19:00.0, /proc 0000:19:00.0."""
    parts = re.fullmatch(r"([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-7])", bus_id.strip())
    return tuple(int(x, 16) for x in parts.groups()) if parts else None


def gpu_numbering(gpus: Sequence[dict[str, str]],
                  proc: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """nvidia-smi's index (what NVIDIA_VISIBLE_DEVICES counts) against the
    device minor the driver gave the same GPU (what /dev/nvidiaN is named by)."""
    minors = {bus_key(bus): info.get("Device Minor") for bus, info in proc.items()}
    rows = []
    for g in gpus:
        minor = minors.get(bus_key(g.get("pci.bus_id", "")))
        rows.append({"index": g.get("index"), "bus": g.get("pci.bus_id"), "uuid": g.get("uuid"),
                     "minor": minor, "index_is_minor": None if minor is None
                     else minor == g.get("index")})
    return rows


def _nvidia_smi(facts: dict[str, Any], smi: str, timeout: float) -> None:
    env = dict(os.environ)
    extra = facts["nvidia_libs"]["container_ld_library_path"]
    if extra:
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, [extra, env.get("LD_LIBRARY_PATH")]))
    listed = run([smi, "-L"], timeout=timeout, env=env)
    facts["host_nvidia_smi_L"] = listed.text.strip() if not listed.timed_out else listed.why()
    query = run([smi, f"--query-gpu={GPU_QUERY}", "--format=csv,noheader"],
                timeout=timeout, env=env)
    facts["gpus"] = parse_gpu_query(query.stdout)
    if not facts["gpus"]:
        facts["gpu_query_error"] = query.why() if not query.ok else query.text.strip()
    versions = {g["driver_version"] for g in facts["gpus"]}
    facts["driver_version_nvidia_smi"] = versions.pop() if len(versions) == 1 else None


def _nvidia(facts: dict[str, Any], timeout: float, proc: Path, dev: Path) -> None:
    banner = _read(str(proc / "driver/nvidia/version"))
    facts["driver_version"] = parse_driver_version(banner)
    facts["driver_banner"] = banner.strip()
    machine = facts["host"]["machine"]
    cached = parse_ldconfig(run(["ldconfig", "-p"], timeout=timeout).stdout, machine)
    facts["nvidia_libs"] = find_libs(cached, machine)
    before = {p: f"{a}:{b}" for p, (a, b) in device_nodes(dev).items()}
    smi = facts["nvidia_smi"] = find_nvidia_smi()
    if smi:
        _nvidia_smi(facts, smi, timeout)
    # Run as root, nvidia-smi creates missing /dev/nvidia* nodes (nvidia-modprobe).
    facts["device_nodes"] = {p: f"{a}:{b}" for p, (a, b) in device_nodes(dev).items()}
    if facts["device_nodes"] != before:
        facts["device_nodes_before_nvidia_smi"] = before
    facts["proc_driver_gpus"] = proc_gpus(proc)
    facts["gpu_numbering"] = gpu_numbering(facts.get("gpus", []), facts["proc_driver_gpus"])
    ctk = facts["nvidia_ctk"] = shutil.which("nvidia-ctk")
    if ctk:
        facts["nvidia_ctk_version"] = _first_line(run([ctk, "--version"], timeout=timeout).text)


def _runsc(runsc: Path, timeout: float) -> dict[str, Any]:
    version = run([str(runsc), "--version"], timeout=timeout)
    supported = run([str(runsc), "nvproxy", "list-supported-drivers"], timeout=timeout)
    listed = supported.stdout.split() if supported.ok else None
    return {
        "path": str(runsc), "version": _first_line(version.stdout) or version.why(),
        "supported_drivers": listed,
        "newest_supported": max(listed, key=version_key) if listed else None,
        "supported_error": "" if supported.ok else
        f"`runsc nvproxy list-supported-drivers` {supported.why()} "
        "(runsc older than release-20231106.0 cannot list them)",
    }


def _defaults(runsc: Path) -> dict[str, Any]:
    """Every key the run reads, so a part that fails leaves the rest usable."""
    return {
        "host": {"uname": " ".join(platform.uname()), "kernel": platform.release(),
                 "machine": platform.machine(), "proc_version": "", "os": "?",
                 "cpus": os.cpu_count(), "inside_gvisor": False, "gvisor_evidence": [],
                 "python": sys.version.split()[0], "dpkg": None},
        "driver_version": None, "driver_banner": "", "device_nodes": {},
        "nvidia_libs": {"ld_cache": [], "outside_ld_cache": [], "container_ld_library_path": ""},
        "nvidia_smi": None, "proc_driver_gpus": {}, "gpu_numbering": [], "nvidia_ctk": None,
        "runsc": {"path": str(runsc), "version": "?", "supported_drivers": None,
                  "newest_supported": None, "supported_error": "not asked"},
        "driver_supported": None, "container_python": "/usr/bin/python3", "shim": "?",
    }


def gather(runsc: Path, shim: Path, timeout: float = 30.0, *, proc: Path = Path("/proc"),
           dev: Path = Path("/dev")) -> dict[str, Any]:
    """Every fact; a part that raises is recorded under "errors" and the rest go on."""
    facts = _defaults(runsc)

    def host_part() -> None:
        facts["host"] = identity(min(timeout, 10))

    def runsc_part() -> None:
        facts["runsc"] = _runsc(runsc, timeout)
        listed = facts["runsc"]["supported_drivers"]
        drv = facts["driver_version"] or facts.get("driver_version_nvidia_smi")
        facts["driver_supported"] = None if drv is None or listed is None else any(
            version_key(v) == version_key(drv) for v in listed)

    def rest_part() -> None:
        # The distribution's python3 first: it needs nothing but the root filesystem.
        facts["container_python"] = next(
            (p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)),
            os.path.realpath(sys.executable))
        facts["shim"] = _first_line(run([str(shim), "version"], timeout=timeout).text)

    parts = {"host": host_part, "nvidia": lambda: _nvidia(facts, timeout, proc, dev),
             "runsc": runsc_part, "rest": rest_part}
    for name, part in parts.items():
        try:
            part()
        except Exception:
            facts.setdefault("errors", {})[name] = traceback.format_exc()
    facts["kernel"], facts["machine"] = facts["host"]["kernel"], facts["host"]["machine"]
    return facts


def key_facts(facts: dict[str, Any]) -> list[str]:
    """The few lines the SUMMARY opens with."""
    if "host" not in facts:
        return []
    h, r = facts["host"], facts["runsc"]
    gpus = "; ".join(f"{g['index']}: {g['name']} {g['pci.bus_id']}" for g in facts.get("gpus", []))
    libs = facts["nvidia_libs"]
    return [
        f"host     {h['os']}, kernel {h['kernel']}, inside gVisor: "
        + ("yes" if h["inside_gvisor"] else "no"),
        f"driver   {facts['driver_version'] or 'none'} (/proc), "
        f"{facts.get('driver_version_nvidia_smi') or 'none'} "
        f"(nvidia-smi: {facts['nvidia_smi'] or 'not found'})",
        f"GPUs     {gpus or facts.get('gpu_query_error') or 'none seen'}",
        "nodes    " + (" ".join(f"{p}={n}" for p, n in facts["device_nodes"].items()) or "none"),
        f"libs     {len(libs['ld_cache'])} in ld.so's cache, {len(libs['outside_ld_cache'])} "
        f"outside; nvidia-ctk: {facts['nvidia_ctk'] or 'none'}",
        f"runsc    {r['version']}; newest supported {r['newest_supported']}; host driver "
        f"supported: {facts['driver_supported']}; forced ABI {facts.get('forced_driver_version')}",
    ]


def print_facts(facts: dict[str, Any]) -> None:
    h, r = facts["host"], facts["runsc"]
    print(f"host:            {h['os']}; {h['uname']}")
    gvisor = "YES: " + "; ".join(h["gvisor_evidence"]) if h["inside_gvisor"] else "no"
    print(f"inside gVisor:   {gvisor}")
    drv = facts["driver_version"] or "none (/proc/driver/nvidia/version is missing)"
    print(f"NVIDIA driver:   {drv} (/proc); "
          f"{facts.get('driver_version_nvidia_smi') or 'none'} (nvidia-smi)")
    for g in facts.get("gpus", []):
        print(f"GPU {g['index']}:           {g['name']}, {g['uuid']}, bus {g['pci.bus_id']}, "
              f"{g['memory.total']}")
    for n in facts["gpu_numbering"]:
        print(f"GPU {n['index']} numbering: bus {n['bus']} has device minor {n['minor']} "
              f"(/proc/driver/nvidia/gpus)" + ("" if n["index_is_minor"] is not False
                                               else ": the index is NOT the minor"))
    if facts.get("device_nodes_before_nvidia_smi") is not None:
        before = facts["device_nodes_before_nvidia_smi"]
        print("device nodes before nvidia-smi ran: " + (", ".join(before) or "none"))
    nodes = facts["device_nodes"]
    print("device nodes:    " + (", ".join(f"{p} {n}" for p, n in nodes.items()) or "none"))
    libs = facts["nvidia_libs"]
    print(f"driver libs:     {len(libs['ld_cache'])} in ld.so's cache, "
          f"{len(libs['outside_ld_cache'])} outside it"
          + (f" (container LD_LIBRARY_PATH={libs['container_ld_library_path']})"
             if libs["container_ld_library_path"] else ""))
    print(f"runsc:           {r['path']} ({r['version']})")
    print("nvproxy drivers: " + (" ".join(r["supported_drivers"])
                                 if r["supported_drivers"] is not None else r["supported_error"]))
    if r["newest_supported"]:
        print(f"                 newest: {r['newest_supported']}; the host's driver is "
              + {True: "in the list", False: "NOT in the list", None: "unknown"}[
                  facts["driver_supported"]])
    print(f"nvidia-ctk:      {facts['nvidia_ctk'] or 'not installed'}"
          + (f" ({facts['nvidia_ctk_version']})" if facts.get("nvidia_ctk_version") else ""))
    print(f"nvidia-smi:      {facts['nvidia_smi'] or 'not found'}")
    if facts.get("host_nvidia_smi_L"):
        print("host nvidia-smi -L (outside gVisor):\n  "
              + facts["host_nvidia_smi_L"].replace("\n", "\n  "))
    print(f"dpkg:            {h['dpkg'] or 'not installed'}")
    print(f"shim:            {facts['shim']}")
    print(f"container rootfs: / (read-only); python: {facts['container_python']}")
