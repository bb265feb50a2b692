"""Reading GPU signals from a spec (shim.gpu.request), device classification
(shim.gpu.devices) and the small parsers in shim.gpu.facts."""

from __future__ import annotations

from typing import Any

import pytest

from shim.gpu.config import GpuConfig
from shim.gpu.devices import default_numbers, entry_numbers, is_gpu_node
from shim.gpu.facts import driver_triple, parse_driver_version
from shim.gpu.request import (
    RUNSC_DEFAULT_CAPS,
    parse_visible_devices,
    read_request,
    requested_capabilities,
)

HOST_NODES = {"/dev/nvidiactl": (195, 255), "/dev/nvidia0": (195, 0), "/dev/nvidia-uvm": (508, 0)}


@pytest.mark.parametrize(
    ("description", "values", "cdi_hook", "kind", "ids", "asks"),
    [
        ("unset", [], False, "unset", (), False),
        ("empty", [""], False, "empty", (), False),
        ("blank list", [" , "], False, "empty", (), False),
        ("void", ["void"], False, "void", (), False),
        ("void anywhere voids the list", ["0,void"], False, "void", (), False),
        ("all", ["all"], False, "all", (), True),
        ("all inside a list", ["0,all"], False, "all", (), True),
        ("none", ["none"], False, "none", (), True),
        ("indices", ["0, 1,1"], False, "list", ("0", "1"), True),
        ("uuid", ["GPU-4f4c8a2e-1b7d"], False, "list", ("GPU-4f4c8a2e-1b7d",), True),
        ("mig uuid", ["MIG-0a1b"], False, "list", ("MIG-0a1b",), True),
        ("mig index", ["0:1"], False, "list", ("0:1",), True),
        ("cdi name", ["nvidia.com/gpu=0"], False, "list", ("nvidia.com/gpu=0",), True),
        ("last value wins", ["void", "all"], False, "all", (), True),
        ("last void wins without a CDI hook", ["all", "void"], False, "void", (), False),
        ("trailing CDI void skipped with a CDI hook", ["1", "void"], True, "list", ("1",), True),
        ("a single void stays void with a CDI hook", ["void"], True, "void", (), False),
    ],
)
def test_visible_devices(
    description: str, values: list[str], cdi_hook: bool, kind: str, ids: tuple[str, ...], asks: bool
) -> None:
    visible, errors = parse_visible_devices(values, cdi_hook=cdi_hook)
    assert errors == []
    assert (visible.kind, visible.ids, visible.asks) == (kind, ids, asks)


@pytest.mark.parametrize("value", ["gpu0", "0,nvidia0", "GPU_1"])
def test_visible_devices_refuses_unknown_tokens(value: str) -> None:
    _, errors = parse_visible_devices([value], cdi_hook=False)
    assert errors and "is not a GPU index" in errors[0][0]


@pytest.mark.parametrize(
    ("description", "values", "expected", "said_all"),
    [
        ("unset means compute,utility", [], {"compute", "utility"}, False),
        ("empty means compute,utility", [""], {"compute", "utility"}, False),
        ("explicit", ["compute"], {"compute"}, False),
        ("spaces", [" compute , video "], {"compute", "video"}, False),
        ("all means the allowed set", ["all"], {"compute", "utility"}, True),
        ("last wins", ["graphics", "utility"], {"utility"}, False),
    ],
)
def test_requested_capabilities(
    description: str, values: list[str], expected: set[str], said_all: bool
) -> None:
    assert requested_capabilities(values, RUNSC_DEFAULT_CAPS) == (expected, said_all)


def _spec(
    env: list[str] | None = None,
    devices: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    hooks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "process": {"env": env or []},
        "linux": {"devices": devices or []},
        "annotations": annotations or {},
        "hooks": hooks or {},
    }


LEGACY = {
    "prestart": [{"path": "/usr/bin/nvidia-container-runtime-hook", "args": ["x", "prestart"]}]
}
CDI_HOOK = {"createContainer": [{"path": "/usr/bin/nvidia-cdi-hook", "args": ["nvidia-cdi-hook"]}]}


@pytest.mark.parametrize(
    ("description", "spec", "explicit", "env_reason"),
    [
        ("nothing", _spec(), [], None),
        ("nvidiactl", _spec(devices=[{"path": "/dev/nvidiactl"}]), ["/dev/nvidiactl"], None),
        ("nvidia-uvm", _spec(devices=[{"path": "/dev/nvidia-uvm"}]), ["/dev/nvidia-uvm"], None),
        (
            "nvidia0 major 195",
            _spec(devices=[{"path": "/dev/nvidia0", "major": 195}]),
            ["/dev/nvidia0"],
            None,
        ),
        (
            "nvidia0 major from host",
            _spec(devices=[{"path": "/dev/nvidia0"}]),
            ["/dev/nvidia0"],
            None,
        ),
        (
            "nvidia3 not on host: fixed numbering",
            _spec(devices=[{"path": "/dev/nvidia3"}]),
            ["/dev/nvidia3"],
            None,
        ),
        (
            "nvidia0 with another major",
            _spec(devices=[{"path": "/dev/nvidia0", "major": 10}]),
            [],
            None,
        ),
        ("modeset is no GPU", _spec(devices=[{"path": "/dev/nvidia-modeset"}]), [], None),
        ("uvm-tools is no GPU", _spec(devices=[{"path": "/dev/nvidia-uvm-tools"}]), [], None),
        ("caps is no GPU", _spec(devices=[{"path": "/dev/nvidia-caps/nvidia-cap1"}]), [], None),
        ("loose prefix is no GPU", _spec(devices=[{"path": "/dev/nvidiafs0"}]), [], None),
        (
            "CDI annotation",
            _spec(annotations={"cdi.k8s.io/dp_0": "nvidia.com/gpu=0, nvidia.com/gpu=1"}),
            ["requests nvidia.com/gpu=0, nvidia.com/gpu=1"],
            None,
        ),
        (
            "CDI prefix needs the slash",
            _spec(annotations={"cdi.k8s.iox": "nvidia.com/gpu=0"}),
            [],
            None,
        ),
        ("other vendor", _spec(annotations={"cdi.k8s.io/x": "intel.com/gpu=0"}), [], None),
        ("env all", _spec(env=["NVIDIA_VISIBLE_DEVICES=all"]), [], "NVIDIA_VISIBLE_DEVICES=all"),
        ("env none", _spec(env=["NVIDIA_VISIBLE_DEVICES=none"]), [], "NVIDIA_VISIBLE_DEVICES=none"),
        ("env void", _spec(env=["NVIDIA_VISIBLE_DEVICES=void"]), [], None),
        (
            "legacy hook with env",
            _spec(env=["NVIDIA_VISIBLE_DEVICES=0"], hooks=LEGACY),
            ["prestart hook /usr/bin/nvidia-container-runtime-hook"],
            None,
        ),
        (
            "legacy hook with void",
            _spec(env=["NVIDIA_VISIBLE_DEVICES=void"], hooks=LEGACY),
            [],
            None,
        ),
        ("legacy hook, env unset", _spec(hooks=LEGACY), [], None),
        (
            "CDI hook with value before trailing void",
            _spec(
                env=["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_VISIBLE_DEVICES=void"], hooks=CDI_HOOK
            ),
            ["createContainer hook /usr/bin/nvidia-cdi-hook with NVIDIA_VISIBLE_DEVICES=all"],
            None,
        ),
        (
            "runsc annotation",
            _spec(annotations={"dev.gvisor.internal.nvproxy": "true"}),
            ["annotation dev.gvisor.internal.nvproxy=true"],
            None,
        ),
        (
            "runsc annotation false",
            _spec(annotations={"dev.gvisor.internal.nvproxy": "false"}),
            [],
            None,
        ),
    ],
)
def test_read_request_signals(
    description: str, spec: dict[str, Any], explicit: list[str], env_reason: str | None
) -> None:
    req = read_request(spec, HOST_NODES, GpuConfig())
    assert req.errors == ()
    assert len(req.explicit_reasons) == len(explicit)
    for reason, fragment in zip(req.explicit_reasons, explicit, strict=True):
        assert fragment in reason
    assert req.env_reason == env_reason


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({"cdi.k8s.io/x": "nvidia.com/gpu"}, "not a qualified CDI name"),
        ({"cdi.k8s.io/x": "nvidia.com/gpu=0,/dev/nvidia1"}, "device path"),
        ({"cdi.k8s.io/x": "intel.com/gpu=a b"}, "invalid device name"),
        ({"dev.gvisorgpu.nvproxy": "yes"}, "not a boolean"),
        ({"dev.gvisor.internal.nvproxy": "on"}, "not a boolean"),
    ],
)
def test_read_request_input_errors(annotations: dict[str, str], message: str) -> None:
    req = read_request(_spec(annotations=annotations), HOST_NODES, GpuConfig())
    assert any(message in cause for cause, _ in req.errors)


def test_read_request_vendor_allow_list_is_config() -> None:
    spec = _spec(annotations={"cdi.k8s.io/x": "example.com/gpu=0"})
    assert read_request(spec, {}, GpuConfig()).foreign_cdi
    mine = read_request(spec, {}, GpuConfig(cdi_vendors=frozenset({"example.com"})))
    assert [str(r.name) for r in mine.cdi] == ["example.com/gpu=0"]


def test_read_request_mig_env() -> None:
    req = read_request(_spec(env=["NVIDIA_MIG_CONFIG_DEVICES=all"]), {}, GpuConfig())
    assert req.mig_env == ("NVIDIA_MIG_CONFIG_DEVICES",)


@pytest.mark.parametrize(
    ("path", "major", "gpu"),
    [
        ("/dev/nvidiactl", None, True),
        ("/dev/nvidia-uvm", 508, True),
        ("/dev/nvidia0", 195, True),
        ("/dev/nvidia17", None, True),
        ("/dev/nvidia0", 10, False),
        ("/dev/nvidia-modeset", 195, False),
        ("/dev/nvidia-uvm-tools", 508, False),
        ("/dev/nvidia-caps/nvidia-cap1", 235, False),
        ("/dev/nvidia", 195, False),
        ("/dev/nvidia0x", 195, False),
        ("/dev/dri/card0", 226, False),
    ],
)
def test_is_gpu_node(path: str, major: int | None, gpu: bool) -> None:
    assert is_gpu_node(path, major) is gpu


def test_entry_numbers_fill_order() -> None:
    assert entry_numbers({"path": "/dev/nvidia0", "minor": 7}, HOST_NODES, "/dev/nvidia0") == (
        195,
        7,
    )
    assert entry_numbers({"path": "/dev/nvidia-uvm"}, HOST_NODES, "/dev/nvidia-uvm") == (508, 0)
    assert entry_numbers({"path": "/dev/nvidia-uvm"}, {}, "/dev/nvidia-uvm") == (None, None)
    assert entry_numbers({"path": "/dev/nvidia2"}, {}, "/dev/nvidia2") == (195, 2)
    assert default_numbers("/dev/nvidiactl") == (195, 255)


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  "
            "Tue Mar  5 22:23:56 UTC 2024\n"
            "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n",
            "550.54.15",
        ),
        (
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.172.08  Release Build  "
            "(dvs-builder@U16-I3-B03-4-3)  Tue Jul  8 18:41:40 UTC 2025\n",
            "570.172.08",
        ),
        ("NVRM version: NVIDIA UNIX aarch64 Kernel Module  535.104\n", "535.104"),
        ("garbage\n", None),
        ("", None),
    ],
)
def test_parse_driver_version(text: str, version: str | None) -> None:
    assert parse_driver_version(text) == version


@pytest.mark.parametrize(
    ("version", "triple"),
    [
        ("570.172.08", (570, 172, 8)),
        ("570.172.8", (570, 172, 8)),
        ("620.06.00", (620, 6, 0)),
        ("525.60", (525, 60, 0)),
        ("latest", None),
        ("1.2.3.4", None),
        ("", None),
    ],
)
def test_driver_triple(version: str, triple: tuple[int, int, int] | None) -> None:
    assert driver_triple(version) == triple
