"""The binary containerd runs for every container: the ``start`` and ``delete``
actions and ``-info``, plus the forkserver that makes ``start`` fast.

containerd's path through it: ``start`` (``start.py``) binds the task socket
and gets a daemon forked (from the warm forkserver, ``forkclient.py`` /
``forkserver.py``, or by itself), then prints the address; containerd talks
ttrpc to that daemon (``shim.daemon``); after the task is gone containerd runs
``delete`` (``delete.py``), which cleans up whatever the daemon could not.

Everything here is on containerd's critical path, so it imports only light
standard-library modules, and the heavy ones only where there is work for them.
"""
