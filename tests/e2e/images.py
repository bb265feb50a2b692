"""Container images for the e2e tests, made from the host's static busybox.

Nothing is pulled: the tests build an OCI image layout archive in Python and
hand it to `ctr images import`, or lay out a plain rootfs folder for
`ctr run --rootfs`. Archives are byte-for-byte reproducible (fixed mtimes,
owners and gzip header), so the same image always has the same digest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Names are fully qualified so that no containerd version rewrites them on import;
# the `.test` top-level domain is reserved, so nothing can ever be pulled from it.
BUSYBOX_REF = "gvisorgpu.test/busybox:latest"
PAUSE_REF = "gvisorgpu.test/pause:latest"

_OCI_LAYOUT = "application/vnd.oci.image.layout.v1.0.0"
_INDEX = "application/vnd.oci.image.index.v1+json"
_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_CONFIG = "application/vnd.oci.image.config.v1+json"
_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
_MTIME = 1_700_000_000  # any fixed time: only reproducibility matters

# Used when busybox cannot list its applets (it always can on Debian's build).
_APPLETS = (
    "bin/sh", "bin/echo", "bin/cat", "bin/sleep", "bin/true", "bin/false", "bin/ls",
    "bin/dd", "bin/mkdir", "bin/rm", "bin/kill", "bin/ps", "bin/hostname", "bin/date",
    "usr/bin/sha256sum", "usr/bin/head", "usr/bin/tail", "usr/bin/wc", "usr/bin/env",
    "usr/bin/id", "usr/bin/yes", "usr/bin/seq", "usr/bin/tr", "usr/bin/tee",
    "usr/bin/test", "usr/bin/printf", "usr/bin/md5sum", "bin/grep", "bin/sed",
    "usr/bin/awk", "bin/mount", "bin/pwd", "bin/uname", "bin/touch", "sbin/ip",
)

_ETC = {
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": b"busybox\n",
    "etc/hosts": b"127.0.0.1 localhost\n",
}
_DIRS = {
    "bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
    "etc": 0o755, "dev": 0o755, "proc": 0o555, "sys": 0o555, "root": 0o700,
    "tmp": 0o1777, "var": 0o755, "run": 0o755,
}


def busybox_path() -> Path | None:
    """The static busybox to put in images (env GVISORGPU_BUSYBOX overrides)."""
    found = os.environ.get("GVISORGPU_BUSYBOX") or shutil.which("busybox")
    return Path(found) if found else None


def _applets(busybox: Path) -> list[str]:
    try:
        out = subprocess.run([str(busybox), "--list-full"], capture_output=True,
                             text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return list(_APPLETS)
    names = [line.strip().lstrip("/") for line in out.splitlines() if line.strip()]
    return sorted(n for n in names if n and n != "bin/busybox")


@dataclass(frozen=True)
class Image:
    """An image archive on disk and what `ctr` needs to know about it."""

    ref: str
    archive: Path
    manifest_digest: str
    config_digest: str
    layer_digest: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def _tarinfo(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.mtime, info.uid, info.gid, info.uname, info.gname = _MTIME, 0, 0, "root", "root"
    return info


def rootfs_layer(busybox: Path, files: Mapping[str, bytes] | None = None) -> bytes:
    """An uncompressed layer tar: busybox, its applet symlinks, /etc basics, `files`."""
    buf = io.BytesIO()
    data = busybox.read_bytes()
    extra = {**_ETC, **(files or {})}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d, mode in _DIRS.items():
            tar.addfile(_tarinfo(d, tarfile.DIRTYPE, mode))
        tar.addfile(_tarinfo("bin/busybox", tarfile.REGTYPE, 0o755, len(data)), io.BytesIO(data))
        for name in _applets(busybox):
            parent = os.path.dirname(name)
            if parent and parent not in _DIRS:
                continue
            tar.addfile(_tarinfo(name, tarfile.SYMTYPE, 0o777, link="/bin/busybox"))
        for name, content in sorted(extra.items()):
            tar.addfile(_tarinfo(name, tarfile.REGTYPE, 0o644, len(content)), io.BytesIO(content))
    return buf.getvalue()


def _gzip(data: bytes) -> bytes:
    out = io.BytesIO()
    # mtime=0 and no file name keep the compressed layer (and so its digest) stable.
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="", compresslevel=6) as gz:
        gz.write(data)
    return out.getvalue()


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tarinfo(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))


def build_image(
    dest: Path,
    ref: str = BUSYBOX_REF,
    *,
    entrypoint: Sequence[str] = (),
    cmd: Sequence[str] = ("/bin/sh",),
    env: Iterable[str] = ("PATH=/usr/sbin:/usr/bin:/sbin:/bin",),
    files: Mapping[str, bytes] | None = None,
    busybox: Path | None = None,
) -> Image:
    """Write an OCI image layout archive for `ref` to `dest` (a .tar path).

    The index carries both `io.containerd.image.name` (the full reference, which
    every ctr version uses as the image name on import) and
    `org.opencontainers.image.ref.name` (the tag, as the OCI spec wants).
    """
    bb = busybox or busybox_path()
    if bb is None:
        raise FileNotFoundError("busybox not found (install busybox-static)")
    raw = rootfs_layer(bb, files)
    layer_digest, layer = _blob(_gzip(raw))
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    config_obj = {
        "architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
        "config": {"Env": list(env), "Entrypoint": list(entrypoint) or None,
                   "Cmd": list(cmd) or None, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "tests/e2e/images.py"}],
    }
    config_digest, config = _blob(_json(config_obj))
    manifest_digest, manifest = _blob(_json({
        "schemaVersion": 2, "mediaType": _MANIFEST,
        "config": {"mediaType": _CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": _LAYER, "digest": layer_digest, "size": len(layer)}],
    }))
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
    index = _json({
        "schemaVersion": 2, "mediaType": _INDEX,
        "manifests": [{
            "mediaType": _MANIFEST, "digest": manifest_digest, "size": len(manifest),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": ref,
                            "org.opencontainers.image.ref.name": tag},
        }],
    })
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        _add_bytes(tar, "index.json", index)
        tar.addfile(_tarinfo("blobs", tarfile.DIRTYPE, 0o755))
        tar.addfile(_tarinfo("blobs/sha256", tarfile.DIRTYPE, 0o755))
        for digest, blob in ((config_digest, config), (layer_digest, layer),
                             (manifest_digest, manifest)):
            _add_bytes(tar, "blobs/sha256/" + digest.split(":", 1)[1], blob)
    return Image(ref, dest, manifest_digest, config_digest, layer_digest,
                 tuple(entrypoint), tuple(cmd))


def build_busybox_image(dest: Path, busybox: Path | None = None) -> Image:
    """busybox with `sh` as its command: `ctr run IMAGE ID echo hi` just works."""
    return build_image(dest, BUSYBOX_REF, cmd=("/bin/sh",), busybox=busybox)


def build_pause_image(dest: Path, busybox: Path | None = None) -> Image:
    """A stand-in for the Kubernetes pause image: sleeps until killed.

    `sleep infinity` under PID 1 ignores SIGTERM (no handler, and PID 1 gets no
    default action), which is what the real pause does not do; `trap` makes it
    exit on TERM and INT like the real one.
    """
    script = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"
    return build_image(dest, PAUSE_REF, entrypoint=("/bin/sh", "-c", script), cmd=(),
                       busybox=busybox)


def make_rootfs(dest: Path, busybox: Path | None = None,
                files: Mapping[str, bytes] | None = None) -> Path:
    """Lay out the busybox rootfs as a plain folder (for `ctr run --rootfs`)."""
    bb = busybox or busybox_path()
    if bb is None:
        raise FileNotFoundError("busybox not found (install busybox-static)")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(rootfs_layer(bb, files)), mode="r") as tar:
        tar.extractall(dest, filter="fully_trusted")
    return dest
