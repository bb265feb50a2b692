"""Read a Debian package without dpkg: a .deb is an ``ar`` archive holding
``debian-binary``, ``control.tar.*`` and ``data.tar.*`` (deb(5)).

Standard library only. The tarballs are xz on Debian and zstd on some Ubuntu
builds; Python before 3.14 has no zstd, and a Python built without lzma has no
xz, so those fall back to the ``zstd`` / ``xz`` command when it is installed.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DebError", "DebInfo", "ar_members", "extract", "read_info"]

AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60  # name 16, mtime 12, uid 6, gid 6, mode 8, size 10, "`\n" 2
_DECOMPRESSORS = {".xz": "xz", ".zst": "zstd", ".gz": "gzip", ".bz2": "bzip2"}


class DebError(Exception):
    """The file is not a .deb we can read; the message names the file and why."""


@dataclass(frozen=True)
class DebInfo:
    package: str
    version: str
    architecture: str


def ar_members(data: bytes) -> dict[str, bytes]:
    """Member name -> contents of a common-format ar archive."""
    if not data.startswith(AR_MAGIC):
        raise DebError("not an ar archive (a .deb starts with !<arch>)")
    members: dict[str, bytes] = {}
    pos = len(AR_MAGIC)
    while pos + _AR_HEADER <= len(data):
        header = data[pos:pos + _AR_HEADER]
        if header[58:60] != b"`\n":
            raise DebError(f"corrupt ar member header at byte {pos}")
        # GNU ar ends names with "/"; dpkg-deb pads them with spaces.
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip() or "0")
        start = pos + _AR_HEADER
        if start + size > len(data):
            raise DebError(f"ar member {name!r} is cut short ({size} bytes announced)")
        members[name] = data[start:start + size]
        pos = start + size + (size & 1)  # members start on even offsets
    return members


def _tarball(members: dict[str, bytes], stem: str) -> tuple[str, bytes]:
    for name, blob in members.items():
        if name == stem or name.startswith(stem + "."):
            return name, blob
    raise DebError(f"no {stem}.* member (found {', '.join(members) or 'none'})")


def _decompress_with_tool(name: str, blob: bytes) -> bytes:
    tool = _DECOMPRESSORS.get(Path(name).suffix)
    if tool is None or shutil.which(tool) is None:
        raise DebError(f"{name}: this Python cannot decompress it"
                       + (f" and `{tool}` is not installed" if tool else ""))
    out = subprocess.run([tool, "-dc"], input=blob, capture_output=True, check=False,
                         timeout=300)
    if out.returncode != 0:
        raise DebError(f"{name}: {tool} -dc failed: {out.stderr.decode(errors='replace')}")
    return out.stdout


def open_tar(name: str, blob: bytes) -> tarfile.TarFile:
    if not name.endswith(".zst"):
        try:
            return tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")
        except tarfile.CompressionError:
            pass  # e.g. a Python built without lzma: try the command instead
    return tarfile.open(fileobj=io.BytesIO(_decompress_with_tool(name, blob)), mode="r:")


def _parse_control(text: str) -> DebInfo:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line[:1].isspace():
            fields[key.strip()] = value.strip()
    try:
        return DebInfo(fields["Package"], fields["Version"], fields["Architecture"])
    except KeyError as e:
        raise DebError(f"control file has no {e.args[0]} field") from None


def _info(path: Path, members: dict[str, bytes]) -> DebInfo:
    name, blob = _tarball(members, "control.tar")
    with open_tar(name, blob) as tar:
        for member in tar.getmembers():
            if member.name.lstrip("./") == "control":
                f = tar.extractfile(member)
                if f is not None:
                    return _parse_control(f.read().decode("utf-8", "replace"))
    raise DebError(f"{path}: {name} holds no control file")


def read_info(path: Path) -> DebInfo:
    """Package, version and architecture from the package's control file."""
    try:
        return _info(path, ar_members(path.read_bytes()))
    except DebError as e:
        raise DebError(f"{path}: {e}") from None


def extract(path: Path, dest: Path) -> DebInfo:
    """Unpack the package's files under ``dest``, as ``dpkg -x`` does."""
    try:
        members = ar_members(path.read_bytes())
        info = _info(path, members)
        name, blob = _tarball(members, "data.tar")
        dest.mkdir(parents=True, exist_ok=True)
        with open_tar(name, blob) as tar:
            # The "tar" filter refuses paths that leave dest but, like dpkg,
            # keeps absolute symlinks; older Pythons without filters get the
            # same check by hand.
            if hasattr(tarfile, "tar_filter"):
                tar.extractall(dest, filter="tar")
            else:  # pragma: no cover - Python < 3.11.4
                for member in tar.getmembers():
                    if member.name.startswith("/") or ".." in Path(member.name).parts:
                        raise DebError(f"{name}: member {member.name!r} leaves the target")
                tar.extractall(dest)
        return info
    except DebError as e:
        raise DebError(f"{path}: {e}") from None
    except (OSError, tarfile.TarError, EOFError) as e:
        raise DebError(f"{path}: cannot unpack: {e}") from None
