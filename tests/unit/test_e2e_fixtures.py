"""The e2e suite's own helpers that need no root and no daemon: the leftover
check's process and mount recognition, the OCI image builder, and the CRI
config the private containerd gets."""

from __future__ import annotations

import json
import tarfile
import tomllib
from pathlib import Path

import pytest

from tests.e2e import containerd as cd
from tests.e2e import cri, images, leftovers


def test_image_archive_is_reproducible_oci_layout(tmp_path: Path) -> None:
    if images.busybox_path() is None:
        pytest.skip("busybox is not installed")
    a = images.build_busybox_image(tmp_path / "a.tar")
    b = images.build_busybox_image(tmp_path / "b.tar")
    assert a.manifest_digest == b.manifest_digest
    assert a.archive.read_bytes() == b.archive.read_bytes()
    with tarfile.open(a.archive) as tar:
        names = set(tar.getnames())
        index_file = tar.extractfile("index.json")
        assert index_file is not None
        index = json.load(index_file)
    assert {"oci-layout", "index.json"} <= names
    assert f"blobs/sha256/{a.manifest_digest.split(':')[1]}" in names
    annotations = index["manifests"][0]["annotations"]
    assert annotations["io.containerd.image.name"] == images.BUSYBOX_REF
    assert annotations["org.opencontainers.image.ref.name"] == "latest"


@pytest.mark.parametrize(("cmdline", "runtime"), [
    (["/usr/bin/containerd-shim-runc-v2", "-namespace", "gg", "-id", "c1"], True),
    (["/r/.venv/bin/python3", "/r/.venv/bin/containerd-shim-gvisorgpu-v1", "-id", "c1"], True),
    (["/r/.venv/bin/python3", "-m", "shim.manager.main", "start"], True),
    # Titles the shim's processes set: a daemon is one, its forkserver is not.
    (["containerd-shim-gvisorgpu-v1 -namespace gg -id c1 -address /tmp/gg-x/c.sock", "", ""],
     True),
    (["containerd-shim-gvisorgpu-v1 forkserver -address /tmp/gg-x/c.sock -containerd-pid 4",
      "", ""], False),
    (["runsc-sandbox", "--root=/tmp/gg-x/runsc/gg", "boot"], True),
    (["runsc-gofer", "--root=/tmp/gg-x/runsc/gg", "gofer"], True),
    (["/usr/bin/runsc", "--root", "/tmp/gg-x/runsc/gg", "wait", "c1"], True),
    (["/usr/bin/containerd", "--config", "/tmp/gg-x/config.toml"], False),
    (["/usr/bin/ctr", "--address", "/tmp/gg-x/c.sock", "run", "--runc-binary",
      "/tmp/gg-x/runsc-go", "img", "c1"], False),
    ([], False),
])
def test_leftover_process_markers(cmdline: list[str], runtime: bool) -> None:
    assert leftovers._is_runtime_process(cmdline) is runtime


def test_mounts_under_reads_escaped_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "27 1 254:0 / / rw - ext4 /dev/vda rw\n"
        "90 27 0:50 / /tmp/gg-a/state/x/rootfs rw - overlay overlay rw\n"
        "91 27 0:51 / /tmp/gg-a/with\\040space rw - tmpfs tmpfs rw\n"
        "92 27 0:52 / /tmp/gg-ab rw - tmpfs tmpfs rw\n")
    assert leftovers.mounts_under(Path("/tmp/gg-a"), str(info)) == [
        "/tmp/gg-a/state/x/rootfs", "/tmp/gg-a/with space"]


@pytest.mark.parametrize("version", ["1.6", "2.1"])
def test_config_has_both_handlers_and_the_machine_settings(version: str) -> None:
    text = cri.cri_config_toml(version, sandbox_image=images.PAUSE_REF,
                               cni_conf_dir=Path("/cni"), gvisorgpu_config=Path("/g.toml"))
    # The fragment follows the daemon's own [plugins] table, so it must parse under one.
    plugins = tomllib.loads(f"version = {3 if version == '2.1' else 2}\n{text}")["plugins"]
    if version == "2.1":
        runtime = plugins["io.containerd.cri.v1.runtime"]
        assert plugins["io.containerd.cri.v1.images"]["pinned_images"] == {
            "sandbox": images.PAUSE_REF}
        assert runtime["cni"]["bin_dirs"] == [cri.CNI_BIN_DIR]
        assert runtime["cdi_spec_dirs"] == []
    else:
        runtime = plugins["io.containerd.grpc.v1.cri"]
        assert runtime["sandbox_image"] == images.PAUSE_REF
        assert runtime["cni"]["bin_dir"] == cri.CNI_BIN_DIR
    assert plugins["io.containerd.grpc.v1.cri"]["stream_server_port"] == "0"
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["netns_mounts_under_state_dir"] is True
    assert runtime["cni"]["conf_dir"] == "/cni"
    handlers = runtime["containerd"]["runtimes"]
    assert runtime["containerd"]["default_runtime_name"] == cri.HANDLER_RUNC
    assert handlers[cri.HANDLER_RUNC] == {"runtime_type": cd.RUNTIME_RUNC}
    assert handlers[cri.HANDLER_GVISORGPU] == {
        "runtime_type": cd.RUNTIME_GVISORGPU,
        "pod_annotations": ["dev.gvisorgpu.*", "cdi.k8s.io/*"],
        "options": {"TypeUrl": "io.containerd.gvisorgpu.v1.options", "ConfigPath": "/g.toml"}}
