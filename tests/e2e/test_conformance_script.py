"""scripts/conformance: critest for runc and for this shim, on a private containerd.

Its helpers are checked as functions; the whole script runs only where
critest and its tools are (CRITEST_DIR, or critest on PATH), on a few specs:
it must report both handlers, exit 0 when they agree, and leave nothing
behind, also when stopped with SIGTERM in the middle of a critest run.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest

from tests import paths
from tests.e2e import containerd as cd
from tests.e2e import leftovers
from tests.scripts import interrupt_when

SCRIPT = paths.REPO / "scripts/conformance"
PYTHON = paths.REPO / ".venv/bin/python"
RUN_TIMEOUT = 900
CREATE = "runtime should support creating container"


def _load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("conformance", str(SCRIPT))
    spec = importlib.util.spec_from_loader("conformance", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


conf = _load()


# --- helpers -------------------------------------------------------------------

def test_hosts_point_every_registry_at_the_local_one(tmp_path: Path) -> None:
    conf.write_hosts(tmp_path, "127.0.0.1:5000")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "_default", "docker.io", "gcr.io", "registry.k8s.io"]
    for folder in tmp_path.iterdir():
        hosts = tomllib.loads((folder / "hosts.toml").read_text())
        assert hosts == {"server": "http://127.0.0.1:5000", "host": {
            "http://127.0.0.1:5000": {"capabilities": ["pull", "resolve"]}}}


@pytest.mark.parametrize(("files", "error"), [
    ([], "critest is missing in"),
    (["critest", "minireg.py"], "critest_images.py is missing in"),
])
def test_find_tools_names_what_is_missing(tmp_path: Path, files: list[str], error: str) -> None:
    for name in files:
        (tmp_path / name).write_text("")
    with pytest.raises(FileNotFoundError, match=error):
        conf.find_tools(tmp_path)


def test_find_tools_without_a_folder_says_where_it_looked(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CRITEST_DIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pass --critest-dir DIR"):
        conf.find_tools(None)


@pytest.mark.parametrize(("argv", "error"), [
    (["--containerd", "1.5"], "--containerd 1.5: not one of 1.6, 1.7, 2.1"),
    (["--handler", "runsc"], "--handler runsc: not one of runc, gvisorgpu"),
    (["--runsc-config", "oci-seccomp"], "--runsc-config oci-seccomp: give it as FLAG=VALUE"),
])
def test_bad_options_are_refused_by_name(argv: list[str], error: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        conf.parse_args(argv)
    assert error in capsys.readouterr().err


def test_runsc_config_adds_flags_to_the_handler_defaults() -> None:
    args = conf.parse_args(["--runsc-config", "oci-seccomp=true", "--runsc-config",
                            "platform=ptrace"])
    assert conf.runtime_config(args) == {"runsc_config": {
        "network": "host", "platform": "ptrace", "oci-seccomp": "true"}}


def test_follow_copies_the_log_and_prints_one_line_per_spec(
        capsys: pytest.CaptureFixture[str]) -> None:
    output = [
        "------------------------------\n", "[k8s.io] A spec that passes\n",
        "sigs.k8s.io/cri-tools/pkg/validate/container.go:81\n", "• [0.646 seconds]\n",
        "------------------------------\n", "[k8s.io] A spec that fails\n",
        "  STEP: something\n", "• [FAILED] [90.012 seconds]\n",
    ]
    log = io.StringIO()
    conf._follow(iter(output), log, "gvisorgpu")
    assert log.getvalue() == "".join(output)
    assert capsys.readouterr().err.splitlines() == [
        "  gvisorgpu: passed      0.646s  [k8s.io] A spec that passes",
        "  gvisorgpu: failed     90.012s  [k8s.io] A spec that fails"]


def test_leftovers_are_counted_by_kind() -> None:
    items = ["cri pod 63b7a1", "cri pod 24e828", "containerd task 1c3919",
             "runsc state: /tmp/gcf-x/runsc/k8s.io/a/b.lock", "mount: /tmp/gcf-x/m",
             "process 1076: runsc-sandbox --root=/tmp", "IP lease /tmp/x/10.213.0.81",
             "link veth9f1aacf6"]
    assert conf.count_kinds(items) == (
        "2 cri pod, 1 containerd task, 1 runsc state, 1 mount, 1 process, 1 IP lease, 1 link")


# --- the whole script ----------------------------------------------------------

def _critest_dir() -> Path | None:
    if os.environ.get("CRITEST_DIR"):
        return Path(os.environ["CRITEST_DIR"])
    found = shutil.which("critest")
    return Path(found).resolve().parent if found else None


def _requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if _critest_dir() is None:
        return "critest is not available (set CRITEST_DIR or put critest on PATH)"
    if cd.missing_for("2.1"):
        return cd.missing_for("2.1")
    if paths.RUNSC_2024 is None or not paths.SHIM.exists():
        return "runsc 20240729 or the shim is not installed (run scripts/install-deps)"
    return None


def _argv(report: Path, *extra: str) -> list[str]:
    return [str(PYTHON), "-u", str(SCRIPT), "--critest-dir", str(_critest_dir()),
            "--containerd", "2.1", "--json", str(report), *extra]


def _assert_nothing_left(summary: dict[str, Any]) -> None:
    workdir = summary["workdir"]
    assert workdir.startswith("/tmp/gcf-") and not Path(workdir).exists(), workdir
    assert leftovers.mounts_under(Path(workdir)) == []
    naming = [p.pid for p in psutil.process_iter(["cmdline"])
              if workdir in " ".join(p.info["cmdline"] or [])]
    assert naming == []
    for version in summary["versions"]:
        assert version["left_behind"] == []


@pytest.mark.e2e
def test_script_compares_both_handlers_and_cleans_up(tmp_path: Path) -> None:
    why = _requirements()
    if why:
        pytest.skip(why)
    report = tmp_path / "out.json"
    out = subprocess.run(_argv(report, "--focus", CREATE), capture_output=True, text=True,
                         timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    summary = json.loads(report.read_text())
    [version] = summary["versions"]
    comparison = version["comparison"]
    assert comparison["totals"] == {h: {"passed": 1, "failed": 0, "skipped": 0}
                                    for h in ("runc", "gvisorgpu")}
    [row] = [s for s in comparison["specs"] if CREATE in s["name"]]
    assert {h: r["state"] for h, r in row["results"].items()} == {
        "runc": "passed", "gvisorgpu": "passed"}
    assert "passed    passed     [k8s.io] Container runtime" in out.stdout
    assert "passes with runc, not with gvisorgpu (0):" in out.stdout
    _assert_nothing_left(summary)


@pytest.mark.e2e
def test_sigterm_during_critest_stops_everything(tmp_path: Path) -> None:
    why = _requirements()
    if why:
        pytest.skip(why)
    report = tmp_path / "out.json"
    # critest is in the middle of its specs when runc's first result shows.
    code, output = interrupt_when(_argv(report, "--focus", "basic operations on container"),
                                  "  runc: passed", signal.SIGTERM, RUN_TIMEOUT)
    assert code == 130, output[-4000:]
    assert "conformance: interrupted" in output
    summary = json.loads(report.read_text())
    assert summary["interrupted"] and summary["exit_code"] == 130
    _assert_nothing_left(summary)
