"""Process titles: ``ps`` shows each shim process for what it serves.

A daemon reads like containerd's Go shims (``-namespace … -id … -address …``)
so an operator can find the shim of a container; the forkserver says it is one
and for which containerd. Both are forked from Python processes whose own argv
would say ``python3 -m shim.manager.forkserver …``.
"""

from __future__ import annotations

from shim.about import NAME

__all__ = ["daemon_title", "forkserver_title", "set_title"]


def daemon_title(namespace: str, group: str, address: str) -> str:
    return f"{NAME} -namespace {namespace} -id {group} -address {address}"


def forkserver_title(address: str, containerd_pid: int) -> str:
    return f"{NAME} forkserver -address {address} -containerd-pid {containerd_pid}"


def set_title(title: str) -> None:
    try:
        from setproctitle import setproctitle
    except ImportError:  # a title is for people; never fail a container over it
        return
    setproctitle(title)
