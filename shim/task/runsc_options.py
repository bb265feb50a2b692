"""runsc's global flags for a sandbox: the one place they are decided.

Create and the ``plan`` command both call :func:`sandbox_options` with the
operator's config, what the probed binary supports and the GPU plan; a pod's
app containers reuse their sandbox's options verbatim except for runsc's own
command log (:func:`member_options`). Every flag is checked against the probe,
so runsc never exits 2 on an unknown flag.
"""

from __future__ import annotations

import os
from dataclasses import replace

from shim.config.model import RuntimeConfig, resolve_network
from shim.gpu.plan import Plan
from shim.oci.layout import PANIC_LOG, RUNSC_LOG
from shim.runsc import FLAG_PANIC_LOG, GlobalOptions, RunscCapabilities, check_flags

__all__ = ["FLAG_OCI_SECCOMP", "member_options", "runsc_log_path", "sandbox_options",
           "seccomp_enforced"]

# runsc loads the OCI spec's seccomp filters inside the sandbox only with this
# (present in every build since 2022).
FLAG_OCI_SECCOMP = "oci-seccomp"


def runsc_log_path(bundle: str) -> str:
    return os.path.join(bundle, RUNSC_LOG)


def sandbox_options(config: RuntimeConfig, caps: RunscCapabilities, plan: Plan, *,
                    namespace: str, container_id: str, bundle: str) -> GlobalOptions:
    """The flags of every runsc call for the sandbox ``container_id`` boots."""
    flags = {**config.runsc_config, **plan.runsc_flags}
    # The planner may pick the platform (systrap for GPU work); it is a typed option.
    platform = flags.pop("platform", None) or config.platform
    if FLAG_OCI_SECCOMP not in flags and caps.has_flag(FLAG_OCI_SECCOMP):
        # Without it runsc ignores every container's seccomp profile. Set at
        # sandbox boot, so the pod's app containers' profiles are enforced too.
        flags[FLAG_OCI_SECCOMP] = "true"
    if FLAG_PANIC_LOG not in flags and caps.has_flag(FLAG_PANIC_LOG):
        # Where a crashing sandbox says why; RunscError reads it back. A
        # panic-log the operator set under [runsc_config] is kept, and read.
        flags[FLAG_PANIC_LOG] = os.path.join(bundle, PANIC_LOG)
    debug_log = config.debug_log
    if config.debug and debug_log is None:
        # `debug = true` alone: runsc's per-command debug logs under the root,
        # one folder per sandbox, outside the sandbox's own runsc state.
        debug_log = os.path.join(config.root, "debug", namespace, container_id) + "/"
    opts = GlobalOptions(
        binary=caps.path,
        # A root of its own per sandbox: runsc resolves ids by prefix, so with
        # `web-1` gone and `web-10` alive in one root, `runsc delete web-1`
        # would find web-10 (DESIGN.md, facts measured here).
        root=os.path.join(config.runsc_root(namespace), container_id),
        log=runsc_log_path(bundle),
        debug=config.debug,
        debug_log=debug_log,
        platform=platform,
        network=resolve_network(config.network, plan.spec),
        extra=flags,
    ).expand_id(container_id)
    check_flags(caps, opts.flag_names())
    return opts


def member_options(sandbox: GlobalOptions, bundle: str) -> GlobalOptions:
    """A pod's app container is driven with its sandbox's flags; only runsc's
    command log is its own. The panic log stays the sandbox's: the sandbox
    process, started with the pause container's flags, is what writes it."""
    return replace(sandbox, log=runsc_log_path(bundle))


def seccomp_enforced(options: GlobalOptions) -> bool:
    return options.extra.get(FLAG_OCI_SECCOMP) == "true"
