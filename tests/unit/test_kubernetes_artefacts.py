"""The Kubernetes artefacts agree with the code and with each other."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from shim.about import RUNTIME as RUNTIME_TYPE
from shim.commands.doctor import containerd_rows
from shim.config import load_body
from shim.gpu.request import POD_ANNOTATION

K8S = Path(__file__).resolve().parents[2] / "scripts/kubernetes"
HANDLER = "gvisorgpu"
CRI_TABLES = {"containerd-v2.toml": "io.containerd.grpc.v1.cri",
              "containerd-v3.toml": "io.containerd.cri.v1.runtime"}


def _runtime(doc: dict[str, Any], plugin: str) -> dict[str, Any]:
    runtimes: dict[str, Any] = doc["plugins"][plugin]["containerd"]["runtimes"]
    return runtimes[HANDLER]  # type: ignore[no-any-return]


def _installer() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((K8S / "installer.yaml").read_text()))


def _configmap() -> dict[str, str]:
    cm = next(d for d in _installer() if d["kind"] == "ConfigMap")
    return cm["data"]  # type: ignore[no-any-return]


def test_runtimeclass_names_the_handler() -> None:
    rc = yaml.safe_load((K8S / "runtimeclass.yaml").read_text())
    assert rc["kind"] == "RuntimeClass" and rc["handler"] == HANDLER


@pytest.mark.parametrize(("name", "plugin"), sorted(CRI_TABLES.items()))
def test_containerd_fragment_registers_this_runtime(name: str, plugin: str) -> None:
    doc = tomllib.loads((K8S / name).read_text())
    runtime = _runtime(doc, plugin)
    assert runtime["runtime_type"] == RUNTIME_TYPE
    assert set(runtime["options"]) == {"TypeUrl", "ConfigPath"}
    # containerd passes an annotation through only when a glob here matches it.
    def passes(key: str, globs: list[str]) -> bool:
        return any(key.startswith(glob.rstrip("*")) for glob in globs)

    assert passes(POD_ANNOTATION, runtime["pod_annotations"])
    # A pod's own CDI annotation is the pod author's (shim/gpu/TRUST.md): never forwarded;
    # the device plugin's, a container annotation the kubelet sets, is.
    assert not passes("cdi.k8s.io/x", runtime["pod_annotations"])
    assert passes("cdi.k8s.io/x", runtime["container_annotations"])
    # The installer ships the same fragment (without the version line).
    shipped = tomllib.loads(_configmap()[name])
    assert _runtime(shipped, plugin) == runtime


@pytest.mark.parametrize("name", sorted(CRI_TABLES))
def test_doctor_accepts_the_fragment(name: str) -> None:
    rows = containerd_rows(str(K8S / name))
    assert [r.ok for r in rows if r.check == "containerd runtime"] == [True]


def test_runtime_config_is_valid_and_shipped_unchanged() -> None:
    text = (K8S / "gvisorgpu.toml").read_text()
    config = load_body(text, source="gvisorgpu.toml")
    assert config.binary_name == "/usr/bin/runsc"
    body = "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))
    assert tomllib.loads(_configmap()["gvisorgpu.toml"]) == tomllib.loads(body)
    config_path = tomllib.loads((K8S / "containerd-v3.toml").read_text())
    options = _runtime(config_path, CRI_TABLES["containerd-v3.toml"])["options"]
    assert options["ConfigPath"] == "/etc/containerd/gvisorgpu.toml"


def test_configmap_names_agree_with_the_code() -> None:
    data = _configmap()
    assert data["runtime_type"] == RUNTIME_TYPE
    assert data["handler"] == HANDLER
    kinds = [d["kind"] for d in _installer()]
    assert "DaemonSet" in kinds
