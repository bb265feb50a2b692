"""The OCI bundle on disk: its spec.

Create is three calls (load_spec → plan → write_spec) so the dry-run ``plan``
command and the real Create cannot drift apart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from shim.errors import InvalidArgument
from shim.oci.shape import check_spec

__all__ = ["Spec", "load_spec", "write_spec"]

Spec = dict[str, Any]


def load_spec(bundle: str | os.PathLike[str]) -> Spec:
    """The bundle's config.json; InvalidArgument when it cannot be read, is not
    JSON, or has a field of a type runsc would refuse."""
    path = Path(bundle) / "config.json"
    try:
        spec = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise InvalidArgument(f"bundle {bundle} has no config.json") from None
    except OSError as e:
        # A bundle that is a file, a config.json that is a directory, ...
        raise InvalidArgument(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise InvalidArgument(f"{path} is not valid JSON: {e}") from None
    if not isinstance(spec, dict):
        raise InvalidArgument(f"{path}: the OCI spec must be a JSON object")
    check_spec(spec, str(path))
    return spec


def write_spec(bundle: str | os.PathLike[str], spec: Spec) -> None:
    """Replace config.json atomically, so a crash never leaves half a spec."""
    path = Path(bundle) / "config.json"
    tmp = path.with_name(".config.json.tmp")
    tmp.write_text(json.dumps(spec, separators=(",", ":")))
    os.replace(tmp, path)
