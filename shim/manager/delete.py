"""The ``delete`` action: clean up after a shim that is gone or done.

containerd runs it after every task teardown and when it cannot reach the shim
(shim-protocol.md §3.9). It must work without the daemon, touch only the one
container named by ``-id``, and print a DeleteResponse. In the normal path the
daemon has already cleaned up and this finds nothing to do, quickly: it is on
``ctr run --rm``'s critical path, so it imports only ``os``/``sys``/``time`` up
front, and json, subprocess, ctypes or socket only when there is something
left for them to do (each costs milliseconds at every container teardown).
The daemon removes the state file once runsc has deleted the container, so
its absence is the fast "nothing left" answer.
"""

from __future__ import annotations

import os
import sys
import time

from shim.manager.address import connectable, socket_path
from shim.oci.layout import PID_FILE, STATE_FILE
from shim.oci.runsc_root import has_state, remove_stale_locks

TYPE_CHECKING = False  # True for type checkers only
if TYPE_CHECKING:
    from shim.manager.flags import ShimFlags

__all__ = ["delete_action", "encode_delete_response"]

_KILLED = 128 + 9
# containerd gives the whole ``delete`` action 5 s.
_RUNSC_TIMEOUT = 4.0


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_delete_response(pid: int, exit_status: int, exited_at: float) -> bytes:
    """containerd.task.v2.DeleteResponse: pid=1, exit_status=2, exited_at=3
    (google.protobuf.Timestamp seconds=1, nanos=2). Defaults are omitted.

    Encoded by hand on purpose: this action runs at every container teardown,
    and importing betterproto with the generated task API would cost this
    process ~150 ms; three varint fields are the whole message. The unit tests
    decode it with the generated type to keep the two in agreement."""
    seconds = int(exited_at)
    nanos = int((exited_at - seconds) * 1e9)
    ts = b""
    if seconds:
        ts += b"\x08" + _varint(seconds)
    if nanos:
        ts += b"\x10" + _varint(nanos)
    out = b""
    if pid:
        out += b"\x08" + _varint(pid)
    if exit_status:
        out += b"\x10" + _varint(exit_status)
    return out + b"\x1a" + _varint(len(ts)) + ts


def _read_pid(bundle: str) -> int:
    try:
        with open(os.path.join(bundle, PID_FILE)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def _runsc_delete(bundle: str, container_id: str) -> None:
    import json
    import subprocess

    try:
        with open(os.path.join(bundle, STATE_FILE)) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return
    root = state.get("root")
    if not root or not os.path.isdir(root):
        return  # the daemon already deleted it
    if not has_state(root, container_id):
        remove_stale_locks(root, container_id)
        return  # the daemon already deleted it
    argv = [state["binary"], *state["args"], "delete", "--force", container_id]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=_RUNSC_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        # Still unmount and answer: containerd logs our stderr as a warning,
        # and without a DeleteResponse it reports the task as exit 255.
        sys.stderr.write(f"runsc delete --force {container_id}: {e}\n")
    else:
        if done.returncode != 0:
            sys.stderr.write(f"runsc delete --force {container_id} failed: "
                             f"{done.stderr.decode(errors='replace').strip()[-500:]}\n")
    # A racing delete by the daemon may have left runsc's lock behind.
    remove_stale_locks(root, container_id)
    _remove_filestore(bundle, container_id)


def _remove_filestore(bundle: str, container_id: str) -> None:
    """runsc (2024+) backs the rootfs overlay with ``.gvisor.filestore.<id>`` in
    the rootfs folder; its delete removes it, but only a delete that succeeds.
    A ``--rootfs`` folder is the user's (not a snapshot containerd throws away),
    so after a failed one it would keep the file for good."""
    import json

    try:
        with open(os.path.join(bundle, "config.json")) as f:
            root = json.load(f)["root"]["path"]
        os.unlink(os.path.join(bundle, root, f".gvisor.filestore.{container_id}"))
    except (OSError, ValueError, KeyError, TypeError):
        pass


def _mounted(path: str) -> bool:
    try:
        with open("/proc/self/mountinfo") as f:
            return f" {path} " in f.read()
    except OSError:
        return True  # cannot tell: let unmount_all find out


def delete_action(flags: ShimFlags) -> int:
    bundle = flags.bundle or os.getcwd()
    answer = clean_up(bundle, flags.id,
                      socket_file=socket_path(flags.address, flags.namespace, flags.id))
    sys.stdout.buffer.write(answer)
    sys.stdout.flush()
    return 0


def clean_up(bundle: str, container_id: str, *, socket_file: str) -> bytes:
    """Remove what is left of one container; the serialized DeleteResponse."""
    if os.path.exists(os.path.join(bundle, STATE_FILE)):
        _runsc_delete(bundle, container_id)
    rootfs = os.path.join(bundle, "rootfs")
    if _mounted(rootfs):
        from shim.oci.mount import unmount_all

        unmount_all(rootfs)
    if os.path.exists(socket_file) and not connectable(socket_file):
        try:
            os.unlink(socket_file)
        except OSError:
            pass
    return encode_delete_response(_read_pid(bundle), _KILLED, time.time())

