"""Small readers and writers for the parts of an OCI runtime spec the planner
touches. They tolerate missing or null sections (a hand-written config.json
often lacks them) and only create a section when they write into it."""

from __future__ import annotations

from typing import Any

__all__ = [
    "additional_gids",
    "annotations_of",
    "device_rules",
    "devices",
    "env",
    "env_values",
    "hooks",
    "mounts",
    "remove_annotation",
    "set_additional_gids",
    "set_device_rules",
    "set_devices",
    "set_env",
    "set_hooks",
    "set_list",
    "set_mounts",
]

JSON = dict[str, Any]


def _get(spec: JSON, *keys: str) -> Any:
    node: Any = spec
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _dicts(value: Any) -> list[JSON]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _ensure(spec: JSON, *keys: str) -> JSON:
    node = spec
    for key in keys:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    return node


def set_list(spec: JSON, keys: tuple[str, ...], items: list[Any]) -> None:
    """Write ``items`` at the path; an emptied list goes away altogether, so a
    spec we only added to and then cleaned reads as it did."""
    parent = _get(spec, *keys[:-1])
    if not items:
        if isinstance(parent, dict):
            parent.pop(keys[-1], None)
        # An empty hooks object means the same as none; other sections stay.
        if keys[0] == "hooks" and spec.get("hooks") == {}:
            del spec["hooks"]
        return
    _ensure(spec, *keys[:-1])[keys[-1]] = items


def env(spec: JSON) -> list[str]:
    value = _get(spec, "process", "env")
    return [e for e in value if isinstance(e, str)] if isinstance(value, list) else []


def env_values(spec: JSON, name: str) -> list[str]:
    """Every value ``name`` has in process.env, in order (repeats are common)."""
    prefix = name + "="
    return [e[len(prefix) :] for e in env(spec) if e.startswith(prefix)]


def set_env(spec: JSON, name: str, value: str | None) -> bool:
    """Leave exactly one ``name=value`` (at the first occurrence), or none when
    value is None. Returns whether process.env changed."""
    before = env(spec)
    prefix = name + "="
    after: list[str] = []
    placed = value is None
    for entry in before:
        if not entry.startswith(prefix):
            after.append(entry)
        elif not placed:
            after.append(prefix + str(value))
            placed = True
    if not placed:
        after.append(prefix + str(value))
    if after == before:
        return False
    _ensure(spec, "process")["env"] = after
    return True


def annotations_of(spec: JSON) -> dict[str, str]:
    value = _get(spec, "annotations")
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def remove_annotation(spec: JSON, key: str) -> bool:
    """Drop one annotation; whether it was there. An emptied map goes away."""
    value = _get(spec, "annotations")
    if not isinstance(value, dict) or key not in value:
        return False
    del value[key]
    if not value:
        del spec["annotations"]
    return True


def devices(spec: JSON) -> list[JSON]:
    return _dicts(_get(spec, "linux", "devices"))


def set_devices(spec: JSON, items: list[JSON]) -> None:
    set_list(spec, ("linux", "devices"), items)


def hooks(spec: JSON, name: str) -> list[JSON]:
    return _dicts(_get(spec, "hooks", name))


def set_hooks(spec: JSON, name: str, items: list[JSON]) -> None:
    set_list(spec, ("hooks", name), items)


def mounts(spec: JSON) -> list[JSON]:
    return _dicts(_get(spec, "mounts"))


def set_mounts(spec: JSON, items: list[JSON]) -> None:
    set_list(spec, ("mounts",), items)


def device_rules(spec: JSON) -> list[JSON]:
    return _dicts(_get(spec, "linux", "resources", "devices"))


def set_device_rules(spec: JSON, items: list[JSON]) -> None:
    set_list(spec, ("linux", "resources", "devices"), items)


def additional_gids(spec: JSON) -> list[int]:
    value = _get(spec, "process", "user", "additionalGids")
    return [g for g in value if isinstance(g, int)] if isinstance(value, list) else []


def set_additional_gids(spec: JSON, gids: list[int]) -> None:
    set_list(spec, ("process", "user", "additionalGids"), gids)
