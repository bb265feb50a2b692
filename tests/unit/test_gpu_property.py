"""Properties of plan() over generated specs:

- a container that asks for no GPU gets no nvproxy flag and no NVIDIA device;
- plan is idempotent: plan(plan(x).spec).spec == plan(x).spec;
- plan never changes its input, and never leaves an NVIDIA node nvproxy cannot serve.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shim.gpu.config import GpuConfig
from shim.gpu.devices import is_gpu_node
from shim.gpu.facts import SandboxRole
from shim.gpu.plan import plan
from tests.unit.gpu_hosts import HOST

SETTINGS = settings(max_examples=300, deadline=None)

# --- building blocks -------------------------------------------------------------

names = st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: not n.startswith("NVIDIA_")
)
text = st.text(st.characters(codec="ascii", exclude_characters="\x00"), max_size=12)
numbers = st.integers(min_value=0, max_value=300)


def _device(path: str, major: int | None = None) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"path": st.just(path)},
        optional={
            "type": st.just("c"),
            "major": st.just(major) if major else numbers,
            "minor": numbers,
        },
    )


NON_GPU_PATHS = [
    "/dev/fuse",
    "/dev/kvm",
    "/dev/net/tun",
    "/dev/sda",
    "/dev/nvidia-modeset",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-caps/nvidia-cap1",
    "/dev/nvidia-nvswitch0",
    "/dev/nvidiafs0",
    "/dev/nvidia",
    "/dev/dri/card0",
    "/dev/dri/renderD128",
]
non_gpu_device = st.one_of(
    st.sampled_from(NON_GPU_PATHS).flatmap(_device),
    # /dev/nvidiaN with a major that is not NVIDIA's is not a GPU.
    st.builds(
        lambda n, major: {"path": f"/dev/nvidia{n}", "type": "c", "major": major, "minor": n},
        st.integers(0, 8),
        numbers.filter(lambda m: m != 195),
    ),
)
void_values = st.sampled_from(["void", "", " ", "0,void", "void,all", "all,void"])
non_gpu_env = st.lists(
    st.one_of(
        st.builds("{}={}".format, names, text),
        st.builds("NVIDIA_VISIBLE_DEVICES={}".format, void_values),
        st.builds(
            "NVIDIA_DRIVER_CAPABILITIES={}".format, st.sampled_from(["all", "compute", "graphics"])
        ),
        st.just("CUDA_VERSION=12.4.1"),
    ),
    max_size=6,
)
foreign_cdi = st.sampled_from(["amd.com/gpu=0", "intel.com/gpu=1", "example.com/net=eth0"])
non_gpu_annotations = st.dictionaries(
    st.one_of(
        st.from_regex(r"[a-z][a-z.]{0,10}/[a-z]{1,6}", fullmatch=True).filter(
            lambda k: not k.startswith("cdi.k8s.io/")
        ),
        st.builds("cdi.k8s.io/{}".format, st.from_regex(r"[a-z]{1,6}", fullmatch=True)),
        st.sampled_from(
            ["cdi.k8s.io", "cdi.k8s.iox/a", "dev.gvisor.internal.nvproxy", "dev.gvisorgpu.nvproxy"]
        ),
    ),
    st.one_of(foreign_cdi, st.just("false")),
    max_size=4,
).map(lambda d: {k: _annotation_value(k, v) for k, v in d.items()})


def _annotation_value(key: str, value: str) -> str:
    """Keep generated annotations meaningful: booleans stay "false", CDI keys
    hold other vendors' names, and any other key may hold a NVIDIA name."""
    if key.startswith("dev.gvisor"):
        return "false"
    if key.startswith("cdi.k8s.io/"):
        return value if value != "false" else "amd.com/gpu=0"
    return "nvidia.com/gpu=0" if value == "false" else value


hook = st.builds(
    lambda path, args: {"path": path, "args": args},
    st.sampled_from(
        [
            "/usr/bin/nvidia-container-runtime-hook",
            "/usr/bin/nvidia-cdi-hook",
            "/usr/bin/nvidia-ctk",
            "/usr/local/bin/oci-hook",
            "/bin/true",
        ]
    ),
    st.lists(
        st.sampled_from(["prestart", "update-ldcache", "create-symlinks", "--folder"]), max_size=3
    ),
)
hooks = st.dictionaries(
    st.sampled_from(["prestart", "createContainer", "poststop"]),
    st.lists(hook, max_size=2),
    max_size=2,
)


def _spec(
    env: list[str], devices: list[Any], annotations: dict[str, str], spec_hooks: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ociVersion": "1.1.0",
        "process": {"env": env},
        "linux": {"devices": devices},
    }
    if annotations:
        spec["annotations"] = annotations
    if spec_hooks:
        spec["hooks"] = spec_hooks
    return spec


non_gpu_specs = st.builds(
    _spec, non_gpu_env, st.lists(non_gpu_device, max_size=5), non_gpu_annotations, hooks
)


# --- properties ------------------------------------------------------------------


@SETTINGS
@given(non_gpu_specs)
def test_no_gpu_asked_means_no_nvproxy_and_no_nvidia_device(spec: dict[str, Any]) -> None:
    before = copy.deepcopy(spec)
    result = plan(spec, HOST, GpuConfig(), container_id="c", sandbox=SandboxRole.standalone())
    assert spec == before
    assert result.refusals == ()
    assert not result.decision.gpu
    assert dict(result.runsc_flags) == {}
    paths = [d.get("path", "") for d in result.spec.get("linux", {}).get("devices", [])]
    assert not any(p.startswith("/dev/nvidia") for p in paths)
    assert plan(result.spec, HOST, GpuConfig(), container_id="c",
                sandbox=SandboxRole.standalone()).spec == result.spec


gpu_device = st.one_of(
    st.sampled_from(["/dev/nvidiactl", "/dev/nvidia-uvm"]).flatmap(lambda p: _device(p)),
    st.sampled_from(["/dev/nvidia0", "/dev/nvidia1"]).flatmap(lambda p: _device(p, 195)),
)
gpu_env = st.lists(
    st.one_of(
        st.builds(
            "NVIDIA_VISIBLE_DEVICES={}".format,
            st.sampled_from(["all", "0", "1", "0,1", "none", "void"]),
        ),
        st.builds("{}={}".format, names, text),
    ),
    max_size=4,
)
gpu_annotations = st.dictionaries(
    st.sampled_from(["cdi.k8s.io/a", "cdi.k8s.io/b", "other/x"]),
    st.lists(
        st.sampled_from(
            ["nvidia.com/gpu=0", "nvidia.com/gpu=1", "nvidia.com/gpu=all", "amd.com/gpu=0"]
        ),
        min_size=1,
        max_size=2,
    ).map(",".join),
    max_size=2,
)
any_specs = st.builds(
    _spec,
    gpu_env,
    st.lists(st.one_of(gpu_device, non_gpu_device), max_size=6),
    gpu_annotations,
    hooks,
)


@SETTINGS
@given(any_specs, st.sampled_from(["auto", "always", "never"]))
def test_plan_is_idempotent_and_keeps_only_servable_nodes(
    spec: dict[str, Any], policy: Any
) -> None:
    config = GpuConfig(nvproxy=policy)
    before = copy.deepcopy(spec)
    first = plan(spec, HOST, config, container_id="c",
                sandbox=SandboxRole.standalone())
    assert spec == before
    second = plan(first.spec, HOST, config, container_id="c",
                sandbox=SandboxRole.standalone())
    assert second.spec == first.spec
    for device in first.spec.get("linux", {}).get("devices", []):
        path = device.get("path", "")
        if path.startswith("/dev/nvidia"):
            assert first.decision.gpu and is_gpu_node(path, device.get("major"))
    assert first.nvproxy is (first.decision.gpu and "nvproxy" in HOST.runsc_flags)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=12,
)
section = st.sampled_from(["process", "linux", "annotations", "hooks", "mounts", "env"])
odd_specs = st.dictionaries(section, json_values, max_size=5).map(
    lambda d: {**d, "linux": {"devices": d.get("linux"), "resources": {"devices": d.get("env")}}}
)


@SETTINGS
@given(odd_specs)
def test_plan_survives_malformed_specs(spec: dict[str, Any]) -> None:
    """A hand-written config.json may hold anything; plan reads, never raises."""
    result = plan(spec, HOST, GpuConfig(), container_id="c",
                sandbox=SandboxRole.standalone())
    assert plan(result.spec, HOST, GpuConfig(), container_id="c",
                sandbox=SandboxRole.standalone()).spec == result.spec
