"""``doctor``: check this host for gVisor GPU containers, with a fix per line.

The GPU and runsc rows are pure checks over ``HostFacts`` (``shim.gpu.doctor``);
this module adds what only IO can tell: whether the platform really runs a
container (a bounded trial, since on some hosts ``--platform=kvm`` spins
forever instead of failing), whether the shim is on containerd's PATH, and
whether containerd's config registers the runtime.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from typing import Any

from shim.about import NAME, RUNTIME
from shim.commands._host import probe_runsc, with_reaper
from shim.config import RuntimeConfig, load_file
from shim.gpu.detect import gather_host_facts
from shim.gpu.doctor import Row, check_host
from shim.runsc import RunscCapabilities

__all__ = ["run_doctor"]

_TRIAL_TIMEOUT = 20.0


def _trial_spec() -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/true"], "cwd": "/", "env": ["PATH=/usr/bin:/bin"],
                    "user": {"uid": 0, "gid": 0}},
        "root": {"path": "/", "readonly": True},
        "hostname": "doctor",
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"},
                                 {"type": "uts"}]},
    }


def platform_trial(caps: RunscCapabilities, platform: str | None) -> Row:
    """Run /bin/true in a sandbox; a hang counts as failure, after a bound."""
    name = platform or caps.default_platform or "default"
    with tempfile.TemporaryDirectory(prefix="gvisorgpu-doctor-") as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(_trial_spec(), f)
        root = os.path.join(tmp, "root")
        argv = [caps.path, f"--root={root}", "--network=none"]
        argv += [f"--platform={platform}"] if platform else []
        proc = subprocess.Popen([*argv, "run", "--bundle", tmp, "doctor-trial"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=_TRIAL_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            subprocess.run([*argv, "delete", "--force", "doctor-trial"], capture_output=True,
                           check=False, timeout=10)
            return Row(f"platform {name}", False,
                       f"a trial container did not finish within {_TRIAL_TIMEOUT:g} s",
                       'use platform = "systrap" (or "ptrace" on old runsc) in the shim config')
    if proc.returncode != 0:
        reason = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return Row(f"platform {name}", False, f"trial run failed: {reason[0]}",
                   'pick another platform with `platform = ...` in the shim config')
    return Row(f"platform {name}", True, "a trial container ran /bin/true")


def _runtimes(config: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    plugins = config.get("plugins") or {}
    for plugin in ("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"):
        runtimes = ((plugins.get(plugin) or {}).get("containerd") or {}).get("runtimes") or {}
        yield from runtimes.items()


def containerd_rows(path: str) -> list[Row]:
    rows = []
    on_path = shutil.which(NAME)
    rows.append(Row("shim on PATH", bool(on_path), on_path or f"{NAME} not found",
                    "" if on_path else "put the shim on containerd's PATH, or set runtime_path"))
    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except FileNotFoundError:
        return [*rows, Row("containerd config", False, f"{path} does not exist",
                           "see scripts/kubernetes/ for the config fragment")]
    except (OSError, tomllib.TOMLDecodeError) as e:
        return [*rows, Row("containerd config", False, f"{path}: {e}", "fix the TOML syntax")]
    handlers = [name for name, rt in _runtimes(config) if rt.get("runtime_type") == RUNTIME]
    if handlers:
        return [*rows, Row("containerd runtime", True, f"handler(s) {', '.join(handlers)}")]
    return [*rows, Row("containerd runtime", False,
                       f"no CRI runtime with runtime_type = {RUNTIME!r} in {path}",
                       "add the runtime fragment from the README to containerd's config")]


def _print(rows: list[Row]) -> None:
    width = max(len(r.check) for r in rows)
    for r in rows:
        print(f"{'ok  ' if r.ok else 'FAIL'}  {r.check:<{width}}  {r.detail}")
        if not r.ok and r.fix:
            print(f"      {'':<{width}}  fix: {r.fix}")


def run_doctor(args: argparse.Namespace) -> int:
    config = load_file(args.config) if args.config else RuntimeConfig()
    caps = with_reaper(lambda reaper: probe_runsc(config.binary_name, reaper))
    host = gather_host_facts(caps, config.gpu.cdi_dirs)
    rows = check_host(host, config.gpu)
    rows.append(platform_trial(caps, config.platform))
    rows += containerd_rows(args.containerd_config or "/etc/containerd/config.toml")
    _print(rows)
    return 0 if all(r.ok for r in rows) else 1
