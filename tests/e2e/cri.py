"""Kubernetes' view of the shim: a CRI client and a private containerd with CRI.

``CriClient`` speaks CRI ``runtime.v1`` (grpclib with the stubs generated
from protos/k8s/cri) to containerd's gRPC socket, the way a kubelet does,
behind a synchronous face so e2e tests stay plain functions. ``cri_containerd``
starts a private containerd of a given version with the CRI plugin and two
runtime handlers, ``runc`` (containerd's Go shim and runc, the known-good
baseline) and ``gvisorgpu`` (this project's shim), a pause image built here
as the sandbox image, and CNI ready for pods with their own network.

Networking never touches the host's: containerd runs inside a network
namespace the fixture creates (kept by a bind-mounted nsfs file in a temp
dir of its own), so the CNI bridge, its gateway address and each pod's veth live there and
vanish with it. Pods on the "node" network share that namespace too. IPAM
state lives under the temp dir as well; pod network namespaces are mounted
under containerd's state dir (``netns_mounts_under_state_dir``).

    with cri_containerd("2.1", images=[pause, busybox]) as env:
        pod = env.cri.run_pod("web", handler="runc")
        cid = env.cri.create_container(pod, "main", busybox.ref, ["sleep", "600"])
        env.cri.start(cid)
        assert env.cri.exec_sync(cid, ["echo", "hi"]).stdout == b"hi\\n"
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import subprocess
import time
import tomllib
import uuid
from collections.abc import Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from grpclib.client import Channel

from shim.api.k8s.cri.runtime import v1 as api
from tests.e2e import containerd as cd
from tests.e2e import leftovers
from tests.e2e.images import PAUSE_REF

T = TypeVar("T")

HANDLER_RUNC = "runc"
HANDLER_GVISORGPU = "gvisorgpu"
K8S_NAMESPACE = "k8s.io"  # containerd namespace of everything CRI makes


@dataclass(frozen=True)
class Pod:
    """A pod sandbox CRI runs: its id and the config it was made with
    (CreateContainer must send that config again)."""

    id: str
    config: api.PodSandboxConfig
    handler: str


def pod_config(
    name: str,
    *,
    namespace: str = "default",
    uid: str | None = None,
    log_directory: str = "",
    hostname: str = "",
    host_network: bool = True,
    cgroup_parent: str = "",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    host_ipc: bool = False,
) -> api.PodSandboxConfig:
    """A PodSandboxConfig shaped like the kubelet's, trimmed to what tests vary.

    PID namespace CONTAINER is what the kubelet sends for every v1 pod unless
    shareProcessNamespace is set; network NODE is hostNetwork (no CNI).
    """
    mode = api.NamespaceMode  # mode(...): mypy types betterproto's enum members as ints
    network = mode(mode.NODE if host_network else mode.POD)
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace=namespace,
                                        uid=uid or str(uuid.uuid4())),
        hostname=hostname or ("" if host_network else name),
        log_directory=log_directory,
        labels=dict(labels or {}),
        annotations=dict(annotations or {}),
        linux=api.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent,
            security_context=api.LinuxSandboxSecurityContext(namespace_options=api.NamespaceOption(
                network=network, pid=mode(mode.CONTAINER),
                ipc=mode(mode.NODE if host_ipc else mode.POD))),
        ),
    )


def container_config(
    name: str,
    image: str,
    command: Sequence[str] = (),
    args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    working_dir: str = "",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    log_path: str = "",
    memory_limit: int = 0,
    tty: bool = False,
    stdin: bool = False,
    seccomp: api.SecurityProfile | None = None,
) -> api.ContainerConfig:
    """A ContainerConfig; an empty command or args keeps the image's."""
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name=name),
        image=api.ImageSpec(image=image),
        command=list(command),
        args=list(args),
        working_dir=working_dir,
        envs=[api.KeyValue(key=k, value=v) for k, v in (env or {}).items()],
        labels=dict(labels or {}),
        annotations=dict(annotations or {}),
        log_path=log_path or f"{name}/0.log",
        tty=tty,
        stdin=stdin,
        linux=api.LinuxContainerConfig(
            resources=api.LinuxContainerResources(memory_limit_in_bytes=memory_limit),
            security_context=None if seccomp is None else api.LinuxContainerSecurityContext(
                seccomp=seccomp)),
    )


class CriClient:
    """CRI over containerd's gRPC socket, one call at a time, synchronously.

    Each call runs on a private event loop owned by this object, so tests
    need no asyncio. `timeout` bounds every call (seconds). Pods get their log
    folder under `log_root` and their cgroup under `cgroup_root` (a cgroupfs
    path), as a kubelet would choose them.
    """

    def __init__(self, address: Path | str, *, log_root: Path | None = None,
                 cgroup_root: str = "", timeout: float = 60.0) -> None:
        self.address, self.log_root, self.cgroup_root = str(address), log_root, cgroup_root
        self._loop = asyncio.new_event_loop()
        self._channel = self.call(self._open())
        self.runtime = api.RuntimeServiceStub(self._channel, timeout=timeout)
        self.images = api.ImageServiceStub(self._channel, timeout=timeout)

    async def _open(self) -> Channel:
        return Channel(path=self.address)  # grpclib binds the channel to the running loop

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Any stub call, e.g. ``cri.call(cri.runtime.list_pod_sandbox(...))``."""
        return self._loop.run_until_complete(coro)

    def close(self) -> None:
        if not self._loop.is_closed():
            self._channel.close()
            self._loop.run_until_complete(asyncio.sleep(0))  # let the transport close
            self._loop.close()

    # ---- runtime ----

    def version(self) -> api.VersionResponse:
        return self.call(self.runtime.version(api.VersionRequest(version="v1")))

    def conditions(self) -> dict[str, tuple[bool, str]]:
        """{condition type: (status, reason + message)}, e.g. RuntimeReady, NetworkReady."""
        status = self.call(self.runtime.status(api.StatusRequest())).status
        return {c.type: (c.status, f"{c.reason} {c.message}".strip())
                for c in status.conditions}

    def wait_ready(self, network: bool = True, timeout: float = 30.0) -> None:
        """Until CRI reports itself (and, with `network`, its CNI config) ready."""
        want = ("RuntimeReady", "NetworkReady") if network else ("RuntimeReady",)
        deadline = time.monotonic() + timeout
        while True:
            conditions = self.conditions()
            if all(conditions.get(w, (False, ""))[0] for w in want):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRI not ready after {timeout}s: {conditions}")
            time.sleep(0.1)

    # ---- pods ----

    def run_pod(self, name: str, *, handler: str = HANDLER_RUNC, host_network: bool = True,
                namespace: str = "default", **kwargs: Any) -> Pod:
        """RunPodSandbox with a kubelet-like config (see ``pod_config`` for kwargs)."""
        uid = kwargs.pop("uid", None) or str(uuid.uuid4())
        if self.log_root is not None and "log_directory" not in kwargs:
            log_dir = self.log_root / f"{namespace}_{name}_{uid}"
            log_dir.mkdir(parents=True, exist_ok=True)
            kwargs["log_directory"] = str(log_dir)
        if self.cgroup_root and "cgroup_parent" not in kwargs:
            kwargs["cgroup_parent"] = f"{self.cgroup_root}/pod{uid}"
        config = pod_config(name, namespace=namespace, uid=uid, host_network=host_network,
                            **kwargs)
        response = self.call(self.runtime.run_pod_sandbox(
            api.RunPodSandboxRequest(config=config, runtime_handler=handler)))
        return Pod(response.pod_sandbox_id, config, handler)

    def pod_status(self, pod_id: str, verbose: bool = False) -> api.PodSandboxStatusResponse:
        return self.call(self.runtime.pod_sandbox_status(
            api.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose)))

    def pod_ids(self) -> list[str]:
        return [p.id for p in self.call(
            self.runtime.list_pod_sandbox(api.ListPodSandboxRequest())).items]

    def stop_pod(self, pod_id: str) -> None:
        self.call(self.runtime.stop_pod_sandbox(
            api.StopPodSandboxRequest(pod_sandbox_id=pod_id)))

    def remove_pod(self, pod_id: str) -> None:
        self.call(self.runtime.remove_pod_sandbox(
            api.RemovePodSandboxRequest(pod_sandbox_id=pod_id)))

    # ---- containers ----

    def create_container(self, pod: Pod, name: str, image: str,
                         command: Sequence[str] = (), args: Sequence[str] = (),
                         **kwargs: Any) -> str:
        """CreateContainer in `pod` (see ``container_config`` for kwargs); its id."""
        config = container_config(name, image, command, args, **kwargs)
        response = self.call(self.runtime.create_container(api.CreateContainerRequest(
            pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config)))
        return response.container_id

    def start(self, container_id: str) -> None:
        self.call(self.runtime.start_container(
            api.StartContainerRequest(container_id=container_id)))

    def exec_sync(self, container_id: str, cmd: Sequence[str],
                  timeout: int = 30) -> api.ExecSyncResponse:
        return self.call(self.runtime.exec_sync(
            api.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout),
            timeout=timeout + 10))

    def stats(self, container_id: str) -> api.ContainerStats:
        return self.call(self.runtime.container_stats(
            api.ContainerStatsRequest(container_id=container_id))).stats

    def status(self, container_id: str) -> api.ContainerStatus:
        return self.call(self.runtime.container_status(
            api.ContainerStatusRequest(container_id=container_id))).status

    def stop(self, container_id: str, timeout: int = 0) -> None:
        self.call(self.runtime.stop_container(
            api.StopContainerRequest(container_id=container_id, timeout=timeout),
            timeout=timeout + 60))

    def remove(self, container_id: str) -> None:
        self.call(self.runtime.remove_container(
            api.RemoveContainerRequest(container_id=container_id)))

    def container_ids(self, pod_id: str = "") -> list[str]:
        request = api.ListContainersRequest(filter=api.ContainerFilter(pod_sandbox_id=pod_id))
        return [c.id for c in self.call(self.runtime.list_containers(request)).containers]

    def remove_everything(self) -> list[str]:
        """Stop and remove every container and pod CRI knows; what was there."""
        found = [f"cri container {c}" for c in self.container_ids()]
        found += [f"cri pod {p}" for p in self.pod_ids()]
        for pod_id in self.pod_ids():
            with contextlib.suppress(Exception):
                self.stop_pod(pod_id)
            with contextlib.suppress(Exception):
                self.remove_pod(pod_id)
        return found


# ---- a private containerd with CRI ----

POD_SUBNET = "10.213.0.0/24"  # only ever routed inside the fixture's own network namespace
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
# What the gvisorgpu handler passes through from pods: the shim's own knob
# (dev.gvisorgpu.nvproxy) and, unlike the shipped config, CDI requests too, so
# the tests see the shim ignore a pod author's CDI annotation even when an
# operator's containerd still forwards it.
POD_ANNOTATIONS = ("dev.gvisorgpu.*", "cdi.k8s.io/*")
OPTIONS_TYPE_URL = "io.containerd.gvisorgpu.v1.options"


def cni_conflist(name: str, bridge: str, ipam_dir: Path,
                 subnet: str = POD_SUBNET, *, port_map: bool = False) -> dict[str, Any]:
    """A bridge network; CRI adds the loopback network itself (from the same bin dir).

    No ipMasq: it would program iptables for traffic leaving the namespace,
    and none does. `port_map` adds the portmap plugin for pods' hostPorts
    (CRI hands it the mappings through the portMappings capability); its
    iptables rules live in the fixture's network namespace and go with it.
    host-local keeps its leases under `ipam_dir` instead of /var/lib/cni/networks.
    """
    plugins: list[dict[str, Any]] = [{
        "type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(ipam_dir)},
    }]
    if port_map:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    return {"cniVersion": "1.0.0", "name": name, "plugins": plugins}


def cri_config_toml(version: str, *, sandbox_image: str, cni_conf_dir: Path,
                    gvisorgpu_config: Path | None = None,
                    pod_annotations: Sequence[str] = POD_ANNOTATIONS,
                    container_annotations: Sequence[str] = (),
                    cdi_spec_dirs: Sequence[str] = (),
                    registry_config_path: Path | None = None) -> str:
    """The CRI part of a private containerd's config, version 2 (1.x) or 3 (2.x).

    restrict_oom_score_adj: CRI gives the pause container oom_score_adj -998,
    which needs CAP_SYS_RESOURCE, and root here lacks it; restricted, CRI
    never goes below containerd's own score. netns_mounts_under_state_dir keeps
    pod network namespaces out of /var/run/netns. The streaming server (exec,
    attach, port-forward URLs) takes a free port. Handler options use Go field
    names (TypeUrl, ConfigPath): CRI decodes the TOML table into the Go struct.
    The gvisorgpu handler matches scripts/kubernetes/containerd-v*.toml;
    `container_annotations` (container annotations CRI copies into the OCI
    spec, e.g. ``cdi.k8s.io/*``) is added to it only when given.
    `cdi_spec_dirs` are the folders 2.x's own CDI support (on by default)
    resolves ``cdi.k8s.io/*`` requests from; 1.6's CRI has no CDI.
    `registry_config_path` is a folder of ``<registry>/hosts.toml`` files
    (mirrors, plain-HTTP hosts) CRI's image pulls follow.
    """
    v = cd._toml_value
    if cd.major(version) >= 2:
        # 2.x splits CRI: images (sandbox image), runtime (the rest), and the
        # gRPC front that still holds the streaming server.
        runtime = "'io.containerd.cri.v1.runtime'"
        text = ("[plugins.'io.containerd.cri.v1.images'.pinned_images]\n"
                f"  sandbox = {v(sandbox_image)}\n"
                "[plugins.'io.containerd.grpc.v1.cri']\n"
                "  stream_server_address = '127.0.0.1'\n  stream_server_port = '0'\n"
                f"[plugins.{runtime}]\n"
                # No host CDI specs; GPU tests bring their own.
                f"  cdi_spec_dirs = {v(list(cdi_spec_dirs))}\n")
        cni_bin = f"  bin_dirs = [{v(CNI_BIN_DIR)}]\n"
        registry = "plugins.'io.containerd.cri.v1.images'.registry"
    else:
        runtime = '"io.containerd.grpc.v1.cri"'
        text = (f"[plugins.{runtime}]\n  sandbox_image = {v(sandbox_image)}\n"
                '  stream_server_address = "127.0.0.1"\n  stream_server_port = "0"\n')
        cni_bin = f"  bin_dir = {v(CNI_BIN_DIR)}\n"
        registry = f"plugins.{runtime}.registry"
    text += ("  restrict_oom_score_adj = true\n  netns_mounts_under_state_dir = true\n"
             f"[plugins.{runtime}.cni]\n{cni_bin}"
             f"  conf_dir = {v(str(cni_conf_dir))}\n  max_conf_num = 1\n"
             f"[plugins.{runtime}.containerd]\n  default_runtime_name = {v(HANDLER_RUNC)}\n"
             f"[plugins.{runtime}.containerd.runtimes.{HANDLER_RUNC}]\n"
             f"  runtime_type = {v(cd.RUNTIME_RUNC)}\n")
    if gvisorgpu_config is not None:
        table = f"plugins.{runtime}.containerd.runtimes.{HANDLER_GVISORGPU}"
        text += (f"[{table}]\n  runtime_type = {v(cd.RUNTIME_GVISORGPU)}\n"
                 f"  pod_annotations = {v(list(pod_annotations))}\n")
        if container_annotations:
            text += f"  container_annotations = {v(list(container_annotations))}\n"
        text += (f"[{table}.options]\n  TypeUrl = {v(OPTIONS_TYPE_URL)}\n"
                 f"  ConfigPath = {v(str(gvisorgpu_config))}\n")
    if registry_config_path is not None:
        text += f"[{registry}]\n  config_path = {v(str(registry_config_path))}\n"
    return text


def _sh(*argv: str) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")


def create_netns(path: Path) -> None:
    """A new network namespace kept alive by a bind mount at `path`, loopback up."""
    path.touch()
    _sh("unshare", f"--net={path}", "true")
    _sh("nsenter", f"--net={path}", "ip", "link", "set", "lo", "up")


def in_netns(path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run `argv` in the network namespace at `path` (e.g. ``ip -j link``)."""
    return subprocess.run(["nsenter", f"--net={path}", *argv], capture_output=True, text=True,
                          timeout=30, check=False)


def _run_in_netns(daemon: cd.Containerd, netns: Path) -> None:
    # Containerd.start runs `binary --config ...`; nsenter execs the real
    # binary, so the pid the daemon object tracks is containerd's own.
    wrapper = daemon.workdir / "containerd-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec nsenter --net={netns} {daemon.binary} "$@"\n')
    wrapper.chmod(0o755)
    daemon.binary = wrapper


def _cgroup_dirs(root: str) -> list[Path]:
    """The cgroup dirs at or below `root` in every hierarchy, deepest first."""
    tops = [p for p in Path("/sys/fs/cgroup").glob("*" + root) if p.is_dir()]  # v1
    tops += [p for p in [Path("/sys/fs/cgroup" + root)] if p.is_dir()]  # v2
    found = {d for top in tops for d in [top, *top.rglob("*")] if d.is_dir()}
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


# libcni caches each attachment's result here (containerd has no setting for
# it) and deletes the file on CNI DEL; the empty folders it leaves behind on a
# machine without Kubernetes are removed again on teardown.
CNI_CACHE = Path("/var/lib/cni")


@dataclass
class CriEnv:
    """A running containerd with CRI, its client, and what the fixture set up."""

    daemon: cd.Containerd
    cri: CriClient
    netns: Path
    network: str
    bridge: str
    cgroup_root: str
    handlers: tuple[str, ...]
    runtime_config: Path | None = None
    images: dict[str, str] = field(default_factory=dict)

    def leftovers(self, grace: float = 5.0) -> list[str]:
        """What remains once every pod is gone: CRI objects, containerd tasks and
        containers, shims and sandboxes, mounts, runsc state, container cgroups,
        IP leases, CNI results and veths. Empty when clean."""
        deadline = time.monotonic() + grace
        while True:
            found = self._find()
            if not found or time.monotonic() >= deadline:
                return found
            time.sleep(0.1)

    def _find(self) -> list[str]:
        ctr = self.daemon.ctr
        found = [f"cri pod {p}" for p in self.cri.pod_ids()]
        found += [f"cri container {c}" for c in self.cri.container_ids()]
        found += [f"containerd task {t}" for t in ctr.tasks()]
        found += [f"containerd container {c}" for c in ctr.containers()]
        found += leftovers.find(self.daemon.workdir, self.daemon.runsc_root, self.daemon.pid)
        # Pod cgroups (root/pod<uid>) are the kubelet's to remove; the ones below are not.
        found += [f"cgroup {p}" for p in _cgroup_dirs(self.cgroup_root)
                  if len(p.parts) > len(Path("/sys/fs/cgroup/x" + self.cgroup_root).parts) + 1]
        ipam = self.daemon.workdir / "cni" / "ipam"
        found += [f"IP lease {p}" for p in ipam.rglob("*") if p.is_file() and p.name[0].isdigit()]
        found += [f"CNI result {p}" for p in CNI_CACHE.glob(f"results/{self.network}-*")]
        links = json.loads(in_netns(self.netns, "ip", "-j", "link").stdout or "[]")
        found += [f"link {link['ifname']}" for link in links
                  if link["ifname"] not in ("lo", self.bridge)]
        return found

    def configure(self, *, network: str = "none",
                  runsc_config: Mapping[str, str] | None = None,
                  **settings: object) -> Path:
        """Rewrite the gvisorgpu handler's runtime config file in place.

        The shim reads it at every task Create, so the next pod sandbox (and
        the flags it boots with) follows it; app containers keep their
        sandbox's flags. Keeps the fixture's runsc and root; `network` is the
        top-level key (``auto`` included), `settings` are other top-level
        keys (nvproxy_driver_version, cdi_spec_dirs, pod_resources_socket...),
        `runsc_config` extra runsc flags beside platform systrap.
        """
        if self.runtime_config is None:
            raise RuntimeError("this containerd has no gvisorgpu handler")
        old = tomllib.loads(self.runtime_config.read_text())
        v = cd._toml_value
        top = {"binary_name": old["binary_name"], "root": old["root"], "network": network,
               **settings}
        flags = {"platform": "systrap", **(runsc_config or {})}
        self.runtime_config.write_text(
            "".join(f"{k} = {v(val)}\n" for k, val in top.items()) + "\n[runsc_config]\n"
            + "".join(f"{k} = {v(val)}\n" for k, val in flags.items()))
        return self.runtime_config

    def reset(self) -> list[str]:
        """Remove everything a test left, as far as possible; what was left."""
        found = self.leftovers(grace=0.5)
        if found:
            with contextlib.suppress(Exception):
                self.cri.remove_everything()
            self.daemon.remove_all()
            leftovers.clean(self.daemon.workdir, self.daemon.runsc_root, self.daemon.pid)
        return found


@contextlib.contextmanager
def cri_containerd(
    version: str,
    *,
    images: Iterable[tuple[Path, str]] = (),
    sandbox_image: str = PAUSE_REF,
    runsc: Path | None = None,
    runtime_config: Mapping[str, Any] | None = None,
    pod_annotations: Sequence[str] = POD_ANNOTATIONS,
    container_annotations: Sequence[str] = (),
    cdi_spec_dirs: Sequence[str] = (),
    registry_config_path: Path | None = None,
    port_map: bool = False,
    tmp_root: Path | None = None,
    keep_dir: bool = False,
) -> Iterator[CriEnv]:
    """A private containerd `version` with CRI: handler runc, and gvisorgpu when
    `runsc` is given (its config file from ``Containerd.write_runtime_config``
    with `runtime_config` as keyword arguments; ``CriEnv.configure`` rewrites
    it). `container_annotations`, `cdi_spec_dirs` and `registry_config_path`:
    see ``cri_config_toml``; `port_map`: see ``cni_conflist``. The daemon's
    and the namespace's temp dirs are made in `tmp_root` when given (a short path).

    `images` are (archive, reference) pairs imported into the k8s.io
    namespace; `sandbox_image` must be one of them unless a registry can
    serve it (`registry_config_path`). On
    exit every pod is removed, the daemon stopped, leftover shims and sandboxes
    killed, and the network namespace, temp dirs and cgroups removed.
    """
    workdir, nsdir = cd.short_tempdir("gc-", tmp_root), cd.short_tempdir("gn-", tmp_root)
    tag = secrets.token_hex(4)
    netns, network, cgroup_root = nsdir / "net", f"gg-{tag}", f"/gg-cri-{tag}"
    had_cni_cache = CNI_CACHE.exists()
    daemon: cd.Containerd | None = None
    cri: CriClient | None = None
    try:
        create_netns(netns)
        conf_dir = workdir / "cni" / "net.d"
        conf_dir.mkdir(parents=True)
        bridge = f"gg{tag}"
        (conf_dir / "10-gg.conflist").write_text(
            json.dumps(cni_conflist(network, bridge, workdir / "cni" / "ipam",
                                    port_map=port_map), indent=1))
        daemon = cd.Containerd(version, workdir, namespace=K8S_NAMESPACE, cri=True)
        config_path = None
        if runsc is not None:
            config_path = daemon.write_runtime_config(runsc=runsc, **dict(runtime_config or {}))
        daemon.extra_config = cri_config_toml(
            version, sandbox_image=sandbox_image, cni_conf_dir=conf_dir,
            gvisorgpu_config=config_path, pod_annotations=pod_annotations,
            container_annotations=container_annotations, cdi_spec_dirs=cdi_spec_dirs,
            registry_config_path=registry_config_path)
        _run_in_netns(daemon, netns)
        daemon.start()
        cri = CriClient(daemon.address, log_root=workdir / "pods", cgroup_root=cgroup_root)
        handlers = (HANDLER_RUNC, HANDLER_GVISORGPU) if config_path else (HANDLER_RUNC,)
        env = CriEnv(daemon, cri, netns, network, bridge, cgroup_root, handlers, config_path)
        for archive, ref in images:
            env.images[ref] = daemon.import_image(archive, ref, namespace=K8S_NAMESPACE)
        cri.wait_ready()
        yield env
    finally:
        if cri is not None:
            with contextlib.suppress(Exception):
                cri.remove_everything()
            cri.close()
        if daemon is not None:
            daemon.close()
        leftovers.kill_processes(workdir)
        for path in _cgroup_dirs(cgroup_root):
            with contextlib.suppress(OSError):
                path.rmdir()
        for path in CNI_CACHE.glob(f"results/{network}-*"):
            path.unlink(missing_ok=True)
        if not had_cni_cache:
            for path in (CNI_CACHE / "results", CNI_CACHE):
                with contextlib.suppress(OSError):
                    path.rmdir()
        leftovers.remove_tree(nsdir)  # unmounting the nsfs file ends the namespace
        if not keep_dir:
            leftovers.remove_tree(workdir)
