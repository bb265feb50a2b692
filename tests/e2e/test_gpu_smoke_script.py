"""scripts/gpu_smoke.py, the GPU smoke test for real GPU hosts, run on this GPU-less one.

The e2e tests run the script as a GPU node's operator would (minus
install-deps) and check that it reports the refusal or runsc's failure as an
outcome, that the plain container runs, that it exits 0, writes the JSON
summary, the text and the log bundle, and leaves nothing behind, also when
interrupted. The pure helpers (scripts/gpusmoke) and the in-container CUDA
program (against a stub libcuda) are checked table-driven.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest

from tests import paths
from tests.e2e import containerd as cd
from tests.e2e import leftovers

SCRIPT = paths.REPO / "scripts/gpu_smoke.py"
PYTHON = paths.REPO / ".venv/bin/python"
RUN_TIMEOUT = 300


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gs = _load()
host, cdi, containers = gs.host, gs.cdi, gs.containers
CUDA_CHECK = paths.REPO / "scripts/gpusmoke/cuda_check.py"


# --- helpers -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.90.07  Fri May 31 09:35:42 UTC 2024\n"
     "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n", "550.90.07"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.172.08  Release Build  "
     "(dvs-builder@U16-I3-B03-4-3)  Tue Jul  8 18:14:41 UTC 2025\n", "570.172.08"),
    ("NVRM version: NVIDIA UNIX aarch64 Kernel Module  535.129.03  Thu Oct 19 18:42:32 UTC 2023",
     "535.129.03"),
    ("", None),
    ("GCC version:  gcc version 12.2.0\n", None),
])
def test_parse_driver_version(text: str, expected: str | None) -> None:
    assert host.parse_driver_version(text) == expected


LDCONFIG = """\
1234 libs found in cache `/etc/ld.so.cache'
\tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1
\tlibnvidia-ml.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libnvidia-ml.so.1
\tlibnvidia-ml.so.1 (libc6) => /lib/i386-linux-gnu/libnvidia-ml.so.1
\tlibnvidia-glcore.so.550.90.07 (libc6,x86-64) => /lib/x86_64-linux-gnu/libnvidia-glcore.so.5
\tlibnvidia-ptxjitcompiler.so.1 (libc6,x86-64) => /usr/lib64/libnvidia-ptxjitcompiler.so.1
\tlibcuda.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libcuda.so.1
\tlibcuda.so.1 (libc6,x86-64) => /usr/local/cuda/compat/libcuda.so.1
\tlibcuda.so (libc6,x86-64) => /lib/x86_64-linux-gnu/libcuda.so
\tlibcuda.so.1 (libc6,AArch64) => /lib/aarch64-linux-gnu/libcuda.so.1
"""


@pytest.mark.parametrize(("machine", "expected"), [
    ("x86_64", ["/lib/x86_64-linux-gnu/libcuda.so", "/lib/x86_64-linux-gnu/libcuda.so.1",
                "/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
                "/usr/lib64/libnvidia-ptxjitcompiler.so.1"]),
    ("aarch64", ["/lib/aarch64-linux-gnu/libcuda.so.1"]),
    ("riscv64", []),
])
def test_parse_ldconfig_keeps_compute_libraries_of_this_abi(
        machine: str, expected: list[str]) -> None:
    assert host.parse_ldconfig(LDCONFIG, machine) == expected


GPU_QUERY_OUT = """\
0, NVIDIA H200, GPU-6f1c2b1e-0d6a-4b8e-9a57-3f3c1d2e4a5b, 00000000:19:00.0, 580.159.03, \
143771 MiB, 9.0
1, NVIDIA H200, GPU-0a9e8d7c-6b5a-4938-8271-605f4e3d2c1b, 00000000:3B:00.0, 580.159.03, \
143771 MiB, 9.0
"""


def test_parse_gpu_query_keeps_whole_rows() -> None:
    rows = host.parse_gpu_query(GPU_QUERY_OUT)
    assert [(r["index"], r["name"], r["pci.bus_id"], r["driver_version"]) for r in rows] == [
        ("0", "NVIDIA H200", "00000000:19:00.0", "580.159.03"),
        ("1", "NVIDIA H200", "00000000:3B:00.0", "580.159.03")]
    assert host.parse_gpu_query("Field \"compute_cap\" is not a valid field to query.") == []


@pytest.mark.parametrize(("proc_version", "dmesg", "count"), [
    ("Linux version 4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016\n",
     "[    0.000000] Starting gVisor...\n[    0.1] Forking spaghetti code...\n", 2),
    ("Linux version 6.8.0-45-generic (buildd@lcy02-amd64-115) #45-Ubuntu SMP", "", 0),
    ("Linux version 4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016", "", 1),
])
def test_gvisor_evidence(proc_version: str, dmesg: str, count: int) -> None:
    assert len(host.gvisor_evidence(proc_version, dmesg)) == count


@pytest.mark.parametrize(("listed", "newest"), [
    (["535.154.05", "550.90.07", "535.104.12", "550.54.15"], "550.90.07"),
    (["535.230.02", "570.86.15", "560.35.03", "570.158.01"], "570.158.01"),
])
def test_newest_supported_is_by_version_not_by_text(listed: list[str], newest: str) -> None:
    assert max(listed, key=host.version_key) == newest


def _facts(supported: bool | None, newest: str | None) -> dict[str, Any]:
    return {"driver_supported": supported, "runsc": {"newest_supported": newest}}


@pytest.mark.parametrize(("given", "facts", "forced", "why"), [
    (None, _facts(False, "550.90.07"), "550.90.07", "the newest driver this runsc supports"),
    (None, _facts(None, "550.90.07"), "550.90.07", "the newest driver this runsc supports"),
    (None, _facts(True, "550.90.07"), None, "nothing to force"),
    (None, _facts(None, None), None, "pass --driver-version"),
    ("535.129.03", _facts(True, "550.90.07"), "535.129.03", "--driver-version"),
])
def test_forced_version(given: str | None, facts: dict[str, Any], forced: str | None,
                        why: str) -> None:
    args = gs.parse_args([] if given is None else ["--driver-version", given])
    chosen, reason = gs.forced_version(args, facts)
    assert chosen == forced and why in reason


def test_device_nodes_reads_real_character_devices(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    made = {"nvidia0": (195, 0), "nvidia3": (195, 3), "nvidiactl": (195, 255),
            "nvidia-uvm": (505, 0), "nvidia-caps/nvidia-cap1": (508, 1)}
    (tmp_path / "nvidia-caps").mkdir()
    for name, (major, minor) in made.items():
        os.mknod(tmp_path / name, 0o600 | stat.S_IFCHR, os.makedev(major, minor))
    (tmp_path / "nvidia-modeset").write_text("a regular file is not a device")
    assert host.device_nodes(tmp_path) == {f"/dev/{n}": mm for n, mm in made.items()}


def test_proc_gpus_reads_each_gpus_minor(tmp_path: Path) -> None:
    for bus, minor in (("0000:19:00.0", 0), ("0000:3b:00.0", 1)):
        d = tmp_path / "driver/nvidia/gpus" / bus
        d.mkdir(parents=True)
        (d / "information").write_text(
            f"Model: \t\t NVIDIA H200\nIRQ:   \t\t 0\nGPU UUID: \t GPU-x{minor}\n"
            f"Video BIOS: \t 96.00.a5.00.01\nBus Type: \t PCIe\nDevice Minor: \t {minor}\n")
    gpus = host.proc_gpus(tmp_path)
    assert {bus: (g["Model"], g["Device Minor"]) for bus, g in gpus.items()} == {
        "0000:19:00.0": ("NVIDIA H200", "0"), "0000:3b:00.0": ("NVIDIA H200", "1")}


def test_find_libs_outside_ld_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib64, cached = tmp_path / "nvidia/lib64", tmp_path / "cached"
    lib64.mkdir(parents=True)
    cached.mkdir()
    for name in ("libcuda.so.580.159.03", "libnvidia-ml.so.1", "libGLX.so.0"):
        (lib64 / name).write_text("")
    (lib64 / "libcuda.so.1").symlink_to("libcuda.so.580.159.03")
    (cached / "libnvidia-ml.so.1").write_text("")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"{lib64}:{cached}:{tmp_path / 'missing'}")
    # The cache names the library through another path to the same file.
    (tmp_path / "alias").symlink_to(cached)
    libs = host.find_libs([str(tmp_path / "alias/libnvidia-ml.so.1")], "x86_64")
    outside = [p for p in libs["outside_ld_cache"] if p.startswith(str(tmp_path))]
    assert outside == [str(lib64 / n) for n in ("libcuda.so.1", "libcuda.so.580.159.03",
                                                "libnvidia-ml.so.1")]
    assert libs["container_ld_library_path"].split(":")[0] == str(lib64)
    assert str(cached) not in libs["container_ld_library_path"].split(":")


@pytest.mark.parametrize(("bus", "key"), [
    ("00000000:19:00.0", (0, 0x19, 0, 0)),
    ("0000:3b:00.0", (0, 0x3B, 0, 0)),
    ("00000001:C1:1F.7", (1, 0xC1, 0x1F, 7)),
    ("GPU-0a9e8d7c", None),
])
def test_bus_key(bus: str, key: tuple[int, ...] | None) -> None:
    assert host.bus_key(bus) == key


def test_gpu_numbering_matches_index_and_minor_by_bus() -> None:
    gpus = host.parse_gpu_query(GPU_QUERY_OUT)
    proc = {"0000:19:00.0": {"Device Minor": "1"}, "0000:3b:00.0": {"Device Minor": "0"}}
    rows = host.gpu_numbering(gpus, proc)
    assert [(r["index"], r["minor"], r["index_is_minor"]) for r in rows] == [
        ("0", "1", False), ("1", "0", False)]
    assert [r["minor"] for r in host.gpu_numbering(gpus, {})] == [None, None]


# A stand-in for the one thing this host lacks: the NVIDIA driver's nvidia-smi,
# printing what the real one prints for `-L` and the smoke run's query.
FAKE_SMI = """#!/bin/sh
case "$1" in
  -L) echo "GPU 0: NVIDIA H200 (UUID: GPU-6f1c2b1e-0d6a-4b8e-9a57-3f3c1d2e4a5b)" ;;
  --query-gpu=*) echo "0, NVIDIA H200, GPU-6f1c2b1e-0d6a-4b8e-9a57-3f3c1d2e4a5b, \
00000000:19:00.0, 580.159.03, 143771 MiB, 9.0" ;;
  *) exit 6 ;;
esac
"""
PROC_VERSION = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.03  Release "
                "Build  (dvs-builder@U22-I3-AE18-23-3)  Wed Sep 10 10:10:10 UTC 2025\n")


def test_gather_on_a_stand_in_gpu_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() != 0 or paths.RUNSC_2024 is None:
        pytest.skip("needs root (mknod) and runsc 20240729")
    root = tmp_path
    (root / "bin").mkdir()
    (root / "bin/nvidia-smi").write_text(FAKE_SMI)
    (root / "bin/nvidia-smi").chmod(0o755)
    lib64 = root / "nvidia/lib64"
    lib64.mkdir(parents=True)
    (lib64 / "libcuda.so.580.159.03").write_text("")
    (lib64 / "libcuda.so.1").symlink_to("libcuda.so.580.159.03")
    (lib64 / "libnvidia-ml.so.1").write_text("")
    info = root / "proc/driver/nvidia/gpus/0000:19:00.0"
    info.mkdir(parents=True)
    (info / "information").write_text("Model: \t\t NVIDIA H200\nDevice Minor: \t 0\n")
    (root / "proc/driver/nvidia/version").write_text(PROC_VERSION)
    (root / "dev").mkdir()
    for name, (major, minor) in {"nvidia0": (195, 0), "nvidiactl": (195, 255),
                                 "nvidia-uvm": (507, 0)}.items():
        os.mknod(root / "dev" / name, 0o600 | stat.S_IFCHR, os.makedev(major, minor))
    monkeypatch.setenv("PATH", f"{root / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(lib64))
    facts = host.gather(paths.RUNSC_2024, paths.SHIM, 30, proc=root / "proc", dev=root / "dev")
    assert "errors" not in facts, facts["errors"]
    assert (facts["driver_version"], facts["driver_version_nvidia_smi"]) == (
        "580.159.03", "580.159.03")
    assert facts["driver_supported"] is False
    assert facts["runsc"]["newest_supported"] == "550.90.07"
    assert facts["device_nodes"] == {"/dev/nvidia-uvm": "507:0", "/dev/nvidia0": "195:0",
                                     "/dev/nvidiactl": "195:255"}
    assert facts["gpu_numbering"] == [{"index": "0", "bus": "00000000:19:00.0", "minor": "0",
                                       "uuid": "GPU-6f1c2b1e-0d6a-4b8e-9a57-3f3c1d2e4a5b",
                                       "index_is_minor": True}]
    assert facts["nvidia_libs"]["container_ld_library_path"] == str(lib64)
    assert "LD_LIBRARY_PATH=" + str(lib64) in containers.container_env(facts, "cdi")
    host.print_facts(facts)
    printed = capsys.readouterr().out
    assert "GPU 0:           NVIDIA H200" in printed and "NOT in the list" in printed
    head = "\n".join(host.key_facts(facts))
    assert "580.159.03 (/proc)" in head and "0: NVIDIA H200 00000000:19:00.0" in head
    step = cdi.make_cdi(root / "cdi", "minimal", facts, 10, dev=root / "dev")
    spec = step.data["spec"]
    assert [d["name"] for d in spec["devices"]] == ["0", "all"]
    assert spec["devices"][0]["containerEdits"]["deviceNodes"] == [
        {"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0}]
    mounted = {m["hostPath"] for m in spec["containerEdits"]["mounts"]}
    assert {str(lib64 / "libcuda.so.580.159.03"), str(lib64 / "libnvidia-ml.so.1"),
            str(root / "bin/nvidia-smi")} <= mounted


def _node_paths(edits: dict[str, Any]) -> list[str]:
    return [n["path"] for n in edits.get("deviceNodes", [])]


@pytest.mark.parametrize(("nodes", "devices", "common", "numbered"), [
    ({"/dev/nvidiactl": (195, 255), "/dev/nvidia-uvm": (508, 0),
      "/dev/nvidia-uvm-tools": (508, 1), "/dev/nvidia10": (195, 10), "/dev/nvidia2": (195, 2),
      "/dev/nvidia-modeset": (195, 254)},
     ["2", "10", "all"], ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"], True),
    ({}, ["0", "all"], ["/dev/nvidiactl", "/dev/nvidia-uvm"], False),
])
def test_minimal_cdi_spec(nodes: dict[str, tuple[int, int]], devices: list[str],
                          common: list[str], numbered: bool) -> None:
    spec = cdi.minimal_cdi_spec(nodes, ["/usr/bin/nvidia-smi"])
    assert spec["kind"] == "nvidia.com/gpu"
    assert [d["name"] for d in spec["devices"]] == devices
    edits = spec["containerEdits"]
    assert _node_paths(edits) == common
    assert edits["env"] == ["NVIDIA_VISIBLE_DEVICES=void"]
    assert edits["mounts"] == [{"hostPath": "/usr/bin/nvidia-smi",
                                "containerPath": "/usr/bin/nvidia-smi",
                                "options": ["ro", "nosuid", "nodev", "bind"]}]
    every = spec["devices"][-1]["containerEdits"]["deviceNodes"]
    assert [n["path"] for n in every] == [
        n for d in spec["devices"][:-1] for n in _node_paths(d["containerEdits"])]
    assert all(("major" in n) == numbered for n in every)


@pytest.mark.parametrize(("spec", "count"), [
    ({"containerEdits": {"hooks": [{"hookName": "createContainer"}] * 2},
      "devices": [{"name": "0", "containerEdits": {"hooks": [{"hookName": "x"}]}}]}, 3),
    ({"devices": [{"name": "0"}]}, 0),
])
def test_without_hooks(spec: dict[str, Any], count: int) -> None:
    cleaned, dropped = cdi.without_hooks(spec)
    assert dropped == count
    assert "hooks" not in json.dumps(cleaned)


REFUSED = {"ok": False, "refusals": ["container c: no NVIDIA driver"]}
ACCEPTED = {"ok": True, "refusals": []}


@pytest.mark.parametrize(("plan", "rc", "stdout", "stderr", "marker", "status", "detail"), [
    (ACCEPTED, 0, "GPU 0: NVIDIA H100\n", "", None, "ok", "GPU 0: NVIDIA H100"),
    (ACCEPTED, 0, "GPU 0: NVIDIA H100\nGPU 1: NVIDIA H100\n", "", None, "ok",
     "GPU 0: NVIDIA H100\nGPU 1: NVIDIA H100"),
    (ACCEPTED, 0, "cuInit ok\nGPU 0: H100\nCUDA_CHECK_OK\n", "", "CUDA_CHECK_OK", "ok",
     "cuInit ok\nGPU 0: H100"),
    (ACCEPTED, 0, "", "", None, "ok", "exit 0"),
    (ACCEPTED, 0, "cuInit ok\n", "", "CUDA_CHECK_OK", "failed", "exited 0: cuInit ok"),
    (REFUSED, 1, "", "ctr: failed to create shim task: container c: no NVIDIA driver\n", None,
     "refused", "container c: no NVIDIA driver"),
    (ACCEPTED, 1, "", "ctr: runsc start failed: the sandbox crashed\n", None, "failed",
     "runsc/shim error: runsc start failed: the sandbox crashed"),
    (None, 1, "", "ctr: bad config\n", None, "failed", "runsc/shim error: bad config"),
    (ACCEPTED, 1, "", "cuInit failed: CUresult 100 (CUDA_ERROR_NO_DEVICE)\n", "CUDA_CHECK_OK",
     "failed", "exited 1: cuInit failed: CUresult 100 (CUDA_ERROR_NO_DEVICE)"),
])
def test_classify(plan: dict[str, Any] | None, rc: int, stdout: str, stderr: str,
                  marker: str | None, status: str, detail: str) -> None:
    out = subprocess.CompletedProcess(["ctr"], rc, stdout, stderr)
    step = containers.classify("step", plan, out, marker)
    assert (step.status, step.detail, step.exit_code) == (status, detail, rc)


BOOT_LOG = """\
I1126 20:55:41.373844   25792 main.go:199] Args: [runsc-sandbox --nvproxy=true]
D1126 20:55:41.373900   25792 config.go:436] Config.NVProxy (--nvproxy): true
        "path": "/dev/nvidiactl",
W1126 20:55:41.911221   25792 vfs.go:978] ignoring unknown mount option "nosuid"
I1126 20:55:41.398868   25792 nvproxy.go:35] NVIDIA driver version: 535.161.08
W1126 20:55:41.398900   25792 main.go:230] FATAL ERROR: registering nvproxy driver: \
unsupported Nvidia driver version: 535.161.08
E1126 20:55:41.399000   25792 boot.go:10] something broke
"""


def test_boot_log_hints_keep_gpu_and_error_lines(tmp_path: Path) -> None:
    log = tmp_path / "runsc.log.20261126-205541.1.boot.txt"
    log.write_text(BOOT_LOG)
    hints = containers.boot_log_hints([log]).splitlines()
    assert [h.split("] ", 1)[1] for h in hints] == [
        "NVIDIA driver version: 535.161.08",
        "FATAL ERROR: registering nvproxy driver: unsupported Nvidia driver version: 535.161.08",
        "something broke"]


# A stand-in libcuda.so.1: host memory plays device memory; STUB_FAIL names a
# call to fail, STUB_COUNT sets the device count, STUB_CORRUPT spoils the copy.
STUB_LIBCUDA = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#define DEV(p) ((void *)(uintptr_t)(p))
static int fail(const char *fn) {
    const char *f = getenv("STUB_FAIL");
    return f && !strcmp(f, fn) ? 100 : 0;
}
int cuGetErrorName(int rc, const char **s) {
    *s = rc == 100 ? "CUDA_ERROR_NO_DEVICE" : "?";
    return 0;
}
int cuInit(unsigned f) { return fail("cuInit"); }
int cuDriverGetVersion(int *v) { *v = 12040; return fail("cuDriverGetVersion"); }
int cuDeviceGetCount(int *n) {
    const char *c = getenv("STUB_COUNT");
    *n = c ? atoi(c) : 2;
    return fail("cuDeviceGetCount");
}
int cuDeviceGet(int *d, int i) { *d = i; return fail("cuDeviceGet"); }
int cuDeviceGetName(char *s, int n, int d) {
    strncpy(s, "Stub GPU", n);
    return fail("cuDeviceGetName");
}
int cuDeviceTotalMem_v2(size_t *b, int d) { *b = (size_t)80 << 30; return 0; }
int cuDevicePrimaryCtxRetain(void **c, int d) { *c = (void *)1; return 0; }
int cuCtxSetCurrent(void *c) { return c ? 0 : 201; }
int cuMemAlloc_v2(uint64_t *p, size_t n) {
    *p = (uint64_t)(uintptr_t)malloc(n);
    return fail("cuMemAlloc_v2");
}
int cuMemsetD8_v2(uint64_t p, unsigned char v, size_t n) { memset(DEV(p), v, n); return 0; }
int cuMemcpyDtoH_v2(void *h, uint64_t p, size_t n) {
    memcpy(h, DEV(p), n);
    if (getenv("STUB_CORRUPT")) ((char *)h)[n - 1] = 0;
    return 0;
}
int cuMemFree_v2(uint64_t p) { free(DEV(p)); return fail("cuMemFree_v2"); }
int cuDevicePrimaryCtxRelease_v2(int d) { return 0; }
"""


@pytest.fixture(scope="module")
def stub_libcuda(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler for the stub libcuda")
    d = tmp_path_factory.mktemp("stubcuda")
    (d / "stub.c").write_text(STUB_LIBCUDA)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(d / "libcuda.so.1"),
                    str(d / "stub.c")], check=True, capture_output=True, timeout=60)
    return d


@pytest.mark.parametrize(("env", "rc", "expected"), [
    ({}, 0, "GPU 1: Stub GPU, 81920 MiB, 1 MiB alloc/memset/copy/free ok\nCUDA_CHECK_OK"),
    ({"STUB_FAIL": "cuInit"}, 1, "cuInit failed: CUresult 100 (CUDA_ERROR_NO_DEVICE)"),
    ({"STUB_FAIL": "cuMemAlloc_v2"}, 1, "cuMemAlloc_v2 failed: CUresult 100"),
    ({"STUB_COUNT": "0"}, 1, "no CUDA device visible"),
    ({"STUB_CORRUPT": "1"}, 1, "GPU 0: 1 MiB memset/copy-back mismatch"),
    ({"LD_LIBRARY_PATH": "/nonexistent"}, 1, "cannot load the CUDA driver library"),
])
def test_cuda_check_program_against_a_stub_libcuda(
        stub_libcuda: Path, env: dict[str, str], rc: int, expected: str) -> None:
    run_env = {"PATH": os.environ.get("PATH", ""), "LD_LIBRARY_PATH": str(stub_libcuda), **env}
    out = subprocess.run([sys.executable, "-I", str(CUDA_CHECK)], env=run_env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == rc, out.stdout + out.stderr
    assert expected in (out.stdout + out.stderr).strip(), out.stdout + out.stderr


# --- the whole script, end to end -------------------------------------------------

def _requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if all(cd.missing_for(v) for v in ("2.1", "1.7", "1.6")):
        return "no containerd installed (run scripts/install-deps)"
    if paths.RUNSC_2024 is None:
        return "runsc 20240729 is not installed (run scripts/install-deps)"
    if not paths.SHIM.exists():
        return f"{paths.SHIM.name} is not installed (pip install -e .)"
    if Path("/proc/driver/nvidia/version").exists():
        return "this host has an NVIDIA driver; these tests expect the GPU-less outcome"
    return None


def _processes_naming(workdir: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if workdir in cmdline and proc.pid != os.getpid():
            found.append(f"{proc.pid}: {cmdline[:200]}")
    return found


def _assert_nothing_left(summary: dict[str, Any]) -> None:
    workdir = summary["workdir"]
    assert workdir.startswith("/tmp/gsmoke-"), workdir
    assert not Path(workdir).exists()
    assert leftovers.mounts_under(Path(workdir)) == []
    assert _processes_naming(workdir) == []
    daemon_pid = summary["facts"].get("containerd_pid")
    if daemon_pid is not None:
        assert not psutil.pid_exists(daemon_pid) or "containerd" not in " ".join(
            psutil.Process(daemon_pid).cmdline())
        assert gs.forkservers(daemon_pid) == []


def _statuses(summary: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["status"] for s in summary["steps"]}


NO_DRIVER = "no NVIDIA driver is loaded on this host"
CRASHED = "the sandbox crashed"
OLD_RUNSC = "<runsc 20221219>"  # stands for paths.RUNSC_2022, which may be missing
# What every run on this GPU-less host reports, whatever the case below adds.
COMMON = {"install-deps": "skipped", "runsc-probe": "ok", "cdi-spec": "ok", "doctor": "ok",
          "containerd": "ok", "plain": "ok", "cleanup": "ok", "logs": "ok"}
NEW_RUNSC = {"plan-cdi": "refused", "plan-env": "refused", "smi-as-is": "refused",
             "cuda-as-is": "skipped", "smi-forced": "failed", "cuda-forced": "failed"}


@pytest.mark.e2e
@pytest.mark.parametrize(("extra", "expected", "forced", "text"), [
    ([], NEW_RUNSC, "550.90.07", NO_DRIVER),
    (["--containerd", "1.6"], NEW_RUNSC, "550.90.07", NO_DRIVER),
    (["--driver-version", "535.129.03"], NEW_RUNSC, "535.129.03", NO_DRIVER),
    (["--runsc", OLD_RUNSC, "--platform", "ptrace"],
     {**NEW_RUNSC, "smi-forced": "skipped", "cuda-forced": "skipped"}, None,
     "has no --nvproxy flag, which first appeared in release-20230529.0"),
])
def test_script_reports_gpu_outcome_and_cleans_up(
        tmp_path: Path, extra: list[str], expected: dict[str, str], forced: str | None,
        text: str) -> None:
    why = _requirements()
    if "--containerd" in extra:
        why = why or cd.missing_for(extra[extra.index("--containerd") + 1])
    if OLD_RUNSC in extra:
        why = why or ("runsc 20221219 is not installed" if paths.RUNSC_2022 is None else None)
        extra = [str(paths.RUNSC_2022) if a == OLD_RUNSC else a for a in extra]
    if why:
        pytest.skip(why)
    results = tmp_path / "results"
    out = subprocess.run([str(PYTHON), str(SCRIPT), "--skip-install", "--results", str(results),
                          *extra], capture_output=True, text=True, timeout=RUN_TIMEOUT,
                         stdin=subprocess.DEVNULL, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert sorted(p.name for p in results.iterdir()) == sorted(gs.RESULT_FILES)
    summary = json.loads((results / "gpu-smoke.json").read_text())
    assert summary["exit_code"] == 0 and not summary["error"] and not summary["interrupted"]
    assert _statuses(summary) == {**COMMON, **expected}
    steps = {s["name"]: s for s in summary["steps"]}
    for name in ("plan-cdi", "plan-env", "smi-as-is"):
        assert text in steps[name]["detail"], steps[name]
    # The plain container ran in gVisor: its kernel is the Sentry's.
    assert host.gvisor_evidence(steps["plain"]["detail"], ""), steps["plain"]
    facts = summary["facts"]
    assert facts["driver_version"] is None and facts["device_nodes"] == {}
    assert facts["host"]["inside_gvisor"] is False
    assert facts["forced_driver_version"] == forced
    if forced is None:  # 20221219 can neither list drivers nor take --nvproxy
        assert facts["runsc"]["supported_drivers"] is None
        assert "release-20231106.0" in facts["runsc"]["supported_error"]
        assert "pass --driver-version" in steps["smi-forced"]["detail"]
    else:
        assert "550.90.07" in facts["runsc"]["supported_drivers"]
        assert steps["plan-cdi"]["data"]["plan"]["runsc_flags"]["nvproxy"] == "true"
        for name in ("smi-forced", "cuda-forced"):
            step = steps[name]
            assert step["data"]["plan"]["runsc_flags"]["nvproxy-driver-version"] == forced
            assert CRASHED in step["detail"], step
    assert summary["leftovers"] == []
    text_out = (results / "gpu-smoke.txt").read_text()
    assert out.stdout.startswith(text_out[:2000])
    for part in ("=== host facts", "runsc command:", "=== SUMMARY",
                 "result: ran and reported (exit 0)"):
        assert part in text_out
    with tarfile.open(results / "gpu-smoke-logs.tar.gz") as tar:
        names = tar.getnames()
    assert "containerd.log" in names and "cdi/nvidia.json" in names
    assert any(n.startswith("runsc-logs/") and n.endswith(".boot.txt") for n in names), names
    _assert_nothing_left(summary)


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_script_stops_everything(tmp_path: Path, sig: signal.Signals) -> None:
    why = _requirements()
    if why:
        pytest.skip(why)
    report = tmp_path / "out.json"
    proc = subprocess.Popen([str(PYTHON), "-u", str(SCRIPT), "--skip-install", "--json",
                             str(report), "--driver-version", "550.90.07"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            # containerd is up and the containers are still to come: stop it here.
            if line.startswith("--> containerd: ok"):
                proc.send_signal(sig)
                break
        rest, _ = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(seen) + rest
    assert proc.returncode == 130, output[-4000:]
    summary = json.loads(report.read_text())
    assert summary["interrupted"] and summary["exit_code"] == 130
    assert _statuses(summary)["cleanup"] == "ok", output[-4000:]
    assert "result: interrupted (exit 130)" in output
    _assert_nothing_left(summary)
