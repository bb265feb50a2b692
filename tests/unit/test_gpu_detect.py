"""gather_host_facts reads /proc, /dev and CDI dirs; tests point it at temp dirs.

Character devices are stood in for by symlinks to /dev/null and /dev/zero
(os.stat follows them), so no root or mknod is needed.
"""

from __future__ import annotations

import os
from pathlib import Path

from shim.gpu.detect import gather_host_facts, read_driver_version, scan_device_nodes
from shim.runsc import RunscCapabilities

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cdi"
VERSION = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.90.07  Release Build  "
    "(dvs-builder@U16-T02-35-3)  Fri May 31 09:35:42 UTC 2024\n"
    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
)


def _dev_root(tmp: Path) -> Path:
    root = tmp / "dev"
    root.mkdir()
    os.symlink("/dev/null", root / "nvidiactl")
    os.symlink("/dev/zero", root / "nvidia0")
    os.symlink("/dev/null", root / "fuse")
    (root / "nvidia-not-a-device").write_text("")
    os.symlink("/nonexistent", root / "nvidia-dangling")
    (root / "nvidia-caps").mkdir()
    return root


def _proc_root(tmp: Path, text: str | None) -> Path:
    root = tmp / "proc"
    (root / "driver" / "nvidia").mkdir(parents=True)
    if text is not None:
        (root / "driver" / "nvidia" / "version").write_text(text)
    return root


def _numbers(path: str) -> tuple[int, int]:
    rdev = os.stat(path).st_rdev
    return os.major(rdev), os.minor(rdev)


def test_scan_device_nodes_only_nvidia_char_devices(tmp_path: Path) -> None:
    nodes = scan_device_nodes(str(_dev_root(tmp_path)))
    assert nodes == {"/dev/nvidiactl": _numbers("/dev/null"), "/dev/nvidia0": _numbers("/dev/zero")}
    assert scan_device_nodes(str(tmp_path / "missing")) == {}


def test_read_driver_version(tmp_path: Path) -> None:
    assert read_driver_version(str(_proc_root(tmp_path, VERSION))) == "550.90.07"
    assert read_driver_version(str(tmp_path / "nowhere")) is None


def test_gather_host_facts(tmp_path: Path) -> None:
    runsc = RunscCapabilities(
        path="/usr/bin/runsc", version="0.0~20240729.0", release=20240729,
        flags=frozenset({"nvproxy"}), default_platform="systrap",
        supported_drivers=("550.90.07",), subcommands=frozenset(),
        platforms=frozenset({"systrap"}))
    facts = gather_host_facts(
        runsc, [str(FIXTURES / "etc"), str(FIXTURES / "broken"), str(FIXTURES / "run")],
        dev_root=str(_dev_root(tmp_path)), proc_root=str(_proc_root(tmp_path, VERSION)))
    assert facts.driver_version == "550.90.07"
    assert set(facts.device_nodes) == {"/dev/nvidiactl", "/dev/nvidia0"}
    assert [(Path(s.path).parent.name, s.priority) for s in facts.cdi_specs] == [
        ("etc", 0),
        ("run", 2),
    ]
    assert len(facts.cdi_errors) == 3
    assert facts.runsc_label() == "runsc at /usr/bin/runsc (0.0~20240729.0)"
    assert facts.release_before(20240930) is True
    assert facts.release_before(20240729) is False


def test_gather_host_facts_without_a_driver(tmp_path: Path) -> None:
    runsc = RunscCapabilities(path="runsc", version="", release=None, flags=frozenset(),
                              default_platform=None, supported_drivers=None,
                              subcommands=frozenset())
    facts = gather_host_facts(runsc, [], dev_root=str(tmp_path / "nodev"),
                              proc_root=str(_proc_root(tmp_path, None)))
    assert (facts.driver_version, dict(facts.device_nodes), facts.cdi_specs) == (None, {}, ())
    assert facts.release_before(20240930) is None
    assert facts.runsc_label() == "runsc at runsc (version unknown)"
