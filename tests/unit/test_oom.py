"""Finding a sandbox's OOM-kill counter: cgroupsPath in both drivers' forms,
/proc/<pid>/cgroup, and fake cgroup trees (v1 memory.oom_control, v2
memory.events) under a temporary root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shim.task import cgroups, oom
from shim.task.cgroups import (
    ProcCgroup,
    expand_slice,
    parse_proc_cgroup,
    runsc_relative,
    systemd_cgroup,
)

POD_SLICE = "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod123.slice"
SYSTEMD_PATH = "kubepods-besteffort-pod123.slice:cri-containerd:abc"
SCOPE = f"/{POD_SLICE}/cri-containerd-abc.scope"


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("-.slice", ""),
        ("system.slice", "system.slice"),
        ("user-1000.slice", "user.slice/user-1000.slice"),
        ("kubepods-besteffort-pod123.slice", POD_SLICE),
        ("kubepods-pod9f1c_22.slice", "kubepods.slice/kubepods-pod9f1c_22.slice"),
    ],
)
def test_expand_slice(name: str, path: str) -> None:
    assert expand_slice(name) == path


@pytest.mark.parametrize("name", ["a--b.slice", "-a.slice", "a-.slice", "kubepods",
                                  "a/b.slice", ".slice"])
def test_expand_slice_refuses_what_systemd_refuses(name: str) -> None:
    with pytest.raises(ValueError, match="not a systemd slice name"):
        expand_slice(name)


@pytest.mark.parametrize(
    ("cgroups_path", "cgroup"),
    [
        (SYSTEMD_PATH, SCOPE),
        ("kubepods-burstable-podab.slice:crio:0f", "/kubepods.slice/kubepods-burstable.slice/"
                                                   "kubepods-burstable-podab.slice/crio-0f.scope"),
        (":runsc:c1", "/system.slice/runsc-c1.scope"),  # empty slice: system.slice
        ("-.slice:docker:c1", "/docker-c1.scope"),  # the root slice
        ("system.slice:ignored:mine-x.slice", "/mine.slice/mine-x.slice"),  # a slice unit
        ("/kubepods/besteffort/pod123/abc", None),  # cgroupfs form
        ("kubepods/abc", None),
        ("a:b", None),
        ("a:b:c:d", None),
        ("kubepods-.slice:cri-containerd:abc", None),  # invalid slice
        ("notaslice:cri-containerd:abc", None),
        ("kubepods.slice:cri-containerd:", None),  # no name
    ],
)
def test_systemd_cgroup(cgroups_path: str, cgroup: str | None) -> None:
    assert systemd_cgroup(cgroups_path) == cgroup


HYBRID = """\
12:pids:/system.slice/containerd.service
9:name=systemd:/system.slice/containerd.service
5:cpu,cpuacct:/system.slice/containerd.service
4:memory:/system.slice/containerd.service
0::/system.slice/containerd.service
"""


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        (HYBRID, ProcCgroup(memory="/system.slice/containerd.service",
                            unified="/system.slice/containerd.service")),
        ("0::/kubepods.slice/x.scope\n", ProcCgroup(unified="/kubepods.slice/x.scope")),
        ("7:blkio,memory:/a:b:c\n", ProcCgroup(memory="/a:b:c")),  # colons in the path
        ("", ProcCgroup()),
        ("garbage\n", ProcCgroup()),
    ],
)
def test_parse_proc_cgroup(text: str, parsed: ProcCgroup) -> None:
    assert parse_proc_cgroup(text) == parsed


def test_runsc_relative_paths() -> None:
    """runsc without --systemd-cgroup: below its own memory cgroup on v1, below
    the parent of its own cgroup on v2."""
    own = ProcCgroup(memory="/system.slice/containerd.service", unified="/system.slice/x.scope")
    assert runsc_relative(SYSTEMD_PATH, own) == ProcCgroup(
        memory=f"/system.slice/containerd.service/{SYSTEMD_PATH}",
        unified=f"/system.slice/{SYSTEMD_PATH}")


OWN = ProcCgroup(memory="/shim", unified="/shim.scope")


@pytest.mark.parametrize(
    ("cgroups_path", "sandbox", "files"),
    [
        ("", ProcCgroup(memory="/sb"), []),  # no cgroup of its own
        ("/kubepods/pod1/abc", None,
         ["R/memory/kubepods/pod1/abc/memory.oom_control", "R/kubepods/pod1/abc/memory.events"]),
        (SYSTEMD_PATH, None,
         [f"R/memory{SCOPE}/memory.oom_control", f"R{SCOPE}/memory.events",
          f"R/memory/shim/{SYSTEMD_PATH}/memory.oom_control", f"R/{SYSTEMD_PATH}/memory.events"]),
        ("/kubepods/pod1/abc", ProcCgroup(memory="/sb"),
         ["R/memory/sb/memory.oom_control", "R/memory/kubepods/pod1/abc/memory.oom_control",
          "R/kubepods/pod1/abc/memory.events"]),
        # A sandbox still in the shim's own cgroup is not a cgroup of its own.
        ("/kubepods/pod1/abc", OWN,
         ["R/memory/kubepods/pod1/abc/memory.oom_control", "R/kubepods/pod1/abc/memory.events"]),
    ],
)
def test_candidates(cgroups_path: str, sandbox: ProcCgroup | None, files: list[str]) -> None:
    assert oom.candidates(cgroups_path, own=OWN, sandbox=sandbox, root="R") == files


V1_KILLED = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"
V1_CLEAN = "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"
V2_KILLED = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n"
V2_CLEAN = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _own_memory() -> str:
    own = oom.sandbox_cgroup(os.getpid())
    assert own is not None and own.memory is not None
    return own.memory


@pytest.mark.parametrize(
    ("cgroups_path", "files", "sandbox", "expected"),
    [
        # cgroupfs driver, v1 and v2
        ("/kubepods/pod1/abc", {"memory/kubepods/pod1/abc/memory.oom_control": V1_KILLED},
         None, True),
        ("/kubepods/pod1/abc", {"memory/kubepods/pod1/abc/memory.oom_control": V1_CLEAN},
         None, False),
        ("/kubepods/pod1/abc", {"kubepods/pod1/abc/memory.events": V2_KILLED}, None, True),
        ("/kubepods/pod1/abc", {"kubepods/pod1/abc/memory.events": V2_CLEAN}, None, False),
        # systemd driver, the scope runsc --systemd-cgroup makes, v1 and v2
        (SYSTEMD_PATH, {f"memory{SCOPE}/memory.oom_control": V1_KILLED}, None, True),
        (SYSTEMD_PATH, {f"{SCOPE}/memory.events": V2_KILLED}, None, True),
        (SYSTEMD_PATH, {f"{SCOPE}/memory.events": V2_CLEAN}, None, False),
        # the sandbox's recorded cgroup decides, whatever cgroupsPath says
        (SYSTEMD_PATH, {f"memory/{SYSTEMD_PATH}/memory.oom_control": V1_KILLED},
         ProcCgroup(memory=f"/{SYSTEMD_PATH}"), True),
        (SYSTEMD_PATH, {"memory/sb/memory.oom_control": V1_CLEAN,
                        f"memory{SCOPE}/memory.oom_control": V1_KILLED},
         ProcCgroup(memory="/sb"), False),
        # nothing there (runsc has already removed it): not an OOM kill
        (SYSTEMD_PATH, {}, None, False),
        ("", {"memory/memory.oom_control": V1_KILLED}, None, False),
    ],
)
def test_killed_in_a_fake_tree(tmp_path: Path, cgroups_path: str, files: dict[str, str],
                               sandbox: ProcCgroup | None, expected: bool) -> None:
    _tree(tmp_path, files)
    assert oom.killed(cgroups_path, sandbox=sandbox, root=str(tmp_path)) is expected


def test_killed_where_runsc_puts_a_systemd_path_without_the_flag(tmp_path: Path) -> None:
    """runsc 20240729 on cgroup v1 without --systemd-cgroup: the literal string,
    below the cgroup runsc (a child of the shim) runs in."""
    if not Path("/proc/self/cgroup").read_text().count("memory"):
        pytest.skip("no cgroup v1 memory controller on this host")
    _tree(tmp_path, {f"memory{_own_memory()}/{SYSTEMD_PATH}/memory.oom_control": V1_KILLED})
    assert oom.killed(SYSTEMD_PATH, root=str(tmp_path))


def test_sandbox_cgroup_of_a_live_process_and_a_gone_one() -> None:
    assert oom.sandbox_cgroup(os.getpid()) == parse_proc_cgroup(
        Path("/proc/self/cgroup").read_text())
    assert oom.sandbox_cgroup(2**22 + 1) is None  # above pid_max: never a process


@pytest.mark.parametrize(("path", "exists", "placed"), [
    ("kubepods-besteffort-pod1.slice:cri-containerd:abc", True,
     "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/"
     "cri-containerd-abc.scope"),
    ("kubepods-besteffort-pod1.slice:cri-containerd:abc", False, None),
    ("/kubepods/besteffort/pod1/abc", True, None),  # cgroupfs: runsc uses it as it is
])
def test_a_systemd_path_is_placed_only_in_an_existing_slice(path: str, exists: bool,
                                                            placed: str | None) -> None:
    assert cgroups.placed_in_slice(path, exists) == placed
