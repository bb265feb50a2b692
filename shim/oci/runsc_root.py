"""runsc's own files in a sandbox's runsc root, as far as the shim must know
them: which belong to one container, and the lock runsc leaves behind.

runsc keeps ``<id>.state`` (2022 builds) or ``<id>_sandbox:<sandbox>.state``
(later ones) per container, each with a ``.lock`` beside it. Any runsc command
that looks a container up opens that lock with O_CREAT before reading the
state; one that runs while another deletes the container re-creates the lock,
finds no state, fails "not found" and leaves the lock for good. The daemon's
Delete and containerd's ``delete`` action can be those two commands, so each
removes such a lock after its own ``runsc delete``: whichever finishes last
leaves the root clean.

Only ``os``: the ``delete`` action imports this on every container teardown.
"""

import os

__all__ = ["has_state", "remove_stale_locks"]


def _own_files(root: str, container_id: str, suffix: str) -> list[str]:
    # Exact, because runsc resolves ids by prefix: a gone ``app-1`` in a pod's
    # root must not match ``app-10``.
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return [name for name in names
            if name.endswith(suffix)
            and (name == f"{container_id}{suffix}" or name.startswith(f"{container_id}_sandbox:"))]


def has_state(root: str, container_id: str) -> bool:
    """Whether runsc still has state for exactly this id (a lock alone is not)."""
    return bool(_own_files(root, container_id, ".state"))


def remove_stale_locks(root: str, container_id: str) -> None:
    """Remove this id's locks once runsc has no state for it, then the root
    itself if nothing else lives there (other containers of the pod may)."""
    if has_state(root, container_id):
        return
    for name in _own_files(root, container_id, ".lock"):
        try:
            os.unlink(os.path.join(root, name))
        except OSError:
            pass  # gone already
    try:
        os.rmdir(root)
    except OSError:
        pass  # not empty, or gone
