"""The runtime configuration: the data (``model``), the TOML file and its
validation (``parse``), and containerd's options Any (``options``, which needs
the generated protobuf types and is imported by name where needed)."""

from shim.config.model import RuntimeConfig, resolve_network
from shim.config.parse import load_body, load_file, parse_mapping

__all__ = ["RuntimeConfig", "load_body", "load_file", "parse_mapping", "resolve_network"]
