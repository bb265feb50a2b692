"""The OCI runtime "features" of a runsc binary (runtime-spec features.md), as
containerd 2.x asks a shim for them (``-info``).

runsc has its own ``runsc features`` from release-20260511.0; for older builds
the answer is built from what the probe found and from measured behaviour,
reporting only what is known: a field left out means "not known", which is
what the spec says an absent field means, rather than a guess.
"""

from __future__ import annotations

from typing import Any

from shim.runsc._probe import RunscCapabilities

__all__ = ["CREATE_CONTAINER_HOOKS", "features"]

OCI_VERSION_MIN = "1.0.0"
# runsc runs prestart, createRuntime, poststart and poststop hooks and skips
# the others (checked with the 20221219 and 20240729 builds: a bundle with one
# hook of each kind); createContainer hooks run from release-20260520.0.
_HOOKS = ["prestart", "createRuntime", "poststart", "poststop"]
CREATE_CONTAINER_HOOKS = 20260520
# The namespaces a sandbox emulates for its containers.
_NAMESPACES = ["ipc", "mount", "network", "pid", "uts"]


def features(caps: RunscCapabilities, spec_version: str | None) -> dict[str, Any]:
    """The features document for ``caps`` (a runsc without ``runsc features``)."""
    hooks = list(_HOOKS)
    if caps.release is not None and caps.release >= CREATE_CONTAINER_HOOKS:
        hooks.insert(2, "createContainer")
    doc: dict[str, Any] = {
        "ociVersionMin": OCI_VERSION_MIN,
        "hooks": hooks,
        "linux": {
            "namespaces": _NAMESPACES,
            "seccomp": {"enabled": caps.has_flag("oci-seccomp")},
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
    }
    if spec_version:
        doc["ociVersionMax"] = spec_version
    return doc
