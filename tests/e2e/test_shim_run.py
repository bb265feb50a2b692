"""containerd runs containers in gVisor through containerd-shim-gvisorgpu-v1."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e import containerd as cd

pytestmark = pytest.mark.e2e


def test_run_rm_prints_output(ctr: cd.Ctr, busybox: str, gvisorgpu: list[str],
                              container_id: Callable[[str], str]) -> None:
    out = ctr("run", "--rm", *gvisorgpu, busybox, container_id("echo"), "echo", "hello gvisor")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello gvisor\n"


def test_exit_code_propagates(ctr: cd.Ctr, busybox: str, gvisorgpu: list[str],
                              container_id: Callable[[str], str]) -> None:
    out = ctr("run", "--rm", *gvisorgpu, busybox, container_id("exit"), "sh", "-c", "exit 7")
    assert out.returncode == 7, out.stderr
