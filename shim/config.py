"""Runtime configuration: containerd's options ``Any`` and a runsc.toml-style file.

How options arrive (shim-protocol.md §5): ``CreateTaskRequest.options`` is a
``google.protobuf.Any``. CRI sends ``runtimeoptions.v1.Options`` (type_url=1,
config_path=2, config_body=3) for every runtime_type but runc's, and puts the
whole ``options`` TOML table into config_body when ConfigPath is empty; ``ctr
--runtime-config-path`` sends config_path. A runc ``Options`` may also come
(``nvidia-ctk runtime configure`` writes one); its fields are ignored with a
warning, since they would not mean the same thing here.

The file has the shape of gVisor's runsc.toml (``binary_name``, ``root``,
``log_level``, ``log_path``, ``[runsc_config]``) plus our keys. ``network``
defaults to ``auto`` (see :func:`resolve_network`). ``[runsc_config]`` entries
that have a typed meaning here (debug, debug-log, platform, network, nvproxy,
nvproxy-driver-version, nvproxy-allowed-driver-capabilities) are folded into
the typed fields, so ``nvproxy = "true"`` there is ``nvproxy = "always"`` and
the GPU planner stays the only place that adds --nvproxy.

The options are decoded by hand (a dozen lines) to keep betterproto, which
costs ~160 ms to import, off this path.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

from shim.errors import InvalidArgument
from shim.gpu.config import GpuConfig, NvproxyPolicy
from shim.runsc import NETWORKS, GlobalOptions, Network

__all__ = [
    "NetworkMode",
    "RuntimeConfig",
    "load_body",
    "load_config",
    "load_file",
    "parse_mapping",
    "resolve_network",
]

log = logging.getLogger(__name__)

NetworkMode = Literal["auto", "none", "host", "sandbox"]
DEFAULT_ROOT = "/run/containerd/runsc"
LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal", "panic")
PLATFORMS = ("systrap", "ptrace", "kvm")
# NVIDIA_DRIVER_CAPABILITIES values (nvidia-container-toolkit) plus "all".
DRIVER_CAPABILITIES = ("compute", "utility", "graphics", "video", "display", "compat32",
                       "ngx", "all")
RUNTIME_OPTIONS_TYPE = "runtimeoptions.v1.Options"
RUNC_OPTIONS_TYPE = "containerd.runc.v1.Options"
# containerd.runc.v1.Options field numbers (api/types/runc/options/oci.proto).
_RUNC_FIELDS = {1: "NoPivotRoot", 2: "NoNewKeyring", 3: "ShimCgroup", 4: "IoUid", 5: "IoGid",
                6: "BinaryName", 7: "Root", 8: "CriuPath", 9: "SystemdCgroup",
                10: "CriuImagePath", 11: "CriuWorkPath", 12: "TaskApiAddress",
                13: "TaskApiVersion"}
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


@dataclass(frozen=True)
class RuntimeConfig:
    """Everything the operator decided, validated; defaults when nothing was sent."""

    binary_name: str = "runsc"  # bare names are looked up on PATH (runsc.resolve_binary)
    root: str = DEFAULT_ROOT  # the caller appends /<containerd namespace>
    log_level: str = "info"
    log_path: str | None = None  # shim log; %ID% expands, a trailing "/" means a directory
    debug: bool = False  # runsc --debug
    debug_log: str | None = None  # runsc --debug-log
    network: NetworkMode = "auto"
    platform: str | None = None  # None: the binary's default
    runsc_config: Mapping[str, str] = field(default_factory=dict)  # other global flags
    gpu: GpuConfig = field(default_factory=GpuConfig)
    # The kubelet's PodResources socket, asked which GPUs a pod was given.
    pod_resources_socket: str = "/var/lib/kubelet/pod-resources/kubelet.sock"
    source: str = "<defaults>"
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def runsc_root(self, namespace: str) -> str:
        return os.path.join(self.root, namespace)

    def shim_log_path(self, container_id: str) -> str | None:
        if self.log_path is None:
            return None
        path = self.log_path.replace("%ID%", container_id)
        return os.path.join(path, f"gvisorgpu-shim-{container_id}.log") if path.endswith(
            "/") else path

    def global_options(self, *, namespace: str, network: Network, log: str | None,
                       extra: Mapping[str, str] | None = None) -> GlobalOptions:
        """runsc's global flags for one sandbox; ``extra`` is e.g. the GPU plan's."""
        return GlobalOptions(
            binary=self.binary_name,
            root=self.runsc_root(namespace),
            log=log,
            debug=self.debug,
            debug_log=self.debug_log,
            platform=self.platform,
            network=network,
            extra={**self.runsc_config, **(extra or {})},
        )


def resolve_network(mode: NetworkMode, spec: Mapping[str, Any]) -> Network:
    """``auto``: follow the OCI spec's network namespace.

    No network namespace → the host's (``host``); a namespace given by path
    (CNI, a pod) → runsc's own stack inside it (``sandbox``); a fresh empty
    namespace → ``none``, which gives the same loopback-only view without
    runsc's root-netns check, which misfires on some kernels (DESIGN.md).
    Resolve it once from the sandbox's spec and reuse it for its containers.
    """
    if mode != "auto":
        return mode
    namespaces = (spec.get("linux") or {}).get("namespaces") or []
    netns = next((ns for ns in namespaces if ns.get("type") == "network"), None)
    if netns is None:
        return "host"
    return "sandbox" if netns.get("path") else "none"


# --------------------------------------------------------------------------- loading


class _AnyLike(Protocol):
    type_url: str
    value: bytes


def load_config(options: bytes | _AnyLike | None) -> RuntimeConfig:
    """Config from ``CreateTaskRequest.options`` (serialized Any, or an Any object)."""
    if options is None:
        return RuntimeConfig()
    if isinstance(options, bytes | bytearray | memoryview):
        fields = _pb_fields(bytes(options), "options Any")
        type_url, value = _pb_str(fields, 1), _pb_bytes(fields, 2)
    else:
        type_url, value = options.type_url, bytes(options.value)
    name = type_url.rsplit("/", 1)[-1]
    if not name and not value:
        return RuntimeConfig()
    # containerd's typeurl gives the bare proto name; tolerate a package prefix.
    if name == RUNTIME_OPTIONS_TYPE or name.endswith("." + RUNTIME_OPTIONS_TYPE):
        fields = _pb_fields(value, name)
        path, body = _pb_str(fields, 2), _pb_bytes(fields, 3)
        if path:
            return load_file(path)
        if body:
            return load_body(body.decode(errors="replace"), cri_table=True)
        return RuntimeConfig()
    if name == RUNC_OPTIONS_TYPE:
        set_fields = sorted(_RUNC_FIELDS.get(n, f"#{n}") for n in _pb_fields(value, name))
        msg = (f"ignoring runc options ({', '.join(set_fields) or 'empty'}) that containerd sent:"
               " this shim reads its settings from a TOML file; set runtime_type to "
               "io.containerd.gvisorgpu.v1 and options ConfigPath to that file")
        log.warning("%s", msg)
        return RuntimeConfig(warnings=(msg,))
    raise InvalidArgument(
        f"unsupported runtime options type {type_url!r}; this shim accepts "
        f"{RUNTIME_OPTIONS_TYPE} (ConfigPath = a TOML file, or the TOML table itself)"
    )


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
    "network": ("network", _choice(get_args(NetworkMode))),
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
    "nvproxy_allow_unsupported_driver": ("allow_unsupported_driver", _bool),
}
# [runsc_config] flags that are typed settings here.
_FLAG_KEYS: dict[str, tuple[str, Validator]] = {
    "debug": ("debug", _flag_bool),
    "debug-log": ("debug_log", _abs_path),
    "platform": ("platform", _choice(PLATFORMS)),
    "network": ("network", _choice(NETWORKS)),
    "nvproxy": ("nvproxy", _flag_nvproxy),
    "nvproxy-driver-version": ("driver_version", _driver_version),
    "nvproxy-allowed-driver-capabilities": ("allowed_capabilities", _flag_capabilities),
}
_GPU_FIELDS = ("nvproxy", "driver_version", "allowed_capabilities", "cdi_dirs", "cdi_vendors",
               "cdi_default_kind", "accept_visible_devices_env", "allow_unsupported_driver")


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


# --------------------------------------------------------------------------- protobuf


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _pb_fields(data: bytes, what: str) -> dict[int, list[int | bytes]]:
    """Protobuf wire format -> {field number: values}; enough for flat messages."""
    fields: dict[int, list[int | bytes]] = {}
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            value: int | bytes
            if wire == 0:
                value, pos = _varint(data, pos)
            elif wire in (1, 2, 5):
                size, pos = (8, pos) if wire == 1 else (4, pos) if wire == 5 else _varint(
                    data, pos)
                value, pos = data[pos:pos + size], pos + size
                if pos > len(data):
                    raise ValueError("truncated field")
            else:
                raise ValueError(f"unsupported wire type {wire}")
            fields.setdefault(number, []).append(value)
    except ValueError as e:
        raise InvalidArgument(f"malformed runtime options ({what}): {e}") from None
    return fields


def _pb_bytes(fields: Mapping[int, list[int | bytes]], number: int) -> bytes:
    values = [v for v in fields.get(number, ()) if isinstance(v, bytes)]
    return values[-1] if values else b""  # proto3: the last occurrence wins


def _pb_str(fields: Mapping[int, list[int | bytes]], number: int) -> str:
    return _pb_bytes(fields, number).decode(errors="replace")
