"""shim.config: every key, every refusal, and the ways options reach the shim."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import betterproto.lib.google.protobuf as pb
import pytest

from shim.api.containerd.runc.v1 import Options as RuncOptions
from shim.api.runtimeoptions.v1 import Options as RuntimeOptions
from shim.config import (
    RuntimeConfig,
    load_body,
    load_file,
    resolve_network,
)
from shim.config.options import load_config
from shim.errors import InvalidArgument
from shim.gpu.config import GpuConfig

SRC = "/etc/gvisorgpu/runsc.toml"


def _get(cfg: RuntimeConfig, path: str) -> Any:
    obj: Any = cfg
    for part in path.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def test_defaults() -> None:
    cfg = load_config(None)
    assert cfg == RuntimeConfig()
    assert (cfg.binary_name, cfg.root, cfg.log_level, cfg.network) == (
        "runsc", "/run/containerd/runsc", "info", "auto")
    assert cfg.gpu == GpuConfig()
    assert (cfg.debug, cfg.debug_log, cfg.platform, cfg.log_path) == (False, None, None, None)
    assert cfg.runsc_config == {}
    assert load_body("") == RuntimeConfig(source="<options config_body>")


KEY_CASES = [
    ('binary_name = "/opt/gvisor/runsc"', "binary_name", "/opt/gvisor/runsc"),
    ('binary_name = "runsc-nightly"', "binary_name", "runsc-nightly"),
    ('root = "/run/gvisorgpu"', "root", "/run/gvisorgpu"),
    ('gvisorRoot = "/run/pool"', "root", "/run/pool"),
    ('root = "/run/pool"\ngvisorRoot = "/run/pool"', "root", "/run/pool"),
    ('log_level = "debug"', "log_level", "debug"),
    ('log_level = "warning"', "log_level", "warning"),
    ('log_path = "/var/log/gvisorgpu/"', "log_path", "/var/log/gvisorgpu/"),
    ("debug = true", "debug", True),
    ('network = "none"', "network", "none"),
    ('network = "host"', "network", "host"),
    ('network = "sandbox"', "network", "sandbox"),
    ('network = "auto"', "network", "auto"),
    ('seccomp = "warn"', "seccomp", "warn"),
    ('seccomp = "enforce"', "seccomp", "enforce"),
    ('platform = "ptrace"', "platform", "ptrace"),
    ('platform = "kvm"', "gpu.platform", "kvm"),
    ('gvisorPlatform = "systrap"', "platform", "systrap"),
    ('gvisorPlatform = "systrap"', "gpu.platform", "systrap"),
    ('nvproxy = "never"', "gpu.nvproxy", "never"),
    ('nvproxy = "always"', "gpu.nvproxy", "always"),
    ('nvproxy_driver_version = "550.90.07"', "gpu.driver_version", "550.90.07"),
    ('nvproxy_driver_version = "535.104"', "gpu.driver_version", "535.104"),
    ('nvproxy_driver_version = "latest"', "gpu.driver_version", "latest"),
    ('nvproxy_allowed_capabilities = ["compute", "utility", "video"]',
     "gpu.allowed_capabilities", frozenset({"compute", "utility", "video"})),
    ('cdi_spec_dirs = ["/etc/cdi", "/opt/cdi"]', "gpu.cdi_dirs", ("/etc/cdi", "/opt/cdi")),
    ('cdi_vendors = ["nvidia.com", "example.com"]', "gpu.cdi_vendors",
     frozenset({"nvidia.com", "example.com"})),
    # [runsc_config] entries with a typed meaning are folded into the typed fields.
    '[runsc_config]\ndebug = "true"',
    '[runsc_config]\ndebug-log = "/var/log/runsc/%ID%/gvisor.%COMMAND%.log"',
    '[runsc_config]\nplatform = "ptrace"',
    '[runsc_config]\nnetwork = "host"',
    '[runsc_config]\nnvproxy = "true"',
    '[runsc_config]\nnvproxy = "false"',
    '[runsc_config]\nnvproxy-driver-version = "latest"',
    '[runsc_config]\nnvproxy-allowed-driver-capabilities = "compute, utility,graphics"',
    # The rest become global flags, values as strings.
    '[runsc_config]\nhost-uds = "open"\noverlay2 = "root:self"',
    "[runsc_config]\nraw-sockets = true\nnum-network-channels = 2",
    # Agreeing duplicates are fine.
    'nvproxy = "always"\ndebug = true\n[runsc_config]\nnvproxy = "true"\ndebug = "true"',
]
RUNSC_CONFIG_EXPECT: dict[str, tuple[str, Any]] = {
    '[runsc_config]\ndebug = "true"': ("debug", True),
    '[runsc_config]\ndebug-log = "/var/log/runsc/%ID%/gvisor.%COMMAND%.log"':
        ("debug_log", "/var/log/runsc/%ID%/gvisor.%COMMAND%.log"),
    '[runsc_config]\nplatform = "ptrace"': ("gpu.platform", "ptrace"),
    '[runsc_config]\nnetwork = "host"': ("network", "host"),
    '[runsc_config]\nnvproxy = "true"': ("gpu.nvproxy", "always"),
    '[runsc_config]\nnvproxy = "false"': ("gpu.nvproxy", "never"),
    '[runsc_config]\nnvproxy-driver-version = "latest"': ("gpu.driver_version", "latest"),
    '[runsc_config]\nnvproxy-allowed-driver-capabilities = "compute, utility,graphics"':
        ("gpu.allowed_capabilities", frozenset({"compute", "utility", "graphics"})),
    '[runsc_config]\nhost-uds = "open"\noverlay2 = "root:self"':
        ("runsc_config", {"host-uds": "open", "overlay2": "root:self"}),
    "[runsc_config]\nraw-sockets = true\nnum-network-channels = 2":
        ("runsc_config", {"raw-sockets": "true", "num-network-channels": "2"}),
    'nvproxy = "always"\ndebug = true\n[runsc_config]\nnvproxy = "true"\ndebug = "true"':
        ("runsc_config", {}),
}


def _case(c: Any) -> tuple[str, str, Any]:
    return c if isinstance(c, tuple) else (c, *RUNSC_CONFIG_EXPECT[c])


@pytest.mark.parametrize(("toml", "path", "expected"), [_case(c) for c in KEY_CASES])
def test_key(toml: str, path: str, expected: Any) -> None:
    cfg = load_body(toml, source=SRC)
    assert _get(cfg, path) == expected
    assert cfg.source == SRC


def test_typed_runsc_config_entries_are_not_passed_twice() -> None:
    cfg = load_body('[runsc_config]\nnvproxy = "true"\nplatform = "ptrace"\ndebug = "true"\n'
                    'network = "host"\ndebug-log = "/d/"\nhost-uds = "all"')
    assert cfg.runsc_config == {"host-uds": "all"}


def _refusal(toml: str) -> str:
    with pytest.raises(InvalidArgument) as info:
        load_body(toml, source=SRC)
    return str(info.value)


P = f"runtime config {SRC}: "
REFUSALS = [
    ('netwrok = "host"', P + "`netwrok` is not a known key; did you mean `network`?"),
    ("runsc_cfg = 1", P + "`runsc_cfg` is not a known key; did you mean `runsc_config`?"),
    ("zzz = 1", P + "`zzz` is not a known key; known keys: accept_pod_nvproxy_annotation, "
     "accept_visible_devices_env, accept_visible_devices_env_in_pods, binary_name, "
     "cdi_default_kind, cdi_spec_dirs, cdi_vendors, debug, gvisorPlatform, "
     "gvisorRoot, log_level, log_path, network, nvproxy, nvproxy_allow_unsupported_driver, "
     "nvproxy_allowed_capabilities, nvproxy_driver_version, platform, pod_resources_socket, "
     "root, runsc_config, seccomp"),
    ('cdi_default_kind = "gpu"', P + "`cdi_default_kind` = 'gpu' is not a CDI kind; write it "
     'as vendor/class, like "nvidia.com/gpu"'),
    ('shim_cgroup = "/x"', P + "`shim_cgroup` is a containerd-shim-runsc-v1 setting this shim "
     "does not support; remove it"),
    ("grouping = true", P + "`grouping` is a containerd-shim-runsc-v1 setting this shim does "
     "not support; remove it"),
    ('binary_name = ""', P + "`binary_name` must be a non-empty string, not ''; write it as "
     'binary_name = "..."'),
    ("binary_name = 3", P + "`binary_name` must be a non-empty string, not 3; write it as "
     'binary_name = "..."'),
    ('binary_name = "bin/runsc"', P + "`binary_name` must be a bare name (looked up on PATH) "
     "or an absolute path, not 'bin/runsc'; give the full path starting with /"),
    ('root = "run/runsc"', P + "`root` must be an absolute path, not 'run/runsc'; give the "
     "full path starting with /"),
    ('gvisorRoot = "x"', P + "`gvisorRoot` must be an absolute path, not 'x'; give the full "
     "path starting with /"),
    ('log_level = "verbose"', P + "`log_level` is 'verbose'; use one of \"trace\", \"debug\", "
     '"info", "warn", "warning", "error", "fatal", "panic"'),
    ('log_path = "shim.log"', P + "`log_path` must be an absolute path, not 'shim.log'; give "
     "the full path starting with /"),
    ('debug = "true"', P + "`debug` must be true or false, not 'true'; write debug = true "
     "(no quotes)"),
    ('network = "bridge"', P + "`network` is 'bridge'; use one of \"auto\", \"none\", "
     '"host", "sandbox"'),
    ('platform = "firecracker"', P + "`platform` is 'firecracker'; use one of \"systrap\", "
     '"ptrace", "kvm"'),
    ('gvisorPlatform = "gce"', P + "`gvisorPlatform` is 'gce'; use one of \"systrap\", "
     '"ptrace", "kvm"'),
    ("nvproxy = true", P + "`nvproxy` is True; use one of \"auto\", \"always\", \"never\""),
    ('nvproxy_driver_version = "550"', P + "`nvproxy_driver_version` is '550'; give an "
     'NVIDIA driver ABI version like "550.90.07" or "latest"'),
    ('nvproxy_allowed_capabilities = ["compute", "gpu"]', P + "`nvproxy_allowed_capabilities`"
     " names unknown driver capabilities ['gpu']; use some of compute, utility, graphics, "
     "video, display, compat32, ngx, all"),
    ("nvproxy_allowed_capabilities = []", P + "`nvproxy_allowed_capabilities` is empty; use "
     "some of compute, utility, graphics, video, display, compat32, ngx, all"),
    ('nvproxy_allowed_capabilities = "compute"', P + "`nvproxy_allowed_capabilities` must be "
     "a list of strings, not 'compute'; write it as nvproxy_allowed_capabilities = "
     '["...", "..."]'),
    ('cdi_spec_dirs = "/etc/cdi"', P + "`cdi_spec_dirs` must be a list of strings, not "
     "'/etc/cdi'; write it as cdi_spec_dirs = [\"...\", \"...\"]"),
    ('cdi_spec_dirs = ["cdi"]', P + "`cdi_spec_dirs` must be an absolute path, not 'cdi'; "
     "give the full path starting with /"),
    ('cdi_vendors = ["nvidia.com/gpu"]', P + "`cdi_vendors` has invalid CDI vendor names "
     "['nvidia.com/gpu']; use vendor names as in CDI kinds, like \"nvidia.com\""),
    ('runsc_config = "nvproxy"', P + "`runsc_config` must be a table; write it as "
     "[runsc_config]"),
    ('[runsc_config]\n"--debug" = "true"', P + "`runsc_config.--debug` is not a runsc flag "
     'name; write the flag without leading dashes, e.g. debug-log = "..."'),
    ('[runsc_config]\nroot = "/x"', P + "`runsc_config.root` is set by the shim; remove it "
     "(the top-level `root` key instead)"),
    ('[runsc_config]\nlog = "/x"', P + "`runsc_config.log` is set by the shim; remove it "
     "(the shim writes runsc's log into the bundle)"),
    ('[runsc_config]\nlog-format = "text"', P + "`runsc_config.log-format` is set by the "
     "shim; remove it (the shim reads runsc's log as json)"),
    ('[runsc_config]\nhost-uds = ["open"]', P + "`runsc_config.host-uds` must be a string, "
     "not ['open']; runsc flags are written name = \"value\""),
    ('[runsc_config]\ndebug = "yes"', P + "`runsc_config.debug` is 'yes'; use \"true\" or "
     '"false"'),
    ('[runsc_config]\nnetwork = "auto"', P + "`runsc_config.network` is 'auto'; use one of "
     '"none", "host", "sandbox"'),
    ('[runsc_config]\nnvproxy-allowed-driver-capabilities = "compute,gfx"', P +
     "`runsc_config.nvproxy-allowed-driver-capabilities` names unknown driver capabilities "
     "['gfx']; use some of compute, utility, graphics, video, display, compat32, ngx, all"),
    ('[runsc_config]\ndebug-log = "logs/"', P + "`runsc_config.debug-log` must be an absolute "
     "path, not 'logs/'; give the full path starting with /"),
    ('platform = "ptrace"\ngvisorPlatform = "systrap"', P + "`gvisorPlatform` = 'systrap' "
     "contradicts `platform` = 'ptrace'; keep only one of them"),
    ('root = "/a"\ngvisorRoot = "/b"', P + "`gvisorRoot` = '/b' contradicts `root` = '/a'; "
     "keep only one of them"),
    ('nvproxy = "never"\n[runsc_config]\nnvproxy = "true"', P + "`runsc_config.nvproxy` = "
     "'always' contradicts `nvproxy` = 'never'; keep only one of them"),
    ('network = "none"\n[runsc_config]\nnetwork = "host"', P + "`runsc_config.network` = "
     "'host' contradicts `network` = 'none'; keep only one of them"),
    ("debug = false\n[runsc_config]\ndebug = \"true\"", P + "`runsc_config.debug` = True "
     "contradicts `debug` = False; keep only one of them"),
]


@pytest.mark.parametrize(("toml", "message"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusal(toml: str, message: str) -> None:
    assert _refusal(toml) == message


def test_invalid_toml() -> None:
    msg = _refusal('network = "host')
    assert msg.startswith(f"runtime config {SRC} is not valid TOML: ")


def test_load_file(tmp_path: Path) -> None:
    path = tmp_path / "runsc.toml"
    path.write_text('network = "host"\n[runsc_config]\nnvproxy = "true"\n')
    cfg = load_file(str(path))
    assert (cfg.network, cfg.gpu.nvproxy, cfg.source) == ("host", "always", str(path))


def test_load_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(InvalidArgument) as info:
        load_file(str(missing))
    assert str(info.value) == (f"cannot read runtime config {missing}: No such file or "
                               "directory; check ConfigPath in containerd's runtime options")


def test_binary_name_nvidia_runtime_warns() -> None:
    cfg = load_body('binary_name = "/usr/bin/nvidia-container-runtime"')
    assert cfg.warnings and "nvidia-container-runtime" in cfg.warnings[0]


# --------------------------------------------------------------------------- options Any


def _any(type_url: str, message: Any) -> pb.Any:
    return pb.Any(type_url=type_url, value=bytes(message))


@pytest.mark.parametrize(
    "type_url",
    ["runtimeoptions.v1.Options", "containerd.runtimeoptions.v1.Options",
     "type.googleapis.com/runtimeoptions.v1.Options"],
)
def test_options_config_path(tmp_path: Path, type_url: str) -> None:
    path = tmp_path / "runsc.toml"
    path.write_text('platform = "ptrace"\n')
    raw = _any(type_url, RuntimeOptions(type_url="io.containerd.runsc.v1.options",
                                        config_path=str(path)))
    cfg = load_config(raw)
    assert (cfg.platform, cfg.source) == ("ptrace", str(path))


def test_options_config_body_from_cri() -> None:
    # CRI marshals the runtime's whole `options` table, TypeUrl included.
    body = b'TypeUrl = "io.containerd.runsc.v1.options"\nnetwork = "none"\n' \
           b'[runsc_config]\nhost-uds = "open"\n'
    cfg = load_config(_any("runtimeoptions.v1.Options", RuntimeOptions(config_body=body)))
    assert (cfg.network, cfg.runsc_config, cfg.source) == (
        "none", {"host-uds": "open"}, "<options config_body>")


def test_options_path_wins_over_body(tmp_path: Path) -> None:
    path = tmp_path / "runsc.toml"
    path.write_text('network = "host"\n')
    cfg = load_config(_any("runtimeoptions.v1.Options",
                           RuntimeOptions(config_path=str(path), config_body=b'network = "none"')))
    assert cfg.network == "host"


@pytest.mark.parametrize(
    "raw",
    [pb.Any(), _any("runtimeoptions.v1.Options", RuntimeOptions()),
     _any("runtimeoptions.v1.Options", RuntimeOptions(type_url="io.containerd.runsc.v1.options"))],
)
def test_options_empty(raw: pb.Any) -> None:
    assert load_config(raw) == RuntimeConfig()


def test_runc_options_ignored_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    raw = _any("containerd.runc.v1.Options",
               RuncOptions(binary_name="/usr/bin/nvidia-container-runtime", root="/r",
                           systemd_cgroup=True))
    cfg = load_config(raw)
    assert cfg == RuntimeConfig()
    assert cfg.warnings == (
        "ignoring runc options (BinaryName, Root, SystemdCgroup) that containerd sent: this "
        "shim reads its settings from a TOML file; set runtime_type to "
        "io.containerd.gvisorgpu.v1 and options ConfigPath to that file",)
    assert cfg.warnings[0] in caplog.text


def test_unknown_options_type() -> None:
    with pytest.raises(InvalidArgument) as info:
        load_config(_any("example.v1.Other", RuntimeOptions(config_path="/x")))
    assert str(info.value) == (
        "unsupported runtime options type 'example.v1.Other'; this shim accepts "
        "runtimeoptions.v1.Options (ConfigPath = a TOML file, or the TOML table itself)")


@pytest.mark.parametrize(
    ("type_url", "value"),
    [
        ("runtimeoptions.v1.Options", b"\x12\x05/x"),
        ("runtimeoptions.v1.Options", b"\x12"),
        ("containerd.runc.v1.Options", b"\x32\x09runsc"),
    ],
)
def test_malformed_options(type_url: str, value: bytes) -> None:
    with pytest.raises(InvalidArgument, match=f"malformed runtime options \\({type_url}\\): "):
        load_config(pb.Any(type_url=type_url, value=value))


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("mode", "namespaces", "expected"),
    [
        ("auto", None, "host"),
        ("auto", [{"type": "pid"}], "host"),
        ("auto", [{"type": "network"}], "none"),
        ("auto", [{"type": "network", "path": "/var/run/netns/cni-1"}], "sandbox"),
        ("host", [{"type": "network"}], "host"),
        ("none", [], "none"),
        ("sandbox", [], "sandbox"),
    ],
)
def test_resolve_network(mode: Any, namespaces: list[dict[str, str]] | None,
                         expected: str) -> None:
    spec: dict[str, Any] = {} if namespaces is None else {"linux": {"namespaces": namespaces}}
    assert resolve_network(mode, spec) == expected


@pytest.mark.parametrize(
    ("log_path", "expected"),
    [
        (None, None),
        ("/var/log/shim.log", "/var/log/shim.log"),
        ("/var/log/%ID%.log", "/var/log/c1.log"),
        ("/var/log/gvisorgpu/", "/var/log/gvisorgpu/gvisorgpu-shim-c1.log"),
    ],
)
def test_shim_log_path(log_path: str | None, expected: str | None) -> None:
    assert RuntimeConfig(log_path=log_path).shim_log_path("c1") == expected
