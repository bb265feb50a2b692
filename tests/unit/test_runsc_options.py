"""runsc global flags for a sandbox, from the config, the probe and the GPU plan:
shim.task.runsc_options is the one place they are decided."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shim.config import load_body
from shim.gpu.facts import HostFacts, SandboxRole
from shim.gpu.plan import plan
from shim.runsc import GlobalOptions, RunscCapabilities, UnsupportedFlag
from shim.task.runsc_options import member_options, sandbox_options, seccomp_enforced

CAPS = RunscCapabilities(
    path="/usr/bin/runsc", version="0.0~20240729.0", release=20240729,
    flags=frozenset({"root", "log", "log-format", "debug", "debug-log", "platform", "network",
                     "nvproxy", "panic-log"}),
    default_platform="systrap", supported_drivers=(), subcommands=frozenset())
SPEC = {"ociVersion": "1.0.2", "process": {"args": ["true"]}, "root": {"path": "rootfs"},
        "linux": {"namespaces": [{"type": "network"}]}}


def _sandbox(toml: str, caps: RunscCapabilities = CAPS) -> GlobalOptions:
    config = load_body(toml)
    result = plan(SPEC, HostFacts(runsc_flags=caps.flags, runsc_release=caps.release),
                  config.gpu, container_id="web-1", sandbox=SandboxRole.standalone())
    return sandbox_options(config, caps, result, namespace="k8s.io", container_id="web-1",
                           bundle="/b")


def _options(toml: str, caps: RunscCapabilities = CAPS) -> list[str]:
    return _sandbox(toml, caps).args()


@pytest.mark.parametrize(("toml", "expected"), [
    ("", ["--root=/run/containerd/runsc/k8s.io/web-1", "--log=/b/runsc.log",
          "--log-format=json", "--network=none", "--panic-log=/b/runsc-panic.log"]),
    ('root = "/r"\ndebug = true',
     ["--root=/r/k8s.io/web-1", "--log=/b/runsc.log", "--log-format=json",
      "--debug-log=/r/debug/k8s.io/web-1/", "--network=none", "--debug",
      "--panic-log=/b/runsc-panic.log"]),
    ('[runsc_config]\ndebug-log = "/logs/%ID%/"\nplatform = "ptrace"',
     ["--root=/run/containerd/runsc/k8s.io/web-1", "--log=/b/runsc.log",
      "--log-format=json", "--debug-log=/logs/web-1/", "--platform=ptrace", "--network=none",
      "--panic-log=/b/runsc-panic.log"]),
    # %ID% expands in every path-valued flag, and an operator's panic log is kept.
    ('[runsc_config]\npanic-log = "/var/log/runsc/%ID%.panic"\nnetwork = "host"',
     ["--root=/run/containerd/runsc/k8s.io/web-1", "--log=/b/runsc.log",
      "--log-format=json", "--network=host", "--panic-log=/var/log/runsc/web-1.panic"]),
    ('nvproxy = "always"\nplatform = "ptrace"',
     ["--root=/run/containerd/runsc/k8s.io/web-1", "--log=/b/runsc.log",
      "--log-format=json", "--platform=ptrace", "--network=none", "--nvproxy=true",
      "--panic-log=/b/runsc-panic.log"]),
], ids=["defaults", "debug-under-root", "runsc-config", "operator-panic-log", "gpu-flags"])
def test_global_flags(toml: str, expected: list[str]) -> None:
    assert _options(toml) == expected


def test_a_flag_the_binary_lacks_is_refused_by_name(tmp_path: Path) -> None:
    old = RunscCapabilities(
        path="/usr/bin/runsc", version="0.0~20221219.0", release=20221219,
        flags=CAPS.flags - {"panic-log"}, default_platform="ptrace", supported_drivers=None,
        subcommands=frozenset())
    with pytest.raises(UnsupportedFlag, match="overlay2"):
        _options('[runsc_config]\noverlay2 = "root:memory"', old)


def test_a_member_uses_its_sandboxes_flags_with_its_own_command_log() -> None:
    sandbox = _sandbox('nvproxy = "always"')
    member = member_options(sandbox, "/bundles/app")
    assert member.log == "/bundles/app/runsc.log"
    assert member.args()[2:] == sandbox.args()[2:]
    assert member.root == sandbox.root


def test_seccomp_profiles_are_enforced_where_runsc_can() -> None:
    caps = dataclasses.replace(CAPS, flags=CAPS.flags | {"oci-seccomp"})
    assert "--oci-seccomp=true" in _options("", caps)
    # An operator who turns it off under [runsc_config] is heard (Create then
    # refuses containers with a profile, or warns with seccomp = "warn").
    off = _sandbox('[runsc_config]\noci-seccomp = "false"', caps)
    assert "--oci-seccomp=false" in off.args() and not seccomp_enforced(off)
    assert seccomp_enforced(_sandbox("", caps))
