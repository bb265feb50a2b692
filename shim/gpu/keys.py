"""How the shim's TOML config spells each ``GpuConfig`` field, so refusals
name the key a person edits. ``shim.config`` reads the same keys; a unit test
keeps the two in step."""

from __future__ import annotations

__all__ = ["CONFIG_KEYS", "key"]

CONFIG_KEYS: dict[str, str] = {
    "nvproxy": "nvproxy",
    "driver_version": "nvproxy_driver_version",
    "allowed_capabilities": "nvproxy_allowed_capabilities",
    "allow_unsupported_driver": "nvproxy_allow_unsupported_driver",
    "accept_visible_devices_env": "accept_visible_devices_env",
    "accept_visible_devices_env_in_pods": "accept_visible_devices_env_in_pods",
    "accept_pod_nvproxy_annotation": "accept_pod_nvproxy_annotation",
    "cdi_dirs": "cdi_spec_dirs",
    "cdi_vendors": "cdi_vendors",
    "cdi_default_kind": "cdi_default_kind",
    "platform": "platform",
}


def key(field: str) -> str:
    """The TOML key for a GpuConfig field."""
    return CONFIG_KEYS[field]
