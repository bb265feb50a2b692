"""The offline kit behind `scripts/gpu-smoke --offline KIT`, for GPU hosts
without network: reading .deb files without dpkg (checked against dpkg itself
on the real packages), making a kit, installing it into a copy of the checkout
with another Python's venv as the "host" python3, and a whole offline smoke run
in a network namespace that has no network at all.

The kit is made once per module from scripts/install-deps' .deb cache and
wheels from the package index pip is configured with; without either the
tests that need them are skipped, saying which.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import paths

sys.path.insert(0, str(paths.REPO / "scripts"))

from gpusmoke import deb, kit, offline
from gpusmoke.deb import DebError, DebInfo
from gpusmoke.kit import KitError

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(scope="module")
def debs() -> list[Path]:
    try:
        return kit.default_debs(paths.CACHE)
    except KitError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def made_kit(tmp_path_factory: pytest.TempPathFactory, debs: list[Path]) -> Path:
    d = tmp_path_factory.mktemp("kit")
    kit.make_kit(d, debs, kit.project_requirements(paths.REPO), python=sys.executable)
    if not list((d / "wheels").glob("betterproto-*.whl")):
        pytest.skip("pip could not download the wheels (no package index reachable?)")
    return d


def _tree(root: Path) -> dict[str, tuple[int, str]]:
    found = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            found[str(p.relative_to(root))] = (p.stat().st_mode & 0o7777, digest)
        elif p.is_dir():
            found[str(p.relative_to(root)) + "/"] = (p.stat().st_mode & 0o7777, "")
    return found


# --- .deb without dpkg ----------------------------------------------------------

def test_extract_matches_dpkg(tmp_path: Path, debs: list[Path]) -> None:
    if shutil.which("dpkg") is None:
        pytest.skip("no dpkg to compare with")
    runsc = next(d for d in debs if d.name.startswith("runsc_"))
    info = deb.extract(runsc, tmp_path / "ours")
    subprocess.run(["dpkg", "-x", str(runsc), str(tmp_path / "dpkg")], check=True, timeout=120)
    assert _tree(tmp_path / "ours") == _tree(tmp_path / "dpkg")
    assert (tmp_path / "ours/usr/bin/runsc").stat().st_mode & 0o111
    assert info.package == "runsc" and "20240729" in info.version


def test_read_info_matches_dpkg_deb(debs: list[Path]) -> None:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("no dpkg-deb to compare with")
    for path in debs:
        fields = subprocess.run(["dpkg-deb", "-f", str(path), "Package", "Version",
                                 "Architecture"], capture_output=True, text=True, check=True,
                                timeout=60).stdout
        theirs = dict(line.split(": ", 1) for line in fields.splitlines())
        assert deb.read_info(path) == DebInfo(theirs["Package"], theirs["Version"],
                                              theirs["Architecture"])


def test_ar_members_match_the_ar_tool(tmp_path: Path) -> None:
    if shutil.which("ar") is None:
        pytest.skip("no ar to build an archive with")
    (tmp_path / "odd").write_bytes(b"x" * 7)  # odd sizes are padded to even offsets
    (tmp_path / "even").write_bytes(b"y" * 10)
    subprocess.run(["ar", "rc", "a.ar", "odd", "even"], cwd=tmp_path, check=True, timeout=30)
    members = deb.ar_members((tmp_path / "a.ar").read_bytes())
    assert members == {"odd": b"x" * 7, "even": b"y" * 10}


def test_unreadable_debs_are_named(tmp_path: Path, debs: list[Path]) -> None:
    junk = tmp_path / "junk.deb"
    junk.write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(DebError, match=r"junk\.deb: not an ar archive"):
        deb.extract(junk, tmp_path / "out")
    short = tmp_path / "short.deb"
    short.write_bytes(debs[0].read_bytes()[:4096])
    with pytest.raises(DebError, match=r"short\.deb: .*cut short"):
        deb.extract(short, tmp_path / "out")


@pytest.mark.parametrize(("package", "version", "folder"), [
    ("runsc", "0.0~20240729.0-4+b7", "runsc-20240729"),
    ("containerd", "2.1.9+ds1-5", "containerd-2.1"),
    ("containerd", "1.7.24~ds1-6+deb13u1", "containerd-1.7"),
    ("containerd", "1.6.20~ds1-1+b1", "containerd-1.6"),
    ("runc", "1:1.1.12+ds1-1", "runc-1.1"),
])
def test_cache_name_is_where_tests_paths_looks(package: str, version: str, folder: str) -> None:
    assert kit.cache_name(DebInfo(package, version, "amd64")) == folder


@pytest.mark.parametrize(("name", "tags"), [
    ("grpclib-0.4.9-py3-none-any.whl", ("grpclib", "py3", "none", "any")),
    ("psutil-7.2.2-cp36-abi3-manylinux2010_x86_64.manylinux_2_12_x86_64.whl",
     ("psutil", "cp36", "abi3", "manylinux2010_x86_64.manylinux_2_12_x86_64")),
    ("pkg-1.0-1build-py3-none-any.whl", ("pkg", "py3", "none", "any")),
])
def test_wheel_tags(name: str, tags: tuple[str, str, str, str]) -> None:
    assert kit.wheel_tags(name) == tags


# --- making and installing a kit ----------------------------------------------------

def test_kit_holds_what_the_manifest_says(made_kit: Path) -> None:
    manifest = json.loads((made_kit / kit.MANIFEST).read_text())
    assert (made_kit / ".gitignore").read_text() == "*\n"
    assert {d["unpack_as"] for d in manifest["debs"]} == {"runsc-20240729", "containerd-2.1"}
    for entry in [*manifest["debs"], *manifest["wheels"]]:
        assert kit.sha256(made_kit / entry["file"]) == entry["sha256"], entry
    compiled = {c["module"]: c for c in manifest["host_modules"]}
    assert set(compiled) == {"psutil", "setproctitle", "yaml"}
    for version in ("3.11", "3.12"):
        names = {kit.wheel_tags(w)[0].lower() for w in manifest["pythons"][version]}
        assert {"betterproto", "grpclib", "h2", "hpack", "hyperframe", "multidict"} <= names
        for wheel in manifest["pythons"][version]:
            compiled_wheel = any(wheel in c["wheels"] for c in compiled.values())
            assert compiled_wheel or kit.wheel_tags(wheel)[2:] == ("none", "any"), wheel


def _checkout_copy(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", ".venv", "*.pyc")
    for folder in ("shim", "scripts", "tests"):
        shutil.copytree(paths.REPO / folder, dest / folder, ignore=ignore)
    shutil.copy(paths.REPO / "pyproject.toml", dest)
    return dest


def _python_where(python: Path, module: str) -> str:
    out = subprocess.run([str(python), "-c", f"import {module}; print({module}.__file__)"],
                         capture_output=True, text=True, timeout=60, cwd="/", check=True)
    return out.stdout.strip()


def test_install_into_a_checkout(tmp_path: Path, made_kit: Path,
                                 capfd: pytest.CaptureFixture[str]) -> None:
    repo = _checkout_copy(tmp_path / "repo")
    cache = tmp_path / "cache"
    env = offline.install(made_kit, repo, cache)
    assert env == {"GVISORGPU_CACHE": str(cache.resolve()),
                   "GVISORGPU_RUNSC_2024": str(cache.resolve() / "runsc-20240729/usr/bin/runsc")}
    python = repo / ".venv/bin/python3"
    site = repo / ".venv/lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    # The kit's pure wheels in the new venv; psutil from the python3 that made it,
    # itself a venv, whose packages `--system-site-packages` would not have shown.
    assert _python_where(python, "betterproto").startswith(str(site))
    assert _python_where(python, "psutil").startswith(sys.prefix)
    assert _python_where(python, "shim.manager.main") == str(repo / "shim/manager/main.py")
    launcher = repo / ".venv/bin/containerd-shim-gvisorgpu-v1"
    version = subprocess.run([str(launcher), "version"], capture_output=True, text=True,
                             timeout=60, check=True, env={"PATH": SYSTEM_PATH})
    assert version.stdout.startswith("containerd-shim-gvisorgpu-v1 ")
    first = capfd.readouterr().err
    assert "unpacked into" in first and "imports ok" in first
    assert offline.install(made_kit, repo, cache) == env
    again = capfd.readouterr().err
    assert "already unpacked" in again and f"reusing {repo}/.venv" in again


@pytest.mark.parametrize(("damage", "message"), [
    ("remove", "is missing: copy the kit again"),
    ("change", "does not match its sha256"),
])
def test_install_refuses_a_damaged_kit(tmp_path: Path, made_kit: Path, damage: str,
                                       message: str) -> None:
    manifest: dict[str, Any] = json.loads((made_kit / kit.MANIFEST).read_text())
    small = tmp_path / "kit"
    (small / "wheels").mkdir(parents=True)
    manifest["debs"] = []
    wheel = manifest["wheels"][0]["file"]
    if damage == "change":
        (small / wheel).write_bytes((made_kit / wheel).read_bytes() + b"\0")
    (small / kit.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(KitError, match=message):
        offline.install(small, tmp_path / "repo")


# --- the whole thing offline ------------------------------------------------------------

def test_offline_smoke_run_in_a_namespace_without_network(tmp_path: Path,
                                                          made_kit: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if shutil.which("unshare") is None:
        pytest.skip("no unshare to take the network away")
    repo = _checkout_copy(tmp_path / "repo")
    # "python3" on PATH is this test's venv, as on a host whose python3 lives in a venv.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    results = tmp_path / "results"
    env = {"PATH": f"{bin_dir}:{SYSTEM_PATH}", "HOME": str(tmp_path), "PIP_NO_INDEX": "1"}
    out = subprocess.run(["unshare", "--net", "--", str(repo / "scripts/gpu-smoke"),
                          "--offline", str(made_kit), "--results", str(results)],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=600,
                         stdin=subprocess.DEVNULL, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-3000:]
    summary = json.loads((results / "gpu-smoke.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    statuses = {name: s["status"] for name, s in steps.items()}
    assert statuses["install-deps"] == "ok", steps["install-deps"]["output"]
    assert "installed 2 .deb" in steps["install-deps"]["detail"]
    for name in ("runsc-probe", "containerd", "plain", "cleanup"):
        assert statuses[name] == "ok", steps[name]
    assert statuses["smi-as-is"] == "refused"
    facts = summary["facts"]
    assert facts["runsc"]["path"].startswith(str(made_kit / "cache"))
    assert facts["containerd"].startswith("containerd github.com/containerd/containerd/v2 2.1")
    assert summary["leftovers"] == []
