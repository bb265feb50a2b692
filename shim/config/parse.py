"""The runtime config file: TOML in the shape of gVisor's runsc.toml, validated.

Every refusal names the key, what is wrong with it and the fix; an unknown key
gets the closest known one. ``[runsc_config]`` entries that have a typed
meaning here (debug, debug-log, platform, network, nvproxy,
nvproxy-driver-version, nvproxy-allowed-driver-capabilities) are folded into
the typed fields, so ``nvproxy = "true"`` there is ``nvproxy = "always"`` and
the GPU planner stays the only place that adds --nvproxy.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any, get_args

from shim.config.model import (
    DRIVER_CAPABILITIES,
    LOG_LEVELS,
    NETWORK_MODES,
    PLATFORMS,
    SECCOMP_MODES,
    Network,
    RuntimeConfig,
)
from shim.errors import InvalidArgument
from shim.gpu.config import GpuConfig, NvproxyPolicy

__all__ = ["load_body", "load_file", "parse_mapping"]

log = logging.getLogger(__name__)

# containerd-shim-runsc-v1 keys that have no meaning in this shim.
_GVISOR_ONLY = ("shim_cgroup", "io_uid", "io_gid", "grouping", "enable_hibernate_server")
# runsc flags the shim sets itself on every call.
_SHIM_OWNED_FLAGS = {
    "root": "the top-level `root` key instead",
    "log": "the shim writes runsc's log into the bundle",
    "log-format": "the shim reads runsc's log as json",
}
_FLAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_DRIVER_VERSION = re.compile(r"(\d+\.\d+(\.\d+)?|latest)\Z")
_CDI_VENDOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*\Z")


def load_file(path: str) -> RuntimeConfig:
    try:
        with open(path, "rb") as f:
            text = f.read().decode()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidArgument(
            f"cannot read runtime config {path}: {getattr(e, 'strerror', None) or e}; "
            "check ConfigPath in containerd's runtime options"
        ) from None
    return load_body(text, source=path)


def load_body(text: str, *, source: str = "<options config_body>",
              cri_table: bool = False) -> RuntimeConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"runtime config {source} is not valid TOML: {e}") from None
    if cri_table:
        # CRI marshals the runtime's whole `options` table, its own keys included.
        data = {k: v for k, v in data.items() if k not in ("TypeUrl", "ConfigPath")}
    return parse_mapping(data, source)


# --------------------------------------------------------------------------- parsing

Validator = Callable[[str, Any, str], Any]


def _refuse(source: str, key: str, problem: str, fix: str) -> InvalidArgument:
    return InvalidArgument(f"runtime config {source}: `{key}` {problem}; {fix}")


def _string(key: str, value: Any, source: str) -> str:
    if not isinstance(value, str) or not value:
        raise _refuse(source, key, f"must be a non-empty string, not {value!r}",
                      f'write it as {key} = "..."')
    return value


def _abs_path(key: str, value: Any, source: str) -> str:
    path = _string(key, value, source)
    if not os.path.isabs(path):
        raise _refuse(source, key, f"must be an absolute path, not {path!r}",
                      "give the full path starting with /")
    return path


def _binary(key: str, value: Any, source: str) -> str:
    name = _string(key, value, source)
    if os.sep in name and not os.path.isabs(name):
        raise _refuse(source, key, f"must be a bare name (looked up on PATH) or an absolute "
                      f"path, not {name!r}", "give the full path starting with /")
    return name


def _choice(choices: tuple[str, ...]) -> Validator:
    def check(key: str, value: Any, source: str) -> str:
        if value not in choices:
            raise _refuse(source, key, f"is {value!r}",
                          "use one of " + ", ".join(f'"{c}"' for c in choices))
        return str(value)
    return check


def _bool(key: str, value: Any, source: str) -> bool:
    if not isinstance(value, bool):
        raise _refuse(source, key, f"must be true or false, not {value!r}",
                      f"write {key} = true (no quotes)")
    return value


def _flag_bool(key: str, value: Any, source: str) -> bool:
    if value not in ("true", "false"):
        raise _refuse(source, key, f"is {value!r}", 'use "true" or "false"')
    return bool(value == "true")


def _flag_nvproxy(key: str, value: Any, source: str) -> NvproxyPolicy:
    # runsc's own switch, in gVisor's runsc.toml style: on for every sandbox.
    return "always" if _flag_bool(key, value, source) else "never"


def _driver_version(key: str, value: Any, source: str) -> str:
    version = _string(key, value, source)
    if not _DRIVER_VERSION.match(version):
        raise _refuse(source, key, f"is {version!r}",
                      'give an NVIDIA driver ABI version like "550.90.07" or "latest"')
    return version


def _string_list(key: str, value: Any, source: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _refuse(source, key, f"must be a list of strings, not {value!r}",
                      f'write it as {key} = ["...", "..."]')
    return list(value)


def _capabilities(key: str, value: Any, source: str) -> frozenset[str]:
    caps = _string_list(key, value, source)
    bad = [c for c in caps if c not in DRIVER_CAPABILITIES]
    if bad or not caps:
        problem = f"names unknown driver capabilities {bad!r}" if bad else "is empty"
        raise _refuse(source, key, problem, "use some of " + ", ".join(DRIVER_CAPABILITIES))
    return frozenset(caps)


def _flag_capabilities(key: str, value: Any, source: str) -> frozenset[str]:
    # runsc's own spelling: one comma-separated string.
    return _capabilities(key, [c.strip() for c in str(value).split(",")], source)


def _abs_path_list(key: str, value: Any, source: str) -> tuple[str, ...]:
    return tuple(_abs_path(key, v, source) for v in _string_list(key, value, source))


def _vendors(key: str, value: Any, source: str) -> frozenset[str]:
    vendors = _string_list(key, value, source)
    bad = [v for v in vendors if not _CDI_VENDOR.match(v)]
    if bad:
        raise _refuse(source, key, f"has invalid CDI vendor names {bad!r}",
                      'use vendor names as in CDI kinds, like "nvidia.com"')
    return frozenset(vendors)


def _cdi_kind(key: str, value: Any, source: str) -> str:
    kind = _string(key, value, source)
    vendor, slash, klass = kind.partition("/")
    if not slash or not _CDI_VENDOR.match(vendor) or not klass:
        raise _refuse(source, key, f"= {kind!r} is not a CDI kind",
                      'write it as vendor/class, like "nvidia.com/gpu"')
    return kind


# key -> (RuntimeConfig / GpuConfig field, validator)
_KEYS: dict[str, tuple[str, Validator]] = {
    "binary_name": ("binary_name", _binary),
    "root": ("root", _abs_path),
    "gvisorRoot": ("root", _abs_path),  # worker-pool alias
    "log_level": ("log_level", _choice(LOG_LEVELS)),
    "log_path": ("log_path", _abs_path),
    "debug": ("debug", _bool),
    "seccomp": ("seccomp", _choice(SECCOMP_MODES)),
    "network": ("network", _choice(NETWORK_MODES)),
    "platform": ("platform", _choice(PLATFORMS)),
    "gvisorPlatform": ("platform", _choice(PLATFORMS)),  # worker-pool alias
    "nvproxy": ("nvproxy", _choice(get_args(NvproxyPolicy))),
    "nvproxy_driver_version": ("driver_version", _driver_version),
    "nvproxy_allowed_capabilities": ("allowed_capabilities", _capabilities),
    "cdi_spec_dirs": ("cdi_dirs", _abs_path_list),
    "cdi_vendors": ("cdi_vendors", _vendors),
    "cdi_default_kind": ("cdi_default_kind", _cdi_kind),
    "pod_resources_socket": ("pod_resources_socket", _abs_path),
    "accept_visible_devices_env": ("accept_visible_devices_env", _bool),
    "accept_visible_devices_env_in_pods": ("accept_visible_devices_env_in_pods", _bool),
    "accept_pod_nvproxy_annotation": ("accept_pod_nvproxy_annotation", _bool),
    "nvproxy_allow_unsupported_driver": ("allow_unsupported_driver", _bool),
}
# [runsc_config] flags that are typed settings here.
_FLAG_KEYS: dict[str, tuple[str, Validator]] = {
    "debug": ("debug", _flag_bool),
    "debug-log": ("debug_log", _abs_path),
    "platform": ("platform", _choice(PLATFORMS)),
    "network": ("network", _choice(get_args(Network))),
    "nvproxy": ("nvproxy", _flag_nvproxy),
    "nvproxy-driver-version": ("driver_version", _driver_version),
    "nvproxy-allowed-driver-capabilities": ("allowed_capabilities", _flag_capabilities),
}
_GPU_FIELDS = ("nvproxy", "driver_version", "allowed_capabilities", "cdi_dirs", "cdi_vendors",
               "cdi_default_kind", "accept_visible_devices_env",
               "accept_visible_devices_env_in_pods", "accept_pod_nvproxy_annotation",
               "allow_unsupported_driver")


def _unknown_key(key: str, source: str) -> InvalidArgument:
    if key in _GVISOR_ONLY:
        return _refuse(source, key, "is a containerd-shim-runsc-v1 setting this shim does not "
                       "support", "remove it")
    close = difflib.get_close_matches(key, [*_KEYS, "runsc_config"], n=1)
    fix = f"did you mean `{close[0]}`?" if close else "known keys: " + ", ".join(
        sorted([*_KEYS, "runsc_config"]))
    return _refuse(source, key, "is not a known key", fix)


def _flag_value(key: str, value: Any, source: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise _refuse(source, key, f"must be a string, not {value!r}",
                  'runsc flags are written name = "value"')


def parse_mapping(data: Mapping[str, Any], source: str) -> RuntimeConfig:
    """Validate a parsed TOML document; every refusal names the key and the fix."""
    values: dict[str, tuple[Any, str]] = {}  # field -> (value, key that set it)

    def put(fieldname: str, value: Any, key: str) -> None:
        prev = values.get(fieldname)
        if prev is not None and prev[0] != value:
            raise _refuse(source, key, f"= {value!r} contradicts `{prev[1]}` = {prev[0]!r}",
                          "keep only one of them")
        values[fieldname] = (value, key)

    for key, value in data.items():
        if key == "runsc_config":
            continue
        if key not in _KEYS:
            raise _unknown_key(key, source)
        fieldname, check = _KEYS[key]
        put(fieldname, check(key, value, source), key)

    flags: dict[str, str] = {}
    table = data.get("runsc_config", {})
    if not isinstance(table, dict):
        raise _refuse(source, "runsc_config", "must be a table", "write it as [runsc_config]")
    for name, raw in table.items():
        key = f"runsc_config.{name}"
        if name.startswith("-") or not _FLAG_NAME.match(name):
            raise _refuse(source, key, "is not a runsc flag name",
                          "write the flag without leading dashes, e.g. debug-log = \"...\"")
        if name in _SHIM_OWNED_FLAGS:
            raise _refuse(source, key, "is set by the shim",
                          f"remove it ({_SHIM_OWNED_FLAGS[name]})")
        value = _flag_value(key, raw, source)
        if name in _FLAG_KEYS:
            fieldname, check = _FLAG_KEYS[name]
            put(fieldname, check(key, value, source), key)
        else:
            flags[name] = value

    given = {name: value for name, (value, _) in values.items()}
    gpu = GpuConfig(platform=given.get("platform"),
                    **{k: given[k] for k in _GPU_FIELDS if k in given})
    top = {k: v for k, v in given.items() if k not in _GPU_FIELDS}
    warnings: list[str] = []
    if os.path.basename(given.get("binary_name", "")).startswith("nvidia-container-runtime"):
        warnings.append("binary_name is nvidia-container-runtime: this shim sets up GPUs "
                        "itself (nvproxy, CDI) and expects runsc there")
    for w in warnings:
        log.warning("%s: %s", source, w)
    return RuntimeConfig(runsc_config=flags, gpu=gpu, source=source, warnings=tuple(warnings),
                         **top)
