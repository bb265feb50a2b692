"""scripts/gpu_smoke.py, the GPU smoke test for real GPU hosts, run on this GPU-less one.

The e2e tests run the script as a GPU node's operator would (minus
install-deps) and check that it reports the refusal or runsc's failure as an
outcome, that the plain container runs, that it exits 0, writes the JSON
summary, the text and the log bundle, and leaves nothing behind, also when
interrupted. The pure helpers (scripts/gpusmoke) and the in-container CUDA
program (against a stub libcuda) are checked table-driven.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests import paths
from tests.e2e import containerd as cd
from tests.e2e import leftovers
from tests.scripts import interrupt_when, load_script

SCRIPT = paths.REPO / "scripts/gpu_smoke.py"
PYTHON = paths.REPO / ".venv/bin/python"
RUN_TIMEOUT = 300




gs = load_script("gpu_smoke.py", "gpu_smoke")
host, cdi, containers = gs.host, gs.cdi, gs.containers
CUDA_CHECK = paths.REPO / "scripts/gpusmoke/cuda_check.py"


# --- helpers -------------------------------------------------------------------







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
    # containerd is up and the containers are still to come: stop it there.
    code, output = interrupt_when(
        [str(PYTHON), "-u", str(SCRIPT), "--skip-install", "--json", str(report),
         "--driver-version", "550.90.07"], "--> containerd: ok", sig, RUN_TIMEOUT)
    assert code == 130, output[-4000:]
    summary = json.loads(report.read_text())
    assert summary["interrupted"] and summary["exit_code"] == 130
    assert _statuses(summary)["cleanup"] == "ok", output[-4000:]
    assert "result: interrupted (exit 130)" in output
    _assert_nothing_left(summary)
