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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpusmoke.bounded import run

__all__ = ["gather", "gvisor_evidence", "identity", "parse_driver_version", "parse_gpu_query",
           "parse_ldconfig", "print_facts", "version_key"]

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


def _nvidia(facts: dict[str, Any], timeout: float) -> None:
    banner = _read("/proc/driver/nvidia/version")
    facts["driver_version"] = parse_driver_version(banner)
    facts["driver_banner"] = banner.strip()
    facts["proc_driver_gpus"] = proc_gpus()
    facts["device_nodes"] = {p: f"{a}:{b}" for p, (a, b) in device_nodes().items()}
    machine = facts["host"]["machine"]
    cached = parse_ldconfig(run(["ldconfig", "-p"], timeout=timeout).stdout, machine)
    facts["nvidia_libs"] = find_libs(cached, machine)
    smi = facts["nvidia_smi"] = find_nvidia_smi()
    env = dict(os.environ)
    if facts["nvidia_libs"]["container_ld_library_path"]:
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, [
            facts["nvidia_libs"]["container_ld_library_path"], env.get("LD_LIBRARY_PATH")]))
    if smi:
        listed = run([smi, "-L"], timeout=timeout, env=env)
        facts["host_nvidia_smi_L"] = listed.text.strip() if not listed.timed_out else listed.why()
        query = run([smi, f"--query-gpu={GPU_QUERY}", "--format=csv,noheader"],
                    timeout=timeout, env=env)
        facts["gpus"] = parse_gpu_query(query.stdout)
        if not facts["gpus"]:
            facts["gpu_query_error"] = query.why() if not query.ok else query.text.strip()
        versions = {g["driver_version"] for g in facts["gpus"]}
        facts["driver_version_nvidia_smi"] = versions.pop() if len(versions) == 1 else None
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


def gather(runsc: Path, shim: Path, timeout: float = 30.0) -> dict[str, Any]:
    facts: dict[str, Any] = {"host": identity(min(timeout, 10))}
    facts["kernel"], facts["machine"] = facts["host"]["kernel"], facts["host"]["machine"]
    _nvidia(facts, timeout)
    facts["runsc"] = _runsc(runsc, timeout)
    listed, drv = facts["runsc"]["supported_drivers"], facts["driver_version"]
    drv = drv or facts.get("driver_version_nvidia_smi")
    facts["driver_supported"] = None if drv is None or listed is None else any(
        version_key(v) == version_key(drv) for v in listed)
    # The distribution's python3 first: it needs nothing but the root filesystem.
    facts["container_python"] = next(
        (p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)),
        os.path.realpath(sys.executable))
    facts["shim"] = _first_line(run([str(shim), "version"], timeout=timeout).text)
    return facts


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
    for bus, info in facts["proc_driver_gpus"].items():
        print(f"/proc GPU {bus}: minor {info.get('Device Minor', '?')}, {info.get('Model', '?')}")
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
