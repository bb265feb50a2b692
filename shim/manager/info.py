"""The ``-info`` action (containerd 2.0+): what this shim is and what the runsc
it would drive supports, as a ``containerd.types.RuntimeInfo`` on stdout.

containerd sends the runtime options on stdin, as it does for ``start``; they
name the runtime config, and so the runsc binary to ask. Not on any
container's critical path (``ctr plugins inspect-runtime``; CRI introspects
runtimes at start-up), so it may import what it needs.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from betterproto.lib.google.protobuf import Any as AnyMessage

from shim.about import NAME, VERSION
from shim.api.containerd.types import RuntimeInfo, RuntimeVersion
from shim.commands._host import with_reaper
from shim.config.options import load_config
from shim.daemon.reaper import Reaper
from shim.errors import ShimError
from shim.protowire import WireFormatError, strict_parse
from shim.runsc import ProbeCache, features, probe

__all__ = ["FEATURES_TYPE", "info_action", "runtime_info"]

FEATURES_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"


def runtime_info(options: AnyMessage | None) -> RuntimeInfo:
    config = load_config(options)

    async def ask(reaper: Reaper) -> tuple[dict[str, Any], str]:
        caps = await probe(config.binary_name, reaper, ProbeCache())
        if "features" in caps.subcommands:
            # runsc's own answer (release-20260511.0 and later).
            done = await reaper.run([caps.path, "features"], timeout=30)
            if done.returncode == 0:
                return dict(json.loads(done.stdout)), caps.version
        return features(caps, caps.spec_version), caps.version

    doc, runsc_version = with_reaper(ask)
    doc["annotations"] = {**(doc.get("annotations") or {}),
                          "dev.gvisor.runsc.version": runsc_version}
    return RuntimeInfo(
        name=NAME, version=RuntimeVersion(version=VERSION), options=options or AnyMessage(),
        features=AnyMessage(type_url=FEATURES_TYPE, value=json.dumps(doc).encode()))


def info_action() -> int:
    data = b"" if sys.stdin.isatty() else sys.stdin.buffer.read()
    try:
        info = runtime_info(strict_parse(AnyMessage(), data) if data else None)
    except (ShimError, WireFormatError, ValueError) as e:
        sys.stderr.write(f"{NAME} -info: {e}\n")
        return 1
    sys.stdout.buffer.write(bytes(info))
    sys.stdout.flush()
    return 0
