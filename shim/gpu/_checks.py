"""Steps that check the request against the installed runsc and the host, and
set the runsc flags. A refusal here stops Create before runsc runs, with a
message in place of runsc's "waiting for sandbox to start: EOF"."""

from __future__ import annotations

from shim.gpu import _oci as oci
from shim.gpu._bound import listing
from shim.gpu._context import Context
from shim.gpu._decide import env_trusted
from shim.gpu.devices import is_mig_node
from shim.gpu.facts import (
    ALLOW_UNSUPPORTED_FLAG,
    CAPS_FLAG,
    DRIVER_VERSION_FLAG,
    GRAPHICS_CAP,
    KVM_WITH_NVPROXY,
    LEGACY_HOOK_AUTODETECT,
    LIST_SUPPORTED_DRIVERS,
    NVPROXY_FLAG,
    VIDEO_CAP,
    driver_triple,
    release_name,
)
from shim.gpu.keys import key
from shim.gpu.request import (
    CAPS_ENV,
    KNOWN_CAPS,
    RUNSC_DEFAULT_CAPS,
    VISIBLE_ENV,
    is_mig_id,
    requested_capabilities,
)

__all__ = [
    "add_nvproxy_flags",
    "check_capabilities",
    "check_driver_supported",
    "check_mig",
    "check_runsc_nvproxy",
    "choose_platform",
]

# Parsed by nvproxy but not served (gvisor-gpu.md §2.3).
_UNSERVED_CAPS = frozenset({"compat32", "display", "ngx"})
_CAP_RELEASES = {"graphics": GRAPHICS_CAP, "video": VIDEO_CAP}
_UPGRADE = "install a newer runsc and point the shim's binary_name at it"


def check_runsc_nvproxy(ctx: Context) -> None:
    if ctx.has_flag("nvproxy"):
        ctx.note("check_runsc_nvproxy", f"{ctx.host.runsc_label()} has --nvproxy")
        return
    ctx.refuse(
        f"it needs nvproxy ({ctx.reason_text}) but {ctx.host.runsc_label()} has no --nvproxy "
        f"flag, which first appeared in {release_name(NVPROXY_FLAG)}",
        f"install runsc {release_name(NVPROXY_FLAG)} or newer and point the shim's "
        "binary_name at it, or run the container without a GPU",
    )


def check_mig(ctx: Context) -> None:
    req = ctx.request
    # An ignored NVIDIA_VISIBLE_DEVICES (a pod author's) is voided, so it asks for nothing.
    found = [f"{VISIBLE_ENV}={i}" for i in req.visible.mig] if env_trusted(ctx) else []
    found += [f"annotation {r.source} requests {r.name}" for r in req.cdi if is_mig_id(r.name.name)]
    found += [str(d.get("path")) for d in oci.devices(ctx.spec) if is_mig_node(str(d.get("path")))]
    found += [f"{name} is set" for name in req.mig_env]
    if not found:
        ctx.note("check_mig", "no MIG request")
        return
    ctx.refuse(
        f"it asks for MIG ({listing(found).replace(', ', '; ')}), and nvproxy has no MIG support",
        "request whole GPUs (an index or GPU-<uuid>), or run MIG workloads with runc",
    )


def _caps_wanted(ctx: Context) -> set[str] | None:
    """The capabilities the container asks for; None after refusing."""
    allowed = ctx.config.allowed_capabilities
    wanted, said_all = requested_capabilities(oci.env_values(ctx.spec, CAPS_ENV), allowed)
    if said_all:
        ctx.note("check_capabilities", f"{CAPS_ENV}=all means the allowed set {sorted(allowed)}")
    unknown, unserved = wanted - KNOWN_CAPS, wanted & _UNSERVED_CAPS
    denied = wanted - allowed - unknown - unserved
    for names, cause, fix, bad_input in (
        (unknown, "names unknown driver capabilities", "use compute, utility, graphics, video",
         True),
        (unserved, "asks for capabilities nvproxy does not serve", "drop them from " + CAPS_ENV,
         False),
        (
            denied,
            "asks for driver capabilities the shim config does not allow",
            f"add them to {key('allowed_capabilities')} in the shim config, or drop them from "
            + CAPS_ENV,
            False,
        ),
    ):
        if names:
            ctx.refuse(f"{CAPS_ENV} {cause}: {listing(sorted(names))}", fix,
                       bad_input=bad_input)
    return None if unknown or unserved or denied else wanted


def _caps_too_new(ctx: Context, wanted: set[str]) -> bool:
    too_new = False
    for cap, release in _CAP_RELEASES.items():
        older = ctx.host.release_before(release)
        if cap in wanted and older:
            too_new = True
            ctx.refuse(
                f"{CAPS_ENV} asks for {cap}, which nvproxy serves from {release_name(release)}; "
                f"{ctx.host.runsc_label()} is older",
                _UPGRADE,
            )
        elif cap in wanted and older is None:
            ctx.warn(f"cannot tell whether {ctx.host.runsc_label()} serves the {cap} capability")
    return too_new


def _caps_to_allow(ctx: Context, wanted: set[str]) -> frozenset[str]:
    """What runsc must allow: the container's own request, except for a pod's
    sandbox, whose seccomp filters are built at boot from the allowed set, so
    it allows everything the shim config does for the containers that follow."""
    if ctx.role.kind == "sandbox":
        return ctx.config.allowed_capabilities & (KNOWN_CAPS - _UNSERVED_CAPS)
    return frozenset(wanted)


def check_capabilities(ctx: Context) -> None:
    """Refuse what runsc would refuse at boot, and pass
    --nvproxy-allowed-driver-capabilities when runsc's default will not do."""
    wanted = _caps_wanted(ctx)
    if wanted is None or _caps_too_new(ctx, wanted):
        return
    allow = _caps_to_allow(ctx, wanted)
    value, extra = ",".join(sorted(allow)), ", ".join(sorted(allow - RUNSC_DEFAULT_CAPS))
    if allow == RUNSC_DEFAULT_CAPS:
        ctx.note("check_capabilities", f"{value}: runsc's default")
    elif ctx.set_flag("nvproxy-allowed-driver-capabilities", value):
        ctx.note("check_capabilities", f"allowing {value}")
    elif not extra:
        ctx.note("check_capabilities", f"{value}: within runsc's default compute,utility")
    elif ctx.role.kind == "sandbox":
        ctx.warn(f"{ctx.host.runsc_label()} cannot allow {extra}; containers asking for it fail")
    else:
        ctx.refuse(
            f"{CAPS_ENV} asks for {extra} but {ctx.host.runsc_label()} has no "
            f"--nvproxy-allowed-driver-capabilities (first in {release_name(CAPS_FLAG)}) and "
            "allows only compute,utility",
            _UPGRADE,
        )


def _forced_driver(ctx: Context, forced: str) -> None:
    if not ctx.set_flag("nvproxy-driver-version", forced):
        ctx.refuse(
            f"the shim config forces {key('driver_version')} = {forced!r} but "
            f"{ctx.host.runsc_label()} "
            f"has no --nvproxy-driver-version (first in {release_name(DRIVER_VERSION_FLAG)})",
            f"remove {key('driver_version')} from the shim config, or {_UPGRADE}",
        )
        return
    supported = ctx.host.supported_drivers or ()
    if forced != "latest" and driver_triple(forced) not in {driver_triple(s) for s in supported}:
        ctx.warn(f"forced driver ABI {forced} is not in runsc's supported list")
    ctx.note("check_driver_supported", f"host driver check skipped: ABI {forced} is forced")


def _escape_hatches(ctx: Context) -> str:
    hatches = []
    if ctx.has_flag("nvproxy-driver-version"):
        hatches.append(
            f"set {key('driver_version')} in the shim config to an ABI-identical supported version "
            "(runsc --nvproxy-driver-version)"
        )
    if ctx.has_flag("nvproxy-allow-unsupported-driver"):
        hatches.append(
            f"set {key('allow_unsupported_driver')} = true (--nvproxy-allow-unsupported-driver)"
        )
    else:
        hatches.append(
            f"runsc {release_name(ALLOW_UNSUPPORTED_FLAG)}+ can start it anyway with "
            "--nvproxy-allow-unsupported-driver"
        )
    return "install a supported driver, or " + ", or ".join(hatches)


def _unsupported(ctx: Context, host: str, supported: tuple[str, ...]) -> None:
    if ctx.config.allow_unsupported_driver and ctx.set_flag(
        "nvproxy-allow-unsupported-driver", "true"
    ):
        ctx.warn(
            f"host driver {host} is not supported by {ctx.host.runsc_label()}; "
            f"starting anyway ({key('allow_unsupported_driver')})"
        )
        return
    ctx.refuse(
        f"the host's NVIDIA driver {host} is not supported by {ctx.host.runsc_label()}, "
        f"which supports {', '.join(supported) or 'no driver'}",
        _escape_hatches(ctx),
    )


def check_driver_supported(ctx: Context) -> None:
    """runsc matches the driver exactly; the mismatch otherwise surfaces only as
    "waiting for sandbox to start: EOF" (gVisor #12773)."""
    host, supported = ctx.host.driver_version, ctx.host.supported_drivers
    if ctx.config.driver_version:
        _forced_driver(ctx, ctx.config.driver_version)
    elif host is None:
        forcing = f", or force an ABI with {key('driver_version')} in the shim config"
        ctx.refuse(
            "it needs nvproxy but no NVIDIA driver is loaded on this host "
            "(/proc/driver/nvidia/version is missing)",
            "install and load the NVIDIA driver"
            + (forcing if ctx.has_flag("nvproxy-driver-version") else ""),
        )
    elif supported is None:
        ctx.warn(
            f"cannot check driver {host}: {ctx.host.runsc_label()} cannot list supported drivers "
            f"(runsc nvproxy list-supported-drivers, {release_name(LIST_SUPPORTED_DRIVERS)}+)"
        )
    elif driver_triple(host) in {driver_triple(s) for s in supported}:
        ctx.note("check_driver_supported", f"host driver {host} is supported")
    else:
        _unsupported(ctx, host, supported)


def _platform(ctx: Context) -> str | None:
    """The platform runsc will use: the config's, else systrap for GPU work when
    the binary knows it and defaults to something else, else the default."""
    configured, default = ctx.config.platform, ctx.host.runsc_default_platform
    known = ctx.host.runsc_platforms
    if configured and not ctx.has_flag("platform"):
        ctx.refuse(f"{ctx.host.runsc_label()} has no --platform flag", f"remove {key('platform')}")
    elif configured and known is not None and configured not in known:
        ctx.refuse(
            f"{ctx.host.runsc_label()} knows no platform {configured!r} "
            f"(it knows {', '.join(sorted(known))})",
            f"set {key('platform')} to one of those",
        )
    elif configured:
        ctx.set_flag("platform", configured)
        return configured
    elif ctx.gpu and default != "systrap" and known and "systrap" in known:
        ctx.set_flag("platform", "systrap")
        return "systrap"
    return default


def choose_platform(ctx: Context) -> None:
    platform = _platform(ctx)
    ctx.note("choose_platform", f"platform {platform or 'unknown (runsc default)'}")
    if not ctx.gpu:
        return
    if platform == "ptrace":
        ctx.warn("nvproxy works on ptrace, but systrap is the tested and faster platform")
    elif platform == "kvm":
        older = ctx.host.release_before(KVM_WITH_NVPROXY)
        if older:
            ctx.refuse(
                f"{ctx.host.runsc_label()} refuses nvproxy on the kvm platform (allowed from "
                f"{release_name(KVM_WITH_NVPROXY)})",
                f'set {key("platform")} = "systrap" in the shim config, or ' + _UPGRADE,
            )
        else:
            ctx.warn("cudaMallocManaged is flaky with nvproxy on kvm (gVisor #11436)")
        if older is None:
            ctx.warn(
                f"cannot tell whether {ctx.host.runsc_label()} accepts nvproxy on kvm "
                f"(it does from {release_name(KVM_WITH_NVPROXY)})"
            )


def add_nvproxy_flags(ctx: Context) -> None:
    """--nvproxy=true for this container's runsc calls (check_runsc_nvproxy has
    refused already when the binary lacks it)."""
    if ctx.set_flag("nvproxy", "true"):
        ctx.note("add_nvproxy_flags", "--nvproxy=true")
    # Older runsc ignores the legacy hook unless told it runs under docker.
    old_hook_path = ctx.mode == "hook" and ctx.host.release_before(LEGACY_HOOK_AUTODETECT)
    if old_hook_path and ctx.set_flag("nvproxy-docker", "true"):
        ctx.note("add_nvproxy_flags", "--nvproxy-docker=true for the legacy hook")
