"""The JSON types of the OCI spec fields the shim or runsc read.

runsc decodes config.json with Go's ``encoding/json``, which refuses a value of
the wrong JSON type (a string where an array goes, ``true`` or ``1.5`` where
an integer goes) and takes ``null`` as "not set". The shim checks the same
when it loads a bundle, so that a malformed spec is refused up front as
InvalidArgument naming the field, instead of being half-read by the planner
(which skips what it does not understand) and then failing inside runsc.
Fields the shim never reads are left to runsc.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

from shim.errors import InvalidArgument

__all__ = ["PROCESS", "SPEC", "check", "check_spec"]

# A field's kind: a name below, or (kind, fields of each object in it).
Kind: TypeAlias = str | tuple[str, "Schema"]
Schema: TypeAlias = Mapping[str, Kind]

_MOUNT: Schema = {"destination": "string", "source": "string", "type": "string",
                  "options": "strings"}
_HOOK: Schema = {"path": "string", "args": "strings", "env": "strings", "timeout": "int"}
_DEVICE: Schema = {"path": "string", "type": "string", "major": "int", "minor": "int"}
PROCESS: Schema = {
    "terminal": "bool",
    "args": "strings",
    "env": "strings",
    "cwd": "string",
    "user": ("object", {"uid": "int", "gid": "int", "additionalGids": "ints"}),
}
SPEC: Schema = {
    "ociVersion": "string",
    "hostname": "string",
    "process": ("object", PROCESS),
    "root": ("object", {"path": "string", "readonly": "bool"}),
    "mounts": ("objects", _MOUNT),
    "hooks": ("object", {name: ("objects", _HOOK) for name in (
        "prestart", "createRuntime", "createContainer", "startContainer", "poststart",
        "poststop")}),
    "annotations": "string map",
    "linux": ("object", {
        "cgroupsPath": "string",
        "devices": ("objects", _DEVICE),
        "namespaces": ("objects", {"type": "string", "path": "string"}),
        "resources": ("object", {
            "devices": ("objects", {"allow": "bool", "type": "string", "access": "string"}),
            "memory": ("object", {"limit": "int"}),
        }),
    }),
}

_WANTED = {
    "string": "a string",
    "bool": "true or false",
    "int": "an integer",
    "object": "an object",
    "objects": "an array of objects",
    "strings": "an array of strings",
    "ints": "an array of integers",
    "string map": "an object of strings",
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fits(kind: str, value: Any) -> bool:
    match kind:
        case "string":
            return isinstance(value, str)
        case "bool":
            return isinstance(value, bool)
        case "int":
            return _is_int(value)
        case "object":
            return isinstance(value, dict)
        case "objects":
            return isinstance(value, list) and all(isinstance(v, dict) for v in value)
        case "strings":
            return isinstance(value, list) and all(isinstance(v, str) for v in value)
        case "ints":
            return isinstance(value, list) and all(_is_int(v) for v in value)
        case "string map":
            return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    raise AssertionError(f"unknown kind {kind}")


def _json_type(value: Any) -> str:
    if value is True or value is False:
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def check(obj: Mapping[str, Any], schema: Schema, where: str, source: str) -> None:
    """InvalidArgument naming ``source`` and the first field of ``obj`` (an
    object at ``where``, e.g. "process.") that does not fit ``schema``."""
    for key, kind in schema.items():
        value = obj.get(key)
        if value is None:
            continue
        name, fields = kind if isinstance(kind, tuple) else (kind, None)
        path = f"{where}{key}"
        if not _fits(name, value):
            raise InvalidArgument(
                f"{source}: {path} must be {_WANTED[name]}, not {_json_type(value)} "
                "(OCI runtime spec); fix the container's config")
        if fields is None:
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            prefix = f"{path}[{i}]." if isinstance(value, list) else f"{path}."
            check(item, fields, prefix, source)


def check_spec(spec: Mapping[str, Any], source: str = "config.json") -> None:
    """InvalidArgument naming the first field whose JSON type runsc would refuse."""
    check(spec, SPEC, "", source)
