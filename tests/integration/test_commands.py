"""The commands for people, run as a person would: `plan` and `doctor`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests import paths

pytestmark = pytest.mark.integration

SHIM = str(paths.SHIM)
K8S = paths.REPO / "scripts/kubernetes"
CDI_SPEC = {
    "cdiVersion": "0.5.0",
    "kind": "nvidia.com/gpu",
    "devices": [{"name": "0", "containerEdits": {"deviceNodes": [
        {"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0}]}}],
    "containerEdits": {"deviceNodes": [
        {"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255}]},
}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SHIM, *args], capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    if paths.RUNSC_2024 is None or not paths.SHIM.exists():
        pytest.skip("needs scripts/install-deps (runsc 20240729, the shim)")
    (tmp_path / "cdi").mkdir()
    (tmp_path / "cdi/nvidia.json").write_text(json.dumps(CDI_SPEC))
    bundle = tmp_path / "demo-bundle"
    bundle.mkdir()
    spec = {"ociVersion": "1.0.2", "process": {"args": ["nvidia-smi"], "cwd": "/"},
            "root": {"path": "rootfs"}, "annotations": {"cdi.k8s.io/x": "nvidia.com/gpu=0"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}]}}
    (bundle / "config.json").write_text(json.dumps(spec))
    config = tmp_path / "gvisorgpu.toml"
    config.write_text(f'binary_name = "{paths.RUNSC_2024}"\nroot = "{tmp_path}/root"\n'
                      f'cdi_spec_dirs = ["{tmp_path}/cdi"]\n')
    return bundle, config


def test_plan_refuses_without_a_driver_and_changes_nothing(setup: tuple[Path, Path]) -> None:
    bundle, config = setup
    before = (bundle / "config.json").read_bytes()
    out = _run("plan", str(bundle), "--config", str(config), "--json")
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert report["decision"]["gpu"] is True
    assert any("no NVIDIA driver" in r for r in report["refusals"])
    assert (bundle / "config.json").read_bytes() == before  # a dry run


def test_plan_with_a_forced_driver_shows_the_runsc_command(setup: tuple[Path, Path]) -> None:
    bundle, config = setup
    config.write_text(config.read_text() + 'nvproxy_driver_version = "550.90.07"\n')
    out = _run("plan", str(bundle), "--config", str(config), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert "--nvproxy=true" in report["runsc_argv"]
    assert "--nvproxy-driver-version=550.90.07" in report["runsc_argv"]
    assert report["runsc_argv"][report["runsc_argv"].index("create") - 1].startswith("--")
    nodes = [d["path"] for d in report["spec"]["linux"]["devices"]]
    assert nodes == ["/dev/nvidiactl", "/dev/nvidia0"]
    text = _run("plan", str(bundle), "--config", str(config))
    assert text.returncode == 0
    assert "runsc command" in text.stdout and "+        \"path\": \"/dev/nvidia0\"" in text.stdout


def test_plan_of_a_plain_container_adds_no_gpu(setup: tuple[Path, Path]) -> None:
    bundle, config = setup
    spec = json.loads((bundle / "config.json").read_text())
    del spec["annotations"]
    (bundle / "config.json").write_text(json.dumps(spec))
    report = json.loads(_run("plan", str(bundle), "--config", str(config), "--json").stdout)
    assert report["decision"]["gpu"] is False
    assert not any(a.startswith("--nvproxy") for a in report["runsc_argv"])


def test_bad_config_is_refused_by_key(setup: tuple[Path, Path]) -> None:
    bundle, config = setup
    config.write_text(config.read_text() + 'netwrok = "host"\n')
    out = _run("plan", str(bundle), "--config", str(config))
    assert out.returncode == 2
    assert "`netwrok` is not a known key; did you mean `network`?" in out.stderr


def test_doctor_reports_each_check_with_a_fix(setup: tuple[Path, Path]) -> None:
    _, config = setup
    out = _run("doctor", "--config", str(config),
               "--containerd-config", str(K8S / "containerd-v2.toml"))
    assert out.returncode == 1  # no NVIDIA driver on this machine
    rows = out.stdout.splitlines()
    assert any(r.startswith("ok") and "runsc --nvproxy" in r for r in rows), out.stdout
    assert any(r.startswith("FAIL") and "NVIDIA driver" in r for r in rows), out.stdout
    assert any("fix:" in r for r in rows)
    # The platform is tried for real, within a bound.
    assert any(r.startswith("ok") and "a trial container ran" in r for r in rows), out.stdout
    assert any(r.startswith("ok") and "containerd runtime" in r for r in rows), out.stdout
