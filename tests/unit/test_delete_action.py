"""The delete action's runsc step, against a runsc root laid out as runsc lays
it out and a stand-in runsc that records being called."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shim.manager import delete
from shim.oci.layout import STATE_FILE


def _bundle(tmp_path: Path, files: list[str]) -> tuple[Path, Path, Path]:
    root = tmp_path / "runsc-root"
    root.mkdir()
    for name in files:
        (root / name).write_text("")
    calls = tmp_path / "calls"
    runsc = tmp_path / "runsc"
    runsc.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    runsc.chmod(0o755)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    state = {"root": str(root), "binary": str(runsc), "args": []}
    (bundle / STATE_FILE).write_text(json.dumps(state))
    return bundle, root, calls


def test_a_lock_file_alone_is_not_state(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # What a second `runsc delete` leaves when the first already deleted the
    # container: calling runsc again would race the daemon's own delete.
    bundle, root, calls = _bundle(tmp_path, ["app_sandbox:pod.lock"])
    delete._runsc_delete(str(bundle), "app")
    assert not calls.exists()
    assert not root.exists()
    assert capfd.readouterr().err == ""


def test_state_of_exactly_this_id_is_deleted(tmp_path: Path) -> None:
    bundle, root, calls = _bundle(tmp_path, ["app_sandbox:pod.state", "app_sandbox:pod.lock",
                                             "app-10_sandbox:pod.state"])
    delete._runsc_delete(str(bundle), "app")
    assert calls.read_text().split() == ["delete", "--force", "app"]
    assert root.exists()  # runsc here removes nothing; app-10 still lives in it


@pytest.mark.parametrize("files", [["app-10_sandbox:pod.state"], ["app-10_sandbox:pod.lock"]])
def test_another_containers_files_are_left_alone(tmp_path: Path, files: list[str]) -> None:
    bundle, root, calls = _bundle(tmp_path, files)
    delete._runsc_delete(str(bundle), "app")
    assert not calls.exists()
    assert sorted(os.listdir(root)) == files


def test_a_lock_left_by_a_racing_delete_is_removed(tmp_path: Path) -> None:
    # The daemon deletes the container while this runsc looks it up: runsc
    # re-creates the lock, finds no state and fails, leaving the lock.
    bundle, root, _ = _bundle(tmp_path, ["app_sandbox:pod.state", "app_sandbox:pod.lock"])
    Path(tmp_path / "runsc").write_text(
        f'#!/bin/sh\nrm "{root}/app_sandbox:pod.state"\n'
        'echo "container not found" >&2\nexit 1\n')
    delete._runsc_delete(str(bundle), "app")
    assert not root.exists()
