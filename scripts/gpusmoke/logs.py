"""One .tar.gz of what explains a run: containerd's log (the shim logs into
it), runsc's debug and boot logs, the CDI spec, the runtime configs, the
bundles planned. Files over the cap keep their head and their tail."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["bundle_logs"]

DEFAULT_CAP = 4 << 20
_HEAD = 512 << 10


def _capped(path: Path, cap: int) -> bytes:
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= cap:
            return f.read()
        head = f.read(_HEAD)
        f.seek(size - (cap - _HEAD))
        tail = f.read()
    cut = f"\n[... {size - len(head) - len(tail)} bytes cut here by gpu-smoke ...]\n"
    return head + cut.encode() + tail


def bundle_logs(dest: Path, root: Path, paths: Iterable[Path], cap: int = DEFAULT_CAP) -> int:
    """Write ``dest`` with every regular file among ``paths`` (folders
    recursively), named relative to ``root``; returns how many went in."""
    count = 0
    now = time.time()
    with tarfile.open(dest, "w:gz") as tar:
        for top in paths:
            files = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
            for path in files:
                if not path.is_file() or path.is_symlink():
                    continue
                data = _capped(path, cap)
                info = tarfile.TarInfo(str(path.relative_to(root)) if path.is_relative_to(root)
                                       else path.name)
                info.size, info.mtime, info.mode = len(data), int(now), 0o644
                tar.addfile(info, io.BytesIO(data))
                count += 1
    return count
