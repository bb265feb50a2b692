"""Install an offline kit (see ``gpusmoke.kit``) into a checkout, with no
network, no apt, no dpkg and no pip: the host's python3 is all it needs.

- Each .deb is unpacked under the cache folder (default KIT/cache) into the
  folder name scripts/install-deps would use, so tests/paths.py finds it once
  GVISORGPU_CACHE points there.
- ``.venv`` is made with the host's python3 (``venv``, without pip), and the
  kit's wheels for that Python are unzipped into it (pure-Python wheels need
  nothing more). psutil and PyYAML have compiled parts: they come from the
  host's python3 when it has them, else from a binary wheel in the kit.
- The host's site-packages go into ``.venv`` through a .pth file. A venv made
  from inside another venv sees only the *base* interpreter's packages, so
  ``--system-site-packages`` would miss a python3 that is itself a venv.
- The shim's launcher (``.venv/bin/containerd-shim-gvisorgpu-v1``) is written
  like scripts/install-deps writes it: isolated interpreter, explicit paths.

``install`` returns the environment the rest of scripts/gpu-smoke needs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import site
import subprocess
import sys
import venv as venvlib
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpusmoke.deb import DebError, extract
from gpusmoke.kit import FORMAT, MANIFEST, KitError, sha256, wheel_tags

__all__ = ["install"]

LAUNCHER = "containerd-shim-gvisorgpu-v1"
_RECORD = "gvisorgpu-offline-installed.txt"
_MACHINES = {"amd64": "x86_64", "arm64": "aarch64", "ppc64el": "ppc64le", "s390x": "s390x"}
# The binaries each package must be able to start here (a glibc too old for
# them fails now, with its message, instead of in the middle of the smoke run).
_SELF_TESTS = {"runsc": [["usr/bin/runsc", "--version"]],
               "containerd": [["usr/bin/containerd", "--version"], ["usr/bin/ctr", "--version"]]}
# What the shim's daemon imports after the fork, plus the smoke run's own needs.
_IMPORT_CHECK = ("import shim.daemon.serve, shim.commands.doctor, shim.gpu.detect, psutil, yaml; "
                 "print('imports ok: python', __import__('sys').version.split()[0])")


def log(message: str) -> None:
    print(f"offline: {message}", file=sys.stderr, flush=True)


def _manifest(kit: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((kit / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise KitError(f"{kit} is not an offline kit ({MANIFEST}: {e}); make one with scripts/"
                       "gpu-smoke --make-offline-kit DIR on a machine with network") from None
    if manifest.get("format") != FORMAT:
        raise KitError(f"{kit}/{MANIFEST} has format {manifest.get('format')!r}, this "
                       f"checkout reads {FORMAT}: make the kit again with this checkout")
    for entry in [*manifest["debs"], *manifest["wheels"]]:
        path = kit / entry["file"]
        if not path.is_file() or sha256(path) != entry["sha256"]:
            state = "is missing" if not path.is_file() else "does not match its sha256"
            raise KitError(f"{path} {state}: copy the kit again")
    return manifest


def _unpack(kit: Path, entry: dict[str, Any], cache: Path) -> Path:
    target: Path = cache / str(entry["unpack_as"])
    marker = target / ".unpacked"
    if marker.is_file() and marker.read_text().strip() == entry["sha256"]:
        log(f"{entry['package']} {entry['version']}: already unpacked in {target}")
        return target
    partial = cache / f"{entry['unpack_as']}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        extract(kit / entry["file"], partial)
    except DebError as e:
        raise KitError(str(e)) from None
    (partial / ".unpacked").write_text(entry["sha256"] + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    log(f"{entry['package']} {entry['version']}: unpacked into {target}")
    return target


def _run(argv: Sequence[str], what: str, timeout: float = 120, cwd: str = "/") -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                             cwd=cwd, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KitError(f"{what}: {' '.join(argv)}: {e}") from None
    if out.returncode != 0:
        raise KitError(f"{what}: {' '.join(argv)} exited {out.returncode}: "
                       f"{(out.stderr or out.stdout).strip()[-1500:]}")
    return out.stdout.strip()


def _venv_version(venv: Path) -> str:
    try:
        for line in (venv / "pyvenv.cfg").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("version", "version_info"):
                return value.strip()
    except OSError:
        pass
    return ""


def _make_venv(venv: Path) -> Path:
    python = venv / "bin" / "python3"
    mine = ".".join(map(str, sys.version_info[:3]))
    if python.exists() and _venv_version(venv) == mine:
        log(f"reusing {venv} (python {mine})")
        return python
    if venv.exists():
        log(f"{venv} was made by python {_venv_version(venv) or '?'}: making it again")
    venvlib.EnvBuilder(clear=venv.exists(), symlinks=True, with_pip=False).create(venv)
    log(f"made {venv} with {sys.executable} (python {mine})")
    return python


def _pick_set(manifest: dict[str, Any]) -> list[str]:
    """The kit's wheel set for this Python; the nearest older one otherwise
    (pure wheels rarely care), else the oldest."""
    sets: dict[str, list[str]] = manifest["pythons"]
    mine = sys.version_info[:2]

    def key(version: str) -> tuple[int, ...]:
        return tuple(int(x) for x in version.split("."))

    if f"{mine[0]}.{mine[1]}" in sets:
        return sets[f"{mine[0]}.{mine[1]}"]
    older = sorted((v for v in sets if key(v) < mine), key=key)
    chosen = older[-1] if older else min(sets, key=key)
    log(f"the kit has no wheels for python {mine[0]}.{mine[1]}; using those for {chosen}")
    return sets[chosen]


def _module_dir(module: str) -> str | None:
    """The sys.path entry this interpreter imports ``module`` from."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    package_dir = list(spec.submodule_search_locations or [])
    return os.path.dirname(package_dir[0] if package_dir else spec.origin)


def _host_sites(manifest: dict[str, Any]) -> tuple[list[str], set[str]]:
    """This python3's site dirs plus the dirs of the compiled modules it has,
    and the names of the compiled-module wheels it lacks (the kit's fill in)."""
    sites = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        sites.append(site.getusersitepackages())
    sites = [s for s in dict.fromkeys(sites) if os.path.isdir(s)]
    lacking: set[str] = set()
    for entry in manifest["host_modules"]:
        where = _module_dir(entry["module"])
        if where is None:
            lacking.update(entry["wheels"])
            log(f"{sys.executable} has no {entry['module']}: a wheel from the kit is needed")
        elif where not in sites:
            sites.append(where)
    return sites, lacking


def _fits(wheel: str) -> bool:
    return wheel_tags(wheel)[3] == "any" or wheel_tags(wheel)[3].endswith(platform.machine())


def _remove_previous(site_dir: Path) -> None:
    record = site_dir / _RECORD
    if not record.exists():
        return
    for name in record.read_text().split():
        path = site_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _unzip_wheel(wheel: Path, site_dir: Path) -> set[str]:
    """Install one wheel by unzipping it (PEP 427): data under .data/purelib or
    /platlib goes to site-packages; scripts and headers are not needed here."""
    tops: set[str] = set()
    root = site_dir.resolve()
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            parts = info.filename.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            target = (site_dir / "/".join(parts)).resolve()
            if root not in target.parents:
                raise KitError(f"{wheel.name}: {info.filename} leaves site-packages")
            tops.add(parts[0])
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(info))
    return tops


def _install_wheels(kit: Path, manifest: dict[str, Any], site_dir: Path,
                    lacking: set[str]) -> list[str]:
    compiled = {w for entry in manifest["host_modules"] for w in entry["wheels"]}
    chosen = [w for w in _pick_set(manifest) if (w not in compiled or w in lacking) and _fits(w)]
    for entry in manifest["host_modules"]:
        if set(entry["wheels"]) & lacking and not set(entry["wheels"]) & set(chosen):
            raise KitError(
                f"{sys.executable} cannot import {entry['module']} and the kit has no wheel of "
                f"{entry['requirement']} for python {sys.version_info[0]}.{sys.version_info[1]} "
                f"on {platform.machine()}: install it into that python3, or make the kit with "
                f"--python-version {sys.version_info[0]}.{sys.version_info[1]}")
    _remove_previous(site_dir)
    tops: set[str] = set()
    for wheel in chosen:
        tops |= _unzip_wheel(kit / "wheels" / wheel, site_dir)
    (site_dir / _RECORD).write_text("\n".join(sorted(tops)) + "\n")
    return chosen


def _write_launcher(venv: Path, paths: Sequence[str]) -> Path:
    # Same shape as scripts/install-deps' launcher: containerd runs the shim
    # twice per container, so no `site` and no generic console-script wrapper.
    launcher = venv / "bin" / LAUNCHER
    tmp = launcher.with_suffix(".tmp")
    tmp.write_text(f"#!{venv}/bin/python3 -IS\nimport sys\nsys.path[0:0] = {list(paths)!r}\n"
                   "from shim.manager.main import main\nsys.exit(main())\n")
    tmp.chmod(0o755)
    tmp.replace(launcher)
    return launcher


def _self_test(python: Path, launcher: Path, unpacked: dict[str, Path]) -> None:
    log(_run([str(python), "-c", _IMPORT_CHECK], "the shim's imports"))
    log(_run([str(launcher), "version"], "the shim's launcher"))
    for package, target in unpacked.items():
        for rel, *args in _SELF_TESTS.get(package, []):
            first = _run([str(target / rel), *args], f"{package} from the kit").splitlines()
            log(f"{rel}: {first[0] if first else 'ok'}")


def install(kit: Path, repo: Path, cache: Path | None = None) -> dict[str, str]:
    """Install ``kit`` into the checkout ``repo``; returns the environment
    (GVISORGPU_CACHE, GVISORGPU_RUNSC_2024) that points tests/paths.py at it."""
    # The host's python3 is whatever the host has, not what pyproject promises.
    if sys.version_info < (3, 11):  # noqa: UP036
        raise KitError(f"{sys.executable} is Python {sys.version.split()[0]}; the shim needs "
                       "3.11 or newer: name one with GPU_SMOKE_PYTHON")
    manifest = _manifest(kit)
    for entry in manifest["debs"]:
        machine = _MACHINES.get(entry["architecture"], entry["architecture"])
        if entry["architecture"] != "all" and machine != platform.machine():
            raise KitError(f"{entry['file']} is for {entry['architecture']}, this host is "
                           f"{platform.machine()}: make a kit for this architecture")
    cache = (cache or kit / "cache").resolve()
    cache.mkdir(parents=True, exist_ok=True)
    unpacked = {e["package"]: _unpack(kit, e, cache) for e in manifest["debs"]}
    python = _make_venv(repo / ".venv")
    site_dir = Path(_run([str(python), "-c",
                          "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         "the new venv's python"))
    sites, lacking = _host_sites(manifest)
    wheels = _install_wheels(kit, manifest, site_dir, lacking)
    (site_dir / "gvisorgpu-shim.pth").write_text(f"{repo}\n")
    (site_dir / "gvisorgpu-host-site.pth").write_text("".join(f"{s}\n" for s in sites))
    launcher = _write_launcher(repo / ".venv", [str(repo), str(site_dir), *sites])
    # containerd starts the shim per container: compile once rather than every time.
    subprocess.run([str(python), "-m", "compileall", "-q", str(repo / "shim"), str(site_dir)],
                   capture_output=True, timeout=300, check=False)
    _self_test(python, launcher, unpacked)
    env = {"GVISORGPU_CACHE": str(cache)}
    if "runsc" in unpacked:
        env["GVISORGPU_RUNSC_2024"] = str(unpacked["runsc"] / "usr/bin/runsc")
    log(f"installed {len(manifest['debs'])} .deb and {len(wheels)} wheels into {repo}/.venv "
        f"(python {sys.version.split()[0]}); from the host's python3: {', '.join(sites) or '-'}")
    return env
