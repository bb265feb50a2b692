"""GPU planning through containerd on a machine without a GPU (issue: GPU planning).

What can be shown here: the refusals arrive through ctr with the planner's
message, a forced driver version really starts runsc with --nvproxy=true and
its failure comes back readable, an old runsc is refused by name, and a plain
container in the same daemon still runs. A real GPU run is scripts/gpu-smoke.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e import containerd as cd

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("containerd_version", ["2.1"])]

# A CDI spec as `nvidia-ctk cdi generate` writes it, reduced to one GPU; the
# nodes carry major/minor because this host has no /dev/nvidia* to read them from.
CDI_SPEC = {
    "cdiVersion": "0.5.0",
    "kind": "nvidia.com/gpu",
    "devices": [{"name": "0", "containerEdits": {"deviceNodes": [
        {"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0}]}}],
    "containerEdits": {
        "env": ["NVIDIA_VISIBLE_DEVICES=void"],
        "deviceNodes": [
            {"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255},
            {"path": "/dev/nvidia-uvm", "type": "c", "major": 511, "minor": 0},
        ],
        "mounts": [{"hostPath": "/run/nvidia-persistenced/socket",
                    "containerPath": "/run/nvidia-persistenced/socket",
                    "options": ["ro", "nosuid", "nodev", "bind"]}],
    },
}
GPU_ANNOTATION = ["--annotation", "cdi.k8s.io/gpu-test=nvidia.com/gpu=0"]


@pytest.fixture
def cdi_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cdi"
    d.mkdir()
    (d / "nvidia.json").write_text(json.dumps(CDI_SPEC))
    return d


def _gpu_config(runtime_config: Callable[..., Path], cdi_dir: Path, **extra: object) -> Path:
    return runtime_config(extra={"cdi_spec_dirs": [str(cdi_dir)], **extra})


def test_gpu_request_without_driver_is_refused_before_runsc(
        ctr: cd.Ctr, busybox: str, runtime_config: Callable[..., Path], cdi_dir: Path,
        container_id: Callable[[str], str]) -> None:
    cid = container_id("nodrv")
    out = ctr("run", "--rm", *cd.gvisorgpu_args(_gpu_config(runtime_config, cdi_dir)),
              *GPU_ANNOTATION, busybox, cid, "true", timeout=60)
    ctr("c", "rm", cid)
    assert out.returncode != 0
    assert "NVIDIA driver" in out.stderr or "driver" in out.stderr, out.stderr
    assert "nvproxy_driver_version" in out.stderr, out.stderr
    assert f"container {cid}" in out.stderr, out.stderr


def test_forced_driver_starts_runsc_with_nvproxy_and_reports_its_failure(
        containerd: cd.Containerd, ctr: cd.Ctr, busybox: str,
        runtime_config: Callable[..., Path], cdi_dir: Path,
        container_id: Callable[[str], str]) -> None:
    cid = container_id("forced")
    config = _gpu_config(runtime_config, cdi_dir, nvproxy_driver_version="550.90.07")
    out = ctr("run", "--rm", *cd.gvisorgpu_args(config), *GPU_ANNOTATION, busybox, cid,
              "true", timeout=90)
    ctr("c", "rm", cid)
    assert out.returncode != 0
    # runsc's own reason, read back from its panic log, not a bare "EOF".
    assert "the sandbox crashed" in out.stderr, out.stderr
    assert "device node" in out.stderr, out.stderr
    log = containerd.log_tail(400)
    started = [ln for ln in log.splitlines()
               if "starting container with nvproxy" in ln and f"container_id={cid}" in ln]
    assert started and "nvproxy_enabled=true" in started[-1], log[-3000:]


def test_old_runsc_is_refused_by_name(
        ctr: cd.Ctr, busybox: str, runtime_config: Callable[..., Path], cdi_dir: Path,
        runsc_2022: Path, container_id: Callable[[str], str]) -> None:
    cid = container_id("old")
    config = runtime_config(runsc=runsc_2022, runsc_config={"platform": "ptrace"},
                            extra={"cdi_spec_dirs": [str(cdi_dir)],
                                   "nvproxy_driver_version": "550.90.07"})
    out = ctr("run", "--rm", *cd.gvisorgpu_args(config), *GPU_ANNOTATION, busybox, cid, "true",
              timeout=60)
    ctr("c", "rm", cid)
    assert out.returncode != 0
    assert "nvproxy" in out.stderr and "20230529" in out.stderr, out.stderr
    assert "0.0~20221219" in out.stderr, out.stderr


def test_plain_container_beside_gpu_refusals_runs(
        ctr: cd.Ctr, busybox: str, runtime_config: Callable[..., Path], cdi_dir: Path,
        container_id: Callable[[str], str]) -> None:
    config = _gpu_config(runtime_config, cdi_dir)
    out = ctr("run", "--rm", *cd.gvisorgpu_args(config), busybox, container_id("plain"),
              "sh", "-c", "ls /dev | grep -c nvidia || true", timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"
