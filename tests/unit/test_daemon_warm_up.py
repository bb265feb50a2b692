"""What the forkserver sets up before it forks, so that no daemon pays it again."""

from __future__ import annotations

import subprocess
import sys

from tests import paths

# In a fresh interpreter: the tests in this process have long since set up
# the classes they used.
_CHECK = """
import betterproto
import shim.daemon.serve, shim.task.create
shim.daemon.serve.warm_up()
from shim.api import ttrpc
from shim.api.containerd import events, types
from shim.api.containerd.services.events.ttrpc import v1 as forward
from shim.api.containerd.task import v2 as task
from betterproto.lib.google.protobuf import Any, Empty, Timestamp
# What the daemon of a short container encodes or decodes besides the task
# API: the ttrpc envelope, the events it publishes and what they carry.
used = [ttrpc.Request, ttrpc.Response, task.CreateTaskRequest, task.DeleteResponse,
        events.TaskCreate, events.TaskStart, events.TaskExit, events.TaskDelete,
        forward.ForwardRequest, types.Envelope, Any, Empty, Timestamp]
print(" ".join(c.__name__ for c in used if "_betterproto_meta" not in vars(c)))
"""


def test_every_message_class_a_daemon_uses_is_set_up_before_the_fork() -> None:
    done = subprocess.run([sys.executable, "-c", _CHECK], cwd=paths.REPO, capture_output=True,
                          text=True, check=True)
    assert done.stdout.split() == []
