"""render_text / render_json for the plan command, and the doctor rows."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

import shim.config.parse
from shim.gpu.config import GpuConfig
from shim.gpu.doctor import Row, check_host
from shim.gpu.facts import HostFacts, SandboxRole
from shim.gpu.keys import CONFIG_KEYS
from shim.gpu.plan import plan
from shim.gpu.report import render_json, render_text, spec_diff
from tests.unit import gpu_hosts
from tests.unit.gpu_hosts import NODES

# One GPU, so the doctor's node row names a single device.
HOST = dataclasses.replace(
    gpu_hosts.HOST,
    device_nodes={p: NODES[p] for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm")},
)
SPEC: dict[str, Any] = {
    "process": {"env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all"]},
    "linux": {"devices": [{"path": "/dev/nvidiactl"}, {"path": "/dev/nvidia-modeset"}]},
}
ARGV = ["/usr/bin/runsc", "--root=/run/x", "--nvproxy=true", "create", "--bundle", "/b 1", "ctr"]


def test_render_text_shows_decision_diff_and_command() -> None:
    result = plan(SPEC, HOST, GpuConfig(), container_id="ctr",
                sandbox=SandboxRole.standalone())
    text = render_text(result, original_spec=SPEC, runsc_argv=ARGV)
    assert "decision:  GPU via nvproxy (mode cdi)" in text
    assert "outcome:   ok" in text
    assert "- linux.devices has /dev/nvidiactl" in text
    assert '-        "path": "/dev/nvidia-modeset"' in text
    assert '+      "NVIDIA_VISIBLE_DEVICES=void"' in text
    assert "keep_gpu_device_nodes: dropped /dev/nvidia-modeset" in text
    assert "  /usr/bin/runsc --root=/run/x --nvproxy=true create --bundle '/b 1' ctr" in text


def test_render_text_refused_and_unchanged() -> None:
    spec = {"process": {"env": ["NVIDIA_VISIBLE_DEVICES=MIG-1"]}, "linux": {"devices": []}}
    result = plan(spec, dataclasses.replace(HOST, driver_version=None), GpuConfig(),
                  container_id="m", sandbox=SandboxRole.standalone())
    text = render_text(result, original_spec=spec, runsc_argv=["runsc", "create", "m"])
    assert "outcome:   REFUSED: runsc will not be called" in text
    assert "  x container m: it asks for MIG" in text
    quiet = plan({}, HOST, GpuConfig(), container_id="q",
                sandbox=SandboxRole.standalone())
    assert "spec changes:\n  (none)\n" in render_text(quiet, original_spec={}, runsc_argv=["runsc"])


def test_render_json_is_json_and_complete() -> None:
    result = plan(SPEC, HOST, GpuConfig(driver_version="550.90.07"), container_id="ctr",
                sandbox=SandboxRole.standalone())
    doc = json.loads(json.dumps(render_json(result, original_spec=SPEC, runsc_argv=ARGV)))
    assert doc["ok"] is True
    assert doc["decision"] == {
        "gpu": True,
        "mode": "cdi",
        "role": "standalone",
        "reasons": ["linux.devices has /dev/nvidiactl", "NVIDIA_VISIBLE_DEVICES=all"],
        "ignored": [],
        "allocation": "",
    }
    assert doc["bad_input"] is False
    assert doc["runsc_flags"] == {"nvproxy": "true", "nvproxy-driver-version": "550.90.07"}
    assert doc["runsc_argv"] == ARGV
    assert doc["spec_changed"] is True
    assert doc["spec"] == result.spec
    assert doc["refusals"] == [] and isinstance(doc["notes"], list)


def test_spec_diff_empty_when_equal() -> None:
    assert spec_diff({"a": 1}, {"a": 1}) == ""
    assert spec_diff({"a": 1}, {"a": 2}).startswith("--- config.json\n+++ config.json (planned)\n")


# --- doctor ---------------------------------------------------------------------


def _rows(host: HostFacts, config: GpuConfig | None = None) -> dict[str, Row]:
    return {row.check: row for row in check_host(host, config or GpuConfig())}


def test_doctor_all_good() -> None:
    rows = _rows(HOST)
    assert all(r.ok for r in rows.values()), [r for r in rows.values() if not r.ok]
    assert rows["GPU container"].detail == "driver 550.90.07; runsc --nvproxy=true"
    assert rows["GPU device nodes"].detail == "/dev/nvidia0"
    assert rows["CDI devices"].detail.startswith("nvidia.com/gpu: 0, 1, GPU-")


@pytest.mark.parametrize(
    ("description", "host", "config", "check", "fix"),
    [
        ("no runsc", dataclasses.replace(HOST, runsc_version=""), None, "runsc", "binary_name"),
        (
            "no nvproxy",
            dataclasses.replace(HOST, runsc_flags=frozenset()),
            None,
            "runsc --nvproxy",
            "release-20230529.0",
        ),
        ("unknown platform", HOST, GpuConfig(platform="xen"), "GPU container", "one of those"),
        ("kvm too old", HOST, GpuConfig(platform="kvm"), "GPU container", "systrap"),
        (
            "no driver list",
            dataclasses.replace(HOST, supported_drivers=None),
            None,
            "runsc supported drivers",
            "release-20231106.0",
        ),
        (
            "no driver",
            dataclasses.replace(HOST, driver_version=None),
            None,
            "GPU container",
            "install",
        ),
        (
            "unsupported driver",
            dataclasses.replace(HOST, driver_version="535.161.08"),
            None,
            "GPU container",
            "nvproxy_driver_version",
        ),
        (
            "no nodes",
            dataclasses.replace(HOST, device_nodes={}),
            None,
            "/dev/nvidiactl",
            "nvidia-modprobe",
        ),
        (
            "no GPU node",
            dataclasses.replace(HOST, device_nodes={"/dev/nvidia0": (10, 0)}),
            None,
            "GPU device nodes",
            "nvidia-smi",
        ),
        (
            "broken CDI file",
            dataclasses.replace(HOST, cdi_errors=("/etc/cdi/x.yaml: bad",)),
            None,
            "CDI spec",
            "regenerate",
        ),
        (
            "no CDI spec",
            dataclasses.replace(HOST, cdi_specs=()),
            None,
            "CDI devices",
            "nvidia-ctk cdi generate",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v else None,
)
def test_doctor_failures_carry_a_fix(
    description: str, host: HostFacts, config: GpuConfig | None, check: str, fix: str
) -> None:
    row = _rows(host, config)[check]
    assert not row.ok
    assert fix in row.fix


def test_doctor_forced_driver_passes() -> None:
    rows = _rows(
        dataclasses.replace(HOST, driver_version=None), GpuConfig(driver_version="550.90.07")
    )
    assert rows["GPU container"].ok
    assert rows["GPU container"].detail == (
        "driver ABI 550.90.07 (forced); runsc --nvproxy=true --nvproxy-driver-version=550.90.07")


def test_doctor_says_what_create_would_refuse() -> None:
    # The row's cause and fix are the planner's own words.
    host = dataclasses.replace(HOST, driver_version="535.161.08")
    (row,) = [r for r in check_host(host, GpuConfig()) if r.check == "GPU container"]
    refusal = plan({"linux": {"devices": [{"path": "/dev/nvidiactl", "type": "c", "major": 195,
                                           "minor": 255}]}}, host, GpuConfig(),
                   container_id="doctor", sandbox=SandboxRole.standalone()).refusals[0]
    assert refusal == f"container doctor: {row.detail}. Fix: {row.fix}."


def test_config_keys_match_the_shim_config() -> None:
    """Refusals name TOML keys; they must be the keys shim.config reads."""
    assert set(CONFIG_KEYS) == {f.name for f in dataclasses.fields(GpuConfig)}
    known: dict[str, tuple[str, Any]] = shim.config.parse._KEYS
    for field, key in CONFIG_KEYS.items():
        assert known[key][0] == field, key
