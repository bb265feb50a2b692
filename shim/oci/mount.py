"""Rootfs mounts: containerd's ``Mount`` list onto ``<bundle>/rootfs``.

Kept apart from the spec code and light on imports: the ``delete`` action,
which runs on every teardown, needs only :func:`unmount_all`.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence
from typing import NamedTuple

from shim.errors import InvalidArgument, bad_path

__all__ = ["MountSpec", "mount_rootfs", "unmount_all"]

# mount(2) flag bits (linux/mount.h).
_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_REMOUNT = 0x20
_MS_NOATIME = 0x400
_MS_NODIRATIME = 0x800
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2

_FLAGS = {
    "ro": (_MS_RDONLY, True),
    "rw": (_MS_RDONLY, False),
    "nosuid": (_MS_NOSUID, True),
    "suid": (_MS_NOSUID, False),
    "nodev": (_MS_NODEV, True),
    "dev": (_MS_NODEV, False),
    "noexec": (_MS_NOEXEC, True),
    "exec": (_MS_NOEXEC, False),
    "noatime": (_MS_NOATIME, True),
    "nodiratime": (_MS_NODIRATIME, True),
    "bind": (_MS_BIND, True),
    "rbind": (_MS_BIND | _MS_REC, True),
}

_libc = ctypes.CDLL(None, use_errno=True)


class MountSpec(NamedTuple):
    """One ``containerd.types.Mount`` as plain values."""

    type: str
    source: str
    target: str
    options: tuple[str, ...]


def _parse_options(options: Sequence[str]) -> tuple[int, str]:
    flags, data = 0, []
    for opt in options:
        known = _FLAGS.get(opt)
        if known is None:
            data.append(opt)
        elif known[1]:
            flags |= known[0]
        else:
            flags &= ~known[0]
    return flags, ",".join(data)


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    rc = _libc.mount(
        source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} {source} on {target} ({data}): {os.strerror(err)}")


def mount_rootfs(mounts: Sequence[MountSpec], rootfs: str) -> None:
    """Mount containerd's rootfs mounts at ``rootfs`` (+ each mount's target).

    containerd 1.6 never sends ``target``; 1.7+ may. A read-only bind needs a
    second remount call, as the kernel ignores MS_RDONLY on the first. A mount
    the kernel refuses for its source, type or options is InvalidArgument.
    """
    done: list[str] = []
    try:
        for i, m in enumerate(mounts):
            target = _inside(rootfs, m.target)
            flags, data = _parse_options(m.options)
            fstype = "" if flags & _MS_BIND else m.type
            try:
                _mount(m.source, target, fstype, flags, data)
                done.append(target)
                if flags & _MS_BIND and flags & _MS_RDONLY:
                    _mount("", target, "", flags | _MS_REMOUNT, "")
            except OSError as e:
                # A missing source, an unknown type or bad options: the request's fault.
                refusal = bad_path(e, f"rootfs mount {i} ({m.type} {m.source} on "
                                      f"{m.target or '/'}, options {','.join(m.options)})")
                if refusal is None:
                    raise
                raise refusal from None
    except BaseException:
        for target in reversed(done):
            unmount_all(target)
        raise


def _inside(rootfs: str, target: str) -> str:
    """The mount point for ``target`` under ``rootfs``; refused if it would land
    outside (``..``, or a symlink in the image pointing elsewhere)."""
    if not target:
        return rootfs
    path = os.path.join(rootfs, target.lstrip("/"))
    root = os.path.realpath(rootfs)
    real = os.path.realpath(path)
    if real != root and not real.startswith(root + os.sep):
        raise InvalidArgument(f"rootfs mount target {target!r} resolves to {real}, outside the "
                              f"container's rootfs {root}")
    return real


def unmount_all(target: str) -> None:
    """Detach every mount stacked on ``target``; a no-op when nothing is mounted."""
    for _ in range(64):
        if _libc.umount2(target.encode(), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):
                return
            raise OSError(err, f"unmount {target}: {os.strerror(err)}")
