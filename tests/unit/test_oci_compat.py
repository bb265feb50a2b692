"""shim.oci.compat: what a gVisor sandbox cannot give is refused before runsc runs."""

from __future__ import annotations

from typing import Any

import pytest

from shim.oci.compat import unsupported

NS = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")]
NO_IPC = [ns for ns in NS if ns["type"] != "ipc"]


@pytest.mark.parametrize(("linux", "pod_sandbox", "causes"), [
    ({"namespaces": NS}, True, []),
    ({"namespaces": NS, "rootfsPropagation": "rslave"}, False, []),
    ({"namespaces": NS, "rootfsPropagation": "rshared"}, False, ["rootfsPropagation 'rshared'"]),
    ({"namespaces": NS, "rootfsPropagation": "shared"}, True, ["rootfsPropagation 'shared'"]),
    ({"namespaces": NO_IPC}, True, ["host's IPC namespace"]),
    # Only a pod says hostIPC this way; a bare spec without one is left to runsc.
    ({"namespaces": NO_IPC}, False, []),
    ({"namespaces": NO_IPC, "rootfsPropagation": "rshared"}, True,
     ["rootfsPropagation", "host's IPC namespace"]),
])
def test_unsupported(linux: dict[str, Any], pod_sandbox: bool, causes: list[str]) -> None:
    found = unsupported({"linux": linux}, pod_sandbox=pod_sandbox)
    assert len(found) == len(causes)
    for (cause, fix), expected in zip(found, causes, strict=True):
        assert expected in cause and fix
