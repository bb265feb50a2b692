"""A pod's security profile reaches the sandbox, or the container is refused.

runsc enforces an OCI spec's seccomp profile only when started with
--oci-seccomp; the shim turns it on wherever runsc has it, and refuses a
container with a profile it could not enforce unless the operator chose
``seccomp = "warn"``. Each enforcement test runs for runc too, to prove it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e import containerd as cd

pytestmark = pytest.mark.e2e

# Every way busybox's chmod may reach the kernel answers EPERM; everything
# else is allowed.
DENY_CHMOD = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "architectures": ["SCMP_ARCH_X86_64"],
    "syscalls": [{"names": ["chmod", "fchmod", "fchmodat", "fchmodat2"],
                  "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
}
PROBE = ["sh", "-c", "grep Seccomp: /proc/self/status; chmod 700 /tmp && echo chmod-ok; true"]


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    path = tmp_path / "deny-chmod.json"
    path.write_text(json.dumps(DENY_CHMOD))
    return path


@pytest.mark.parametrize("runtime", ["runc", "gvisorgpu"])
def test_a_seccomp_profile_is_enforced(runtime: str, ctr: cd.Ctr, busybox: str, profile: Path,
                                       container_id: Callable[[str], str],
                                       containerd: cd.Containerd,
                                       request: pytest.FixtureRequest) -> None:
    if runtime == "runc":
        if shutil.which("runc", path=cd.SYSTEM_PATH) is None:
            pytest.skip("runc is not installed")
        flags = ["--runtime", cd.RUNTIME_RUNC, "--runc-root", str(containerd.runsc_root)]
    else:
        flags = request.getfixturevalue("gvisorgpu")
    out = ctr("run", "--rm", "--seccomp", "--seccomp-profile", str(profile), *flags, busybox,
              container_id("sc"), *PROBE)
    assert out.returncode == 0, out.stderr
    assert "Seccomp:\t2" in out.stdout, out.stdout
    assert "chmod-ok" not in out.stdout


def test_a_profile_that_cannot_be_enforced_is_refused(
        ctr: cd.Ctr, busybox: str, profile: Path, runtime_config: Callable[..., Path],
        container_id: Callable[[str], str]) -> None:
    config = runtime_config(runsc_config={"oci-seccomp": "false"})
    cid = container_id("sc")
    out = ctr("run", "--rm", "--seccomp", "--seccomp-profile", str(profile),
              *cd.gvisorgpu_args(config), busybox, cid, *PROBE)
    assert out.returncode != 0
    assert "has a seccomp profile, but its sandbox runs without --oci-seccomp" in out.stderr
    assert 'seccomp = "warn"' in out.stderr
    ctr("c", "rm", cid)


def test_warn_runs_it_without_the_profile_and_says_so(
        ctr: cd.Ctr, busybox: str, profile: Path, runtime_config: Callable[..., Path],
        container_id: Callable[[str], str], containerd: cd.Containerd) -> None:
    config = runtime_config(runsc_config={"oci-seccomp": "false"}, extra={"seccomp": "warn"})
    out = ctr("run", "--rm", "--seccomp", "--seccomp-profile", str(profile),
              *cd.gvisorgpu_args(config), busybox, container_id("sc"), *PROBE)
    assert out.returncode == 0, out.stderr
    assert "chmod-ok" in out.stdout
    assert "runsc would not enforce it; running it anyway" in containerd.log_path.read_text()


@pytest.mark.parametrize("containerd_version", ["2.1"])
def test_containerd_learns_the_runtimes_features(containerd: cd.Containerd,
                                                 runtime_config: Callable[..., Path]) -> None:
    """containerd 2.x runs the shim's -info action (ctr plugins inspect-runtime;
    CRI at start-up); the answer comes from the runsc the config names."""
    out = containerd.ctr("plugins", "inspect-runtime", "--runtime", cd.RUNTIME_GVISORGPU,
                         "--runtime-config-path", str(runtime_config()))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["Name"] == "containerd-shim-gvisorgpu-v1"
    features = info["Features"]
    assert features["ociVersionMax"] == "1.2.0"  # runsc 20240729's `spec:` line
    assert features["hooks"] == ["prestart", "createRuntime", "poststart", "poststop"]
    assert features["linux"]["seccomp"] == {"enabled": True}
    assert features["annotations"]["dev.gvisor.runsc.version"] == "0.0~20240729.0"
    assert "rro" not in features.get("mountOptions", [])
