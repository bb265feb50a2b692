"""The demo behind scripts/demo (run that, not this: it installs first)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import paths  # noqa: E402
from tests.e2e import containerd as cd  # noqa: E402
from tests.e2e import images  # noqa: E402

SHIM = REPO / ".venv/bin/containerd-shim-gvisorgpu-v1"
CDI_SPEC = {
    "cdiVersion": "0.5.0",
    "kind": "nvidia.com/gpu",
    "devices": [{"name": "0", "containerEdits": {"deviceNodes": [
        {"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0}]}}],
    "containerEdits": {"deviceNodes": [
        {"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255},
        {"path": "/dev/nvidia-uvm", "type": "c", "major": 511, "minor": 0},
        {"path": "/dev/nvidia-modeset", "type": "c", "major": 195, "minor": 254}]},
}


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def show(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    print("$ " + " ".join(cmd), flush=True)
    out = subprocess.run(cmd, text=True, capture_output=True, check=False, **kw)  # type: ignore[call-overload]
    sys.stdout.write(out.stdout + out.stderr)
    return out  # type: ignore[no-any-return]


def gpu_bundle(workdir: Path, rootfs: Path) -> Path:
    bundle = workdir / "gpu-bundle"
    bundle.mkdir()
    spec = {
        "ociVersion": "1.0.2",
        "process": {"args": ["nvidia-smi"], "cwd": "/", "env": ["PATH=/bin"]},
        "root": {"path": str(rootfs)},
        "annotations": {"cdi.k8s.io/demo": "nvidia.com/gpu=0"},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}]},
    }
    (bundle / "config.json").write_text(json.dumps(spec, indent=2))
    return bundle


def main() -> int:
    if paths.RUNSC_2024 is None:
        print("runsc 20240729 is missing: run scripts/install-deps", file=sys.stderr)
        return 1
    with cd.running("1.6") as daemon:
        banner(f"private containerd 1.6 in {daemon.workdir}")
        image = images.build_busybox_image(daemon.workdir / "busybox.tar")
        daemon.import_image(image.archive, image.ref)
        config = daemon.write_runtime_config(runsc=paths.RUNSC_2024)
        print(config.read_text())
        banner("a container in gVisor through the shim")
        script = "echo hello from gVisor; uname -r; dmesg | head -n 3"
        out = show(daemon.ctr.argv("run", "--rm", *cd.gvisorgpu_args(config), image.ref, "demo",
                                   "sh", "-c", script), timeout=120)
        if out.returncode != 0:
            print(daemon.log_tail(30), file=sys.stderr)
            return out.returncode
        with tempfile.TemporaryDirectory(prefix="gvisorgpu-demo-") as tmp:
            work = Path(tmp)
            (work / "cdi").mkdir()
            (work / "cdi/nvidia.json").write_text(json.dumps(CDI_SPEC))
            rootfs = images.make_rootfs(work / "rootfs")
            bundle = gpu_bundle(work, rootfs)
            table = "[runsc_config]"
            base = config.read_text().replace(table, f'cdi_spec_dirs = ["{work}/cdi"]\n\n{table}')
            (work / "gpu.toml").write_text(base)
            forced = 'nvproxy_driver_version = "550.90.07"'
            (work / "gpu-forced.toml").write_text(base.replace(table, f"{forced}\n\n{table}"))
            banner("GPU plan on this host (no NVIDIA driver): refused before runsc runs")
            show([str(SHIM), "plan", str(bundle), "--config", str(work / "gpu.toml")])
            banner("GPU plan with the driver ABI forced in the config")
            show([str(SHIM), "plan", str(bundle), "--config", str(work / "gpu-forced.toml")])
    banner("done: containerd stopped, nothing left running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
