"""Build an offline kit: what ``scripts/gpu-smoke --offline KIT`` installs on a
host that has no network (no apt, no package index).

A kit is one folder:

    manifest.json   what is in it, with sha256 sums (``offline.py`` checks them)
    debs/           runsc and containerd as the .deb files scripts/install-deps fetched
    wheels/         the shim's Python dependencies: pure-Python wheels, which fit any
                    CPython; plus, for the few with compiled parts (psutil, PyYAML),
                    binary wheels for the CPython versions asked for, used only when the
                    target's python3 cannot import them already
    .gitignore      "*", so a kit made inside a checkout is never committed

Standard library only, plus ``pip download`` for the wheels.

    python3 -m gpusmoke make DIR [--deb FILE]... [--python-version 3.13]...
    python3 -m gpusmoke install DIR --repo TOP     (see gpusmoke.offline)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpusmoke.deb import DebError, DebInfo, read_info

__all__ = ["MANIFEST", "KitError", "cache_name", "default_debs", "make_kit", "sha256",
           "wheel_tags"]

MANIFEST = "manifest.json"
FORMAT = 1
DEFAULT_PYTHONS = ("3.11", "3.12")
# What scripts/install-deps fetches into its cache: the runsc the project is
# tested with (nvproxy, systrap) and the newest containerd.
DEFAULT_DEB_GLOBS = ("runsc_0.0~20240729*.deb", "containerd_2.*.deb")
# Module names that differ from the distribution's name.
_MODULE_NAMES = {"pyyaml": "yaml"}
_PIP_TIMEOUT = 600


class KitError(Exception):
    """The kit cannot be made or installed; the message says what to do."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_name(info: DebInfo) -> str:
    """The folder scripts/install-deps unpacks a package into, which is where
    tests/paths.py looks: runsc-YYYYMMDD for runsc, NAME-MAJOR.MINOR otherwise."""
    if info.package == "runsc":
        date = re.search(r"(\d{8})", info.version)
        if date:
            return f"runsc-{date.group(1)}"
    numbers = re.match(r"(?:\d+:)?(\d+)\.(\d+)", info.version)
    if numbers is None:
        raise KitError(f"cannot name a folder for {info.package} {info.version}")
    return f"{info.package}-{numbers.group(1)}.{numbers.group(2)}"


def default_debs(cache: Path) -> list[Path]:
    """The .debs scripts/install-deps downloaded into its cache."""
    found = []
    for pattern in DEFAULT_DEB_GLOBS:
        matches = sorted(cache.glob(f"apt-*/archives/*/{pattern}"))
        if not matches:
            raise KitError(f"no {pattern} under {cache}/apt-*/archives: run "
                           "scripts/install-deps first, or name the .deb with --deb FILE")
        found.append(matches[-1])
    return found


def project_requirements(repo: Path) -> list[str]:
    import tomllib  # only here: `install` must also start on an older python3 and say why not

    with (repo / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def wheel_tags(filename: str) -> tuple[str, str, str, str]:
    """(distribution, python tag, abi tag, platform tag) from a wheel's file name."""
    parts = filename.removesuffix(".whl").split("-")
    if len(parts) not in (5, 6) or not filename.endswith(".whl"):
        raise KitError(f"{filename} is not a wheel file name")
    return parts[0], parts[-3], parts[-2], parts[-1]


def _pip_download(python: str, dest: Path, requirement: str, args: Sequence[str]) -> bool:
    argv = [python, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--dest", str(dest), "--only-binary=:all:", *args, requirement]
    print(f"kit: pip download {' '.join(args)} {requirement}", file=sys.stderr, flush=True)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=_PIP_TIMEOUT, check=False)
    return out.returncode == 0


def _module_of(wheel: Path, distribution: str) -> str:
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.endswith(".dist-info/top_level.txt"):
                top = [m for m in z.read(name).decode().split() if not m.startswith("_")]
                if top:
                    return top[0]
    norm = distribution.lower().replace("-", "_")
    return _MODULE_NAMES.get(norm, norm)


def _distribution(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0]


def download_wheels(python: str, requirements: Sequence[str], dest: Path,
                    pythons: Sequence[str], machine: str
                    ) -> tuple[dict[str, list[str]], list[dict[str, Any]]]:
    """Download into ``dest`` the wheels each CPython version in ``pythons``
    needs. Returns the wheel files per version and, for each requirement without
    a pure-Python wheel, its module and its binary wheels: the target imports
    that module from its own python3 unless one of those wheels fits."""
    dest.mkdir(parents=True, exist_ok=True)
    per_version: dict[str, list[str]] = {}
    compiled: dict[str, dict[str, Any]] = {}
    pure = ["--platform", "any", "--implementation", "py", "--abi", "none"]
    manylinux = [a for tag in ("2014", "_2_17", "_2_28")
                 for a in ("--platform", f"manylinux{tag}_{machine}")]
    for version in pythons:
        # One folder per version: pip reports nothing for a file already there,
        # and the sets may differ (a release that dropped an older Python).
        staging = dest.parent / f".wheels-{version}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for requirement in requirements:
            if _pip_download(python, staging, requirement, [*pure, "--python-version", version]):
                continue
            before = set(staging.iterdir())
            _pip_download(python, staging, requirement,
                          [*manylinux, "--implementation", "cp", "--python-version", version])
            new = sorted(set(staging.iterdir()) - before)
            name = _distribution(requirement)
            entry = compiled.setdefault(requirement, {
                "requirement": requirement, "wheels": [],
                "module": _MODULE_NAMES.get(name.lower(), name.lower())})
            entry["wheels"] += [w.name for w in new]
            if new:
                entry["module"] = _module_of(new[0], name)
            else:
                print(f"kit: no wheel of {requirement} for CPython {version} on {machine}: "
                      "the target's python3 must provide it", file=sys.stderr)
        per_version[version] = sorted(p.name for p in staging.iterdir())
        for wheel in staging.iterdir():
            os.replace(wheel, dest / wheel.name)
        staging.rmdir()
    return per_version, list(compiled.values())


def make_kit(dest: Path, debs: Sequence[Path], requirements: Sequence[str], *,
             python: str = sys.executable, pythons: Sequence[str] = DEFAULT_PYTHONS,
             machine: str | None = None) -> dict[str, Any]:
    """Write the kit into ``dest`` (created, or refreshed in place) and return its manifest."""
    machine = machine or platform.machine()
    dest.mkdir(parents=True, exist_ok=True)
    if (dest / "cache").exists():
        # What an earlier install unpacked here (~4x the .debs): not part of a kit.
        shutil.rmtree(dest / "cache")
        print(f"kit: removed {dest / 'cache'}, left by an earlier install", file=sys.stderr)
    (dest / ".gitignore").write_text("*\n")
    (dest / "debs").mkdir(exist_ok=True)
    entries = []
    for deb in debs:
        try:
            info = read_info(deb)
        except DebError as e:
            raise KitError(str(e)) from None
        target = dest / "debs" / deb.name
        if not target.exists() or sha256(target) != sha256(deb):
            shutil.copyfile(deb, target)
        entries.append({"file": f"debs/{deb.name}", "package": info.package,
                        "version": info.version, "architecture": info.architecture,
                        "unpack_as": cache_name(info), "sha256": sha256(target)})
    per_version, host_modules = download_wheels(python, requirements, dest / "wheels",
                                                pythons, machine)
    names = sorted({w for ws in per_version.values() for w in ws})
    wheels = [{"file": f"wheels/{w}", "sha256": sha256(dest / "wheels" / w)} for w in names]
    manifest: dict[str, Any] = {
        "format": FORMAT, "debs": entries, "wheels": wheels, "pythons": per_version,
        "machine": machine, "requirements": list(requirements),
        "host_modules": host_modules}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpusmoke", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="build a kit (needs the package index once)")
    m.add_argument("dir", type=Path)
    m.add_argument("--deb", type=Path, action="append", metavar="FILE",
                   help="a .deb to include (default: runsc 20240729 and containerd 2.x "
                        "from scripts/install-deps' cache)")
    m.add_argument("--python-version", action="append", metavar="X.Y",
                   help=f"a target CPython besides {', '.join(DEFAULT_PYTHONS)}")
    m.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[2])
    i = sub.add_parser("install", help="install a kit into a checkout, offline")
    i.add_argument("dir", type=Path)
    i.add_argument("--repo", type=Path, required=True)
    i.add_argument("--cache", type=Path, help="where to unpack the .debs (default: DIR/cache)")
    args = p.parse_args(argv)
    try:
        if args.command == "install":
            from gpusmoke.offline import install

            for key, value in install(args.dir.resolve(), args.repo.resolve(),
                                      args.cache).items():
                print(f"{key}={value}")
            return 0
        cache = Path(os.environ.get("GVISORGPU_CACHE", "/var/cache/gvisorgpu-shim"))
        debs = args.deb or default_debs(cache)
        manifest = make_kit(args.dir, debs, project_requirements(args.repo),
                            pythons=list(dict.fromkeys([*DEFAULT_PYTHONS,
                                                        *(args.python_version or [])])))
    except (KitError, OSError, subprocess.SubprocessError) as e:
        print(f"gpu-smoke: {e}", file=sys.stderr)
        return 1
    host_only = [c["requirement"] for c in manifest["host_modules"] if not c["wheels"]]
    print(f"kit: {args.dir} ({_size(args.dir) / 2**20:.1f} MiB): "
          f"{len(manifest['debs'])} .deb, {len(manifest['wheels'])} wheels"
          + (f"; the target's python3 must provide {', '.join(host_only)}" if host_only else ""))
    return 0
