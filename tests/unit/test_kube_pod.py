"""shim.kube.pod: the one reading of a container's place in its pod."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shim.kube.pod import PodRole, pod_role, shim_group

CRI = "io.kubernetes.cri."


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({}, PodRole("standalone")),
        ({CRI + "container-type": "sandbox", CRI + "sandbox-id": "s1",
          CRI + "sandbox-name": "web", CRI + "sandbox-namespace": "prod"},
         PodRole("sandbox", "s1", "web", "prod")),
        ({CRI + "container-type": "container", CRI + "sandbox-id": "s1"},
         PodRole("member", "s1")),
        ({CRI + "container-type": "container", CRI + "sandbox-id": "s1",
          CRI + "sandbox-name": "web", CRI + "sandbox-namespace": "prod",
          CRI + "container-name": "main"},
         PodRole("member", "s1", "web", "prod", "main")),
        # containerd's keys are set by containerd after the pod's own annotations;
        # CRI-O's spelling is not, so in a containerd pod it is never read
        # (a pod author could forward it to name another pod or container).
        ({CRI + "container-type": "container", CRI + "sandbox-id": "s1",
          "io.kubernetes.pod.name": "victim", "io.kubernetes.pod.namespace": "prod",
          "io.kubernetes.container.name": "gpu-main"},
         PodRole("member", "s1")),
        ({CRI + "container-type": "container", "io.kubernetes.cri-o.SandboxID": "s9"},
         PodRole("standalone")),
        ({"io.kubernetes.cri-o.ContainerType": "container",
          "io.kubernetes.cri-o.SandboxID": "s2", "io.kubernetes.pod.name": "p"},
         PodRole("member", "s2", "p")),
        # An app container that names no sandbox cannot join one.
        ({CRI + "container-type": "container"}, PodRole("standalone")),
        ({CRI + "container-type": "something-else", CRI + "sandbox-id": "s1"},
         PodRole("standalone")),
        # Annotations are the pod author's input: only strings count.
        ({CRI + "container-type": "container", CRI + "sandbox-id": 7}, PodRole("standalone")),
    ],
)
def test_pod_role(annotations: dict[str, str], expected: PodRole) -> None:
    assert pod_role(annotations) == expected


@pytest.mark.parametrize(
    ("annotations", "group"),
    [
        ({}, "c1"),
        ({CRI + "container-type": "sandbox", CRI + "sandbox-id": "c1"}, "c1"),
        ({CRI + "container-type": "container", CRI + "sandbox-id": "pod-9"}, "pod-9"),
    ],
)
def test_shim_group(annotations: dict[str, str], group: str) -> None:
    assert shim_group("c1", annotations) == group


def test_roles_compare_and_hash_by_value() -> None:
    assert PodRole("member", "s") == PodRole("member", "s")
    assert PodRole("member", "s") != PodRole("member", "t")
    assert len({PodRole("member", "s"), PodRole("member", "s")}) == 1
    assert repr(PodRole("sandbox", "s")) == "PodRole('sandbox', 's', None, None, None)"
    assert PodRole("member", "s", container_name="a") != PodRole("member", "s",
                                                                   container_name="b")


def test_cheap_to_import_on_the_start_path() -> None:
    # `start` imports this for every container: no dataclasses, no typing.
    code = (f"import sys; sys.path[:0] = {sys.path!r}; import shim.kube.pod; "
            "print(sorted({'dataclasses', 'typing'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
