"""The runtime options containerd sends with Create (and on ``start``'s stdin).

``CreateTaskRequest.options`` is a ``google.protobuf.Any`` (shim-protocol.md
§5). CRI sends ``runtimeoptions.v1.Options`` (type_url, config_path,
config_body) for every runtime_type but runc's, and puts the runtime's whole
``options`` TOML table into config_body when ConfigPath is empty; ``ctr
--runtime-config-path`` sends config_path. A runc ``Options`` may also come
(``nvidia-ctk runtime configure`` writes one); its fields are ignored with a
warning, since they would not mean the same thing here.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Protocol

from shim.api.containerd.runc.v1 import Options as RuncOptions
from shim.api.runtimeoptions.v1 import Options as RuntimeOptions
from shim.config.model import RuntimeConfig
from shim.config.parse import load_body, load_file
from shim.errors import InvalidArgument
from shim.protowire import WireFormatError, strict_parse

__all__ = ["RUNC_OPTIONS_TYPE", "RUNTIME_OPTIONS_TYPE", "load_config"]

log = logging.getLogger(__name__)

RUNTIME_OPTIONS_TYPE = "runtimeoptions.v1.Options"
RUNC_OPTIONS_TYPE = "containerd.runc.v1.Options"


class _AnyLike(Protocol):
    type_url: str
    value: bytes


def _decode(message: RuntimeOptions | RuncOptions, value: bytes,
            name: str) -> RuntimeOptions | RuncOptions:
    try:
        return strict_parse(message, value)
    except WireFormatError as e:
        raise InvalidArgument(f"malformed runtime options ({name}): {e}") from None


def _go_name(field_name: str) -> str:
    # How the fields are spelled in containerd's config (binary_name -> BinaryName).
    return "".join(part.capitalize() for part in field_name.split("_"))


def load_config(options: _AnyLike | None) -> RuntimeConfig:
    """Config from ``CreateTaskRequest.options``; defaults when none came."""
    if options is None:
        return RuntimeConfig()
    type_url, value = options.type_url, bytes(options.value)
    name = type_url.rsplit("/", 1)[-1]
    if not name and not value:
        return RuntimeConfig()
    # containerd's typeurl gives the bare proto name; tolerate a package prefix.
    if name == RUNTIME_OPTIONS_TYPE or name.endswith("." + RUNTIME_OPTIONS_TYPE):
        opts = _decode(RuntimeOptions(), value, name)
        assert isinstance(opts, RuntimeOptions)
        if opts.config_path:
            return load_file(opts.config_path)
        if opts.config_body:
            return load_body(opts.config_body.decode(errors="replace"), cri_table=True)
        return RuntimeConfig()
    if name == RUNC_OPTIONS_TYPE:
        runc = _decode(RuncOptions(), value, name)
        set_fields = sorted(_go_name(f.name) for f in dataclasses.fields(runc)
                            if getattr(runc, f.name))
        msg = (f"ignoring runc options ({', '.join(set_fields) or 'empty'}) that containerd sent:"
               " this shim reads its settings from a TOML file; set runtime_type to "
               "io.containerd.gvisorgpu.v1 and options ConfigPath to that file")
        log.warning("%s", msg)
        return RuntimeConfig(warnings=(msg,))
    raise InvalidArgument(
        f"unsupported runtime options type {type_url!r}; this shim accepts "
        f"{RUNTIME_OPTIONS_TYPE} (ConfigPath = a TOML file, or the TOML table itself)"
    )
