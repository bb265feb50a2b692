"""The pure parts of scripts/gpu_smoke.py (scripts/gpusmoke), table-driven: what
it reads from a GPU host's /proc, ldconfig and nvidia-smi, the CDI spec it
writes, and how it classifies an outcome. The whole script runs in e2e."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests import paths
from tests.scripts import load_script

SCRIPT = paths.REPO / "scripts/gpu_smoke.py"




gs = load_script("gpu_smoke.py", "gpu_smoke")
host, cdi, containers = gs.host, gs.cdi, gs.containers

REFUSED = {"ok": False, "refusals": ["container c: no NVIDIA driver"]}
ACCEPTED = {"ok": True, "refusals": []}
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


GPU_QUERY_OUT = """\
0, NVIDIA H200, GPU-6f1c2b1e-0d6a-4b8e-9a57-3f3c1d2e4a5b, 00000000:19:00.0, 580.159.03, \
143771 MiB, 9.0
1, NVIDIA H200, GPU-0a9e8d7c-6b5a-4938-8271-605f4e3d2c1b, 00000000:3B:00.0, 580.159.03, \
143771 MiB, 9.0
"""


def _facts(supported: bool | None, newest: str | None) -> dict[str, Any]:
    return {"driver_supported": supported, "runsc": {"newest_supported": newest}}


def _node_paths(edits: dict[str, Any]) -> list[str]:
    return [n["path"] for n in edits.get("deviceNodes", [])]



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


def test_boot_log_hints_keep_gpu_and_error_lines(tmp_path: Path) -> None:
    log = tmp_path / "runsc.log.20261126-205541.1.boot.txt"
    log.write_text(BOOT_LOG)
    hints = containers.boot_log_hints([log]).splitlines()
    assert [h.split("] ", 1)[1] for h in hints] == [
        "NVIDIA driver version: 535.161.08",
        "FATAL ERROR: registering nvproxy driver: unsupported Nvidia driver version: 535.161.08",
        "something broke"]
