"""Pods through containerd's CRI plugin with the ``gvisorgpu`` handler, as a kubelet drives them.

Three things only a real containerd can show:

- a pod is one shim daemon and one runsc sandbox, however many app containers
  it has, and the daemon outlives any container but the last;
- a pod with its own network namespace (CNI bridge) works when gVisor uses the
  namespace's network stack (``network = "host"``), and the default ``auto``
  fails with a message that names the config key, since runsc refuses its own
  netstack (``--network=sandbox``) on these machines (DESIGN.md);
- whether a pod gets nvproxy is decided when its sandbox boots, from the
  kubelet's PodResources answer (a stand-in server of the real gRPC service), or,
  with no kubelet and only when the operator opts in, from the pod annotation;
  a GPU container in a pod booted without it is refused with the fix.
  ``nvproxy_driver_version`` is forced so runsc really boots with --nvproxy on
  this GPU-less host;
- a GPU container that crashes a pod's sandbox (runsc's sentry panics here)
  leaves nothing behind, and its error should say why.

Every test removes what it made and checks that nothing is left (``leftovers``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from grpclib.exceptions import GRPCError

from shim.api.k8s.cri.runtime import v1 as api
from shim.api.k8s.cri.runtime.v1 import ContainerState
from shim.api.k8s.podresources.v1 import PodResources
from tests import paths
from tests.e2e import containerd as cd
from tests.e2e import cri, images, leftovers
from tests.e2e import podresources_stub as kubelet
from tests.e2e.conftest import cri_module
from tests.e2e.test_gpu import CDI_SPEC

pytestmark = pytest.mark.e2e

GATEWAY = str(next(ipaddress.ip_network(cri.POD_SUBNET).hosts()))
DRIVER = "550.90.07"  # any driver runsc 20240729 supports; no GPU needed to boot with it
POD_ANNOTATION = "dev.gvisorgpu.nvproxy"
TASK_DIR = ("io.containerd.runtime.v2.task", cri.K8S_NAMESPACE)
SHIM_NAME = paths.SHIM.name


@dataclass(frozen=True)
class GpuFiles:
    """A CDI spec folder, and a character device numbered like /dev/nvidiactl."""

    cdi_dir: Path
    nvidiactl: Path


@pytest.fixture(scope="module")
def gpu_files(tmp_path_factory: pytest.TempPathFactory) -> GpuFiles:
    root = tmp_path_factory.mktemp("gpu")
    (root / "cdi").mkdir()
    (root / "cdi" / "nvidia.json").write_text(json.dumps(CDI_SPEC))
    # CRI copies a device's numbers from its host path, so a node made here
    # stands in for the real one: 195:255 is nvidiactl's.
    node = root / "nvidiactl"
    os.mknod(node, 0o600 | 0o020000, os.makedev(195, 255))
    return GpuFiles(root / "cdi", node)


@pytest.fixture(scope="module")
def cri_env(request: pytest.FixtureRequest, containerd_version: str, runsc_2024: Path,
            pause_image: images.Image, busybox_image: images.Image,
            gpu_files: GpuFiles) -> Iterator[cri.CriEnv]:
    """The gvisorgpu handler. CDI requests in container annotations reach the
    shim; 2.x also resolves them itself from the module's spec folder, as it
    does on a node."""
    if not paths.SHIM.exists():
        pytest.skip(f"{paths.SHIM.name} is not installed (pip install -e .)")
    with cri_module(request, containerd_version, runsc_2024, pause_image, busybox_image,
                    container_annotations=["cdi.k8s.io/*"],
                    cdi_spec_dirs=[str(gpu_files.cdi_dir)]) as env:
        yield env


# ---- what the tests look at ----

def _unquote(value: str) -> str:
    if not value.startswith('"'):
        return value
    try:  # the shim escapes only \\, \" and \n, as JSON does
        return str(json.loads(value))
    except ValueError:  # a Go-quoted value of containerd's own (\x1b...)
        return value[1:-1]


class ContainerdLog:
    """containerd's log from a point on: the shim's logfmt lines land there,
    each with ``runtime=io.containerd.gvisorgpu.v1``."""

    _FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
    _MARK = f"runtime={cd.RUNTIME_GVISORGPU} "

    def __init__(self, daemon: cd.Containerd) -> None:
        self.path = daemon.log_path
        self.start = self.path.stat().st_size

    def records(self) -> list[dict[str, str]]:
        with self.path.open("rb") as f:
            f.seek(self.start)
            text = f.read().decode(errors="replace")
        found = []
        for line in text.splitlines():
            if self._MARK not in line:
                continue
            fields = {k: _unquote(v) for k, v in self._FIELD.findall(line)}
            if "msg" in fields:
                found.append(fields)
        return found

    def created(self, container_id: str) -> dict[str, str]:
        """The shim's one "creating container" / "starting container with
        nvproxy" record for `container_id`."""
        msgs = ("creating container", "starting container with nvproxy")
        found = [r for r in self.records()
                 if r.get("msg") in msgs and r.get("container_id") == container_id]
        assert len(found) == 1, f"create records for {container_id}: {found}"
        return found[0]

    def messages(self, prefix: str) -> list[str]:
        return [r["msg"] for r in self.records() if r["msg"].startswith(prefix)]


def bundle(env: cri.CriEnv, container_id: str) -> Path:
    return env.daemon.state.joinpath(*TASK_DIR, container_id)


def shim_daemons(env: cri.CriEnv) -> list[psutil.Process]:
    """This containerd's shim daemons, by the title each one sets:
    ``containerd-shim-gvisorgpu-v1 -namespace NS -id GROUP -address ADDR``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        words = leftovers._words(proc.info["cmdline"] or [])
        if words[:2] == [SHIM_NAME, "-namespace"] and words[-1] == str(env.daemon.address):
            found.append(proc)
    return found


def sandboxes(env: cri.CriEnv) -> list[psutil.Process]:
    """runsc-sandbox processes (one per booted runsc sandbox) of this containerd."""
    return [p for p in leftovers.session_processes(env.daemon.workdir, env.daemon.pid)
            if p.info["cmdline"] and p.info["cmdline"][0] == "runsc-sandbox"]


def sandbox_of(env: cri.CriEnv, pod_id: str) -> psutil.Process:
    # Each pod's sandbox has a runsc root of its own, named after the pod.
    found = [p for p in sandboxes(env) if any(pod_id in a for a in p.info["cmdline"])]
    assert len(found) == 1, [p.info["cmdline"] for p in found]
    return found[0]


def assert_clean(env: cri.CriEnv) -> None:
    """Nothing left. Shim daemons are looked for separately as well: the suite's
    process check knows a shim by the first two words of its command, and the
    fast launcher makes the shim's name the third (``python3 -IS <launcher>``)."""
    assert env.leftovers() == []
    deadline = time.monotonic() + 5
    while shim_daemons(env) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [d.cmdline() for d in shim_daemons(env)] == []


def run_pod(env: cri.CriEnv, name: str, **kwargs: Any) -> cri.Pod:
    return env.cri.run_pod(name, handler=cri.HANDLER_GVISORGPU, **kwargs)


def start_sleeper(env: cri.CriEnv, pod: cri.Pod, name: str) -> str:
    cid = env.cri.create_container(pod, name, images.BUSYBOX_REF, ["sleep", "600"],
                                   env={"WHO": name})
    env.cri.start(cid)
    return cid


def wait_stopped(env: cri.CriEnv, container_id: str, timeout: float = 10) -> ContainerState:
    """A container's state once it is no longer running (or after `timeout`).
    A kubelet sees a container's exit in its status before it removes the pod;
    removing it earlier races containerd's own exit handling (its CRI plugin
    refuses to remove a pod whose container it still records as running)."""
    deadline = time.monotonic() + timeout
    while (state := env.cri.status(container_id).state) == ContainerState.CONTAINER_RUNNING \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    return state


def remove_pod(env: cri.CriEnv, pod: cri.Pod) -> None:
    env.cri.stop_pod(pod.id)
    env.cri.remove_pod(pod.id)


def test_app_container_with_a_terminal(env: cri.CriEnv) -> None:
    """`kubectl run -it` asks CRI for a tty: runsc hands the shim the pty at
    create, and what the container writes reaches the CRI log through it."""
    c = env.cri
    try:
        pod = run_pod(env, "tty")
        cid = c.create_container(pod, "shell", images.BUSYBOX_REF, ["sh", "-c"],
                                 ["echo hello-tty; [ -t 1 ] && echo is-a-tty; sleep 600"],
                                 tty=True, stdin=True)
        c.start(cid)
        assert c.status(cid).state == ContainerState.CONTAINER_RUNNING
        log = Path(pod.config.log_directory) / "shell/0.log"
        deadline = time.monotonic() + 20
        while b"is-a-tty" not in (log.read_bytes() if log.exists() else b""):
            assert time.monotonic() < deadline, log.read_bytes() if log.exists() else "no log"
            time.sleep(0.2)
        assert b"hello-tty" in log.read_bytes()
        assert c.exec_sync(cid, ["echo", "still here"]).stdout == b"still here\n"
        remove_pod(env, pod)
        assert env.leftovers() == []
    finally:
        env.reset()


# ---- 1. one shim and one sandbox per pod ----

def test_two_app_containers_share_one_shim_and_one_sandbox(env: cri.CriEnv) -> None:
    c = env.cri
    try:
        pod = run_pod(env, "two")
        first, second = start_sleeper(env, pod, "first"), start_sleeper(env, pod, "second")
        for cid, who in ((first, b"first\n"), (second, b"second\n")):
            assert c.status(cid).state == ContainerState.CONTAINER_RUNNING
            out = c.exec_sync(cid, ["sh", "-c", "echo $WHO"])
            assert (out.stdout, out.stderr, out.exit_code) == (who, b"", 0)

        daemons = shim_daemons(env)
        assert len(daemons) == 1, [d.cmdline() for d in daemons]
        daemon = daemons[0]
        assert Path(daemon.cwd()) == bundle(env, pod.id)  # started for the pause container
        addresses = {(bundle(env, i) / "address").read_text() for i in (pod.id, first, second)}
        assert len(addresses) == 1, addresses
        # The app containers joined the pause container's sandbox.
        assert [p.pid for p in sandboxes(env)] == [sandbox_of(env, pod.id).pid]
        # Grouped by pod, not one shim for everything: another pod gets its own.
        other = run_pod(env, "other")
        start_sleeper(env, other, "alone")
        others = [d for d in shim_daemons(env) if d != daemon]
        assert [Path(d.cwd()) for d in others] == [bundle(env, other.id)]
        remove_pod(env, other)

        c.stop(first, timeout=5)
        c.remove(first)
        assert c.container_ids(pod.id) == [second]
        time.sleep(1.0)  # a shim that wrongly shuts down does so right after the Delete
        assert daemon.is_running() and shim_daemons(env) == [daemon]
        assert c.status(second).state == ContainerState.CONTAINER_RUNNING
        out = c.exec_sync(second, ["sh", "-c", "echo $WHO"])
        assert (out.stdout, out.exit_code) == (b"second\n", 0)

        remove_pod(env, pod)
        assert_clean(env)
    finally:
        env.reset()


# ---- 2. a pod network namespace through CNI ----

@contextlib.contextmanager
def http_server(netns: Path, address: str, folder: Path, port: int = 8080) -> Iterator[Path]:
    """A web server for `folder` on `address` inside the fixture's network
    namespace, where the bridge and its gateway address live; yields its log."""
    log = folder.parent / f"{folder.name}.http.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["nsenter", f"--net={netns}", sys.executable, "-m", "http.server", "--bind",
             address, "--directory", str(folder), str(port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_cni_pod_with_host_network_mode_reaches_its_gateway(env: cri.CriEnv,
                                                            tmp_path: Path) -> None:
    """gVisor with --network=host uses the stack of the namespace its sandbox runs
    in: the pod's CNI namespace. Raw sockets (ping) need runsc's --net-raw too:
    without it busybox ping says "permission denied (are you root?)"."""
    env.configure(network="host", runsc_config={"net-raw": "true"})
    c = env.cri
    try:
        pod = run_pod(env, "cni", host_network=False)
        ip = c.pod_status(pod.id).status.network.ip
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(cri.POD_SUBNET)
        cid = start_sleeper(env, pod, "main")

        # The sandbox runs in the namespace CRI made and CNI wired up.
        netns = [m for m in leftovers.mounts_under(env.daemon.state) if "/netns/" in m]
        assert len(netns) == 1, netns
        sandbox = sandbox_of(env, pod.id)
        assert os.stat(f"/proc/{sandbox.pid}/ns/net").st_ino == os.stat(netns[0]).st_ino
        assert "--network=host" in sandbox.info["cmdline"]

        out = c.exec_sync(cid, ["ip", "-4", "-o", "addr", "show", "eth0"])
        assert out.exit_code == 0 and f" {ip}/" in out.stdout.decode(), out
        out = c.exec_sync(cid, ["cat", "/proc/net/route"])
        gateway_hex = ipaddress.ip_address(GATEWAY).packed[::-1].hex().upper()
        assert re.search(rf"^eth0\s+00000000\s+{gateway_hex}\s", out.stdout.decode(), re.M), out

        ping = c.exec_sync(cid, ["ping", "-c", "1", "-W", "5", GATEWAY])
        assert ping.exit_code == 0 and b"1 packets received" in ping.stdout, ping
        site = tmp_path / "site"
        site.mkdir()
        (site / "hello").write_text("hello from the gateway\n")
        with http_server(env.netns, GATEWAY, site) as server_log:
            # Retried while the server starts up.
            fetch = (f"for i in $(seq 100); do wget -q -O - http://{GATEWAY}:8080/hello "
                     "&& exit 0; sleep 0.1; done; exit 1")
            out = c.exec_sync(cid, ["sh", "-c", fetch])
        assert (out.stdout, out.exit_code) == (b"hello from the gateway\n", 0), (
            out, server_log.read_text())

        remove_pod(env, pod)
        assert_clean(env)
    finally:
        env.reset()


def test_cni_pod_with_default_network_mode_names_the_config_key(env: cri.CriEnv) -> None:
    """``auto`` with a namespace path means runsc's own netstack, which runsc
    refuses here in every namespace; the error must say what to set."""
    env.configure(network="auto")
    try:
        with pytest.raises(GRPCError) as failed:
            run_pod(env, "auto-net", host_network=False)
        message = failed.value.message or ""
        assert "cannot run with network enabled in root network namespace" in message
        assert "`network`" in message and 'network = "host"' in message, message
        assert_clean(env)
    finally:
        env.reset()


# ---- 3. nvproxy is decided when the pod's sandbox boots ----

@dataclass(frozen=True)
class SandboxCase:
    annotations: Mapping[str, str]
    # The kubelet's PodResources answer: {container: {resource: [device ids]}}; None = no kubelet.
    kubelet: Mapping[str, Mapping[str, list[str]]] | None
    nvproxy: bool
    reason: str  # in the create record's gpu_reasons
    lookup: str  # the "pod resources: ..." message
    accept_annotation: bool = False  # accept_pod_nvproxy_annotation
    ignored: str | None = None  # in the create record's gpu_ignored


NO_KUBELET = "pod resources: no kubelet pod-resources socket at {socket}"
NO_GPU_LOOKUP = "pod resources: kubelet Get: pod default/{pod} has no GPU devices"
SANDBOX_CASES = {
    "annotation-accepted": SandboxCase({POD_ANNOTATION: "true"}, None, True,
                                       f"annotation {POD_ANNOTATION}=true", NO_KUBELET,
                                       accept_annotation=True),
    "annotation-not-accepted": SandboxCase(
        {POD_ANNOTATION: "true"}, None, False, "without a kubelet GPU allocation", NO_KUBELET,
        ignored="accept_pod_nvproxy_annotation is off"),
    "annotation-kubelet-says-no": SandboxCase(
        {POD_ANNOTATION: "true"}, {"main": {"example.com/fpga": ["f0"]}}, False,
        "without a kubelet GPU allocation", NO_GPU_LOOKUP, accept_annotation=True,
        ignored="the kubelet answered, and it allocated no GPU"),
    "kubelet-gpu": SandboxCase({}, {"main": {"nvidia.com/gpu": ["GPU-0"]}}, True,
                               "the kubelet allocated GPUs to the pod",
                               "pod resources: kubelet Get: pod default/{pod} has GPU devices "
                               "GPU-0"),
    "kubelet-no-gpu": SandboxCase({}, {"main": {"example.com/fpga": ["f0"]}}, False,
                                  "without a kubelet GPU allocation", NO_GPU_LOOKUP),
    "neither": SandboxCase({}, None, False, "without a kubelet GPU allocation", NO_KUBELET),
}


@contextlib.contextmanager
def kubelet_serving(socket: Path, pods: list[PodResources] | None
                    ) -> Iterator[kubelet.PodResourcesStub | None]:
    if pods is None:
        yield None
        return
    with kubelet.serving_in_thread(socket, kubelet.PodResourcesStub(pods)) as stub:
        yield stub


@pytest.mark.parametrize("case_id", SANDBOX_CASES)
def test_nvproxy_is_decided_when_the_pod_sandbox_boots(env: cri.CriEnv, gpu_files: GpuFiles,
                                                       tmp_path: Path, case_id: str) -> None:
    case = SANDBOX_CASES[case_id]
    socket = tmp_path / "kubelet.sock"
    env.configure(nvproxy_driver_version=DRIVER, pod_resources_socket=str(socket),
                  cdi_spec_dirs=[str(gpu_files.cdi_dir)],
                  accept_pod_nvproxy_annotation=case.accept_annotation)
    name = f"gpu-{case_id}"[:40]
    stub_pods = None if case.kubelet is None else [kubelet.pod(name, "default", case.kubelet)]
    log = ContainerdLog(env.daemon)
    try:
        with kubelet_serving(socket, stub_pods) as stub:
            pod = run_pod(env, name, annotations=case.annotations)
        record = log.created(pod.id)
        assert (record["msg"] == "starting container with nvproxy") == case.nvproxy
        assert (record["nvproxy_enabled"], record["role"]) == (str(case.nvproxy).lower(),
                                                              "sandbox"), record
        assert case.reason in record["gpu_reasons"], record
        if case.ignored is not None:
            assert case.ignored in record.get("gpu_ignored", ""), record
        lookups = log.messages("pod resources:")
        assert lookups == [case.lookup.format(pod=name, socket=socket)]
        if stub is not None:
            assert stub.calls == ["Get"]

        args = sandbox_of(env, pod.id).info["cmdline"]
        nvproxy_args = [a for a in args if a.startswith("--nvproxy")]
        if case.nvproxy:
            assert {"--nvproxy=true", f"--nvproxy-driver-version={DRIVER}"} <= set(nvproxy_args)
        else:
            assert nvproxy_args == [], args
        # The sandbox really booted: an app container (no GPU) joins and runs.
        cid = start_sleeper(env, pod, "main")
        member = log.created(cid)
        assert (member["nvproxy_enabled"], member["role"]) == (str(case.nvproxy).lower(),
                                                              "member"), member
        assert env.cri.exec_sync(cid, ["echo", "up"]).stdout == b"up\n"

        remove_pod(env, pod)
        assert_clean(env)
    finally:
        env.reset()


def _gpu_container_config(how: str, gpu_files: GpuFiles) -> api.ContainerConfig:
    if how == "cdi-annotation":
        return cri.container_config("gpu", images.BUSYBOX_REF, ["sleep", "600"],
                                    annotations={"cdi.k8s.io/x": "nvidia.com/gpu=0"})
    config = cri.container_config("gpu", images.BUSYBOX_REF, ["sleep", "600"])
    config.devices = [api.Device(container_path="/dev/nvidiactl",
                                 host_path=str(gpu_files.nvidiactl), permissions="rwm")]
    return config


@pytest.mark.parametrize("how", ["cdi-annotation", "device-node"])
def test_gpu_container_in_a_pod_booted_without_nvproxy_is_refused(
        env: cri.CriEnv, gpu_files: GpuFiles, how: str) -> None:
    """CRI's CreateContainer only records the container; the shim sees it at
    StartContainer (task Create), so that is the call that is refused. The pod
    and its other containers must live on: they share the shim daemon."""
    env.configure(nvproxy_driver_version=DRIVER, cdi_spec_dirs=[str(gpu_files.cdi_dir)])
    c = env.cri
    try:
        pod = run_pod(env, f"cpu-{how}")
        bystander = start_sleeper(env, pod, "bystander")
        daemons = shim_daemons(env)
        request = api.CreateContainerRequest(pod_sandbox_id=pod.id, sandbox_config=pod.config,
                                             config=_gpu_container_config(how, gpu_files))
        gpu = c.call(c.runtime.create_container(request)).container_id
        with pytest.raises(GRPCError) as failed:
            c.start(gpu)
        message = failed.value.message or ""
        assert f"container {gpu}: it asks for a GPU" in message, message
        assert f"pod sandbox {pod.id} was booted without nvproxy" in message, message
        assert "resources.limits nvidia.com/gpu" in message, message
        assert 'nvproxy = "always"' in message, message
        if how == "cdi-annotation" and cd.major(env.daemon.version) >= 2:
            # 2.x's own CDI resolved the request from the spec folder first.
            assert "linux.devices has /dev/nvidia0" in message, message

        assert c.status(gpu).state != ContainerState.CONTAINER_RUNNING
        assert c.status(bystander).state == ContainerState.CONTAINER_RUNNING
        assert c.exec_sync(bystander, ["echo", "still here"]).stdout == b"still here\n"
        assert shim_daemons(env) == daemons and len(daemons) == 1

        c.remove(gpu)
        remove_pod(env, pod)
        assert_clean(env)
    finally:
        env.reset()


# ---- a GPU container in a pod booted with nvproxy, on a host without a GPU ----

@dataclass(frozen=True)
class Crash:
    message: str  # StartContainer's error
    bystander: api.ContainerState  # the other app container's state afterwards


def _start_gpu_member_without_a_gpu(env: cri.CriEnv, gpu_files: GpuFiles) -> Crash:
    """runsc 20240729's sentry panics here (nil pointer in runsc/boot.createDeviceFile,
    from containerManager.StartSubcontainer) when a container with the CDI
    spec's device nodes starts in a sandbox booted with --nvproxy and there is
    no GPU: the sandbox dies, and every container of the pod with it."""
    env.configure(nvproxy_driver_version=DRIVER, cdi_spec_dirs=[str(gpu_files.cdi_dir)],
                  accept_pod_nvproxy_annotation=True)
    c = env.cri
    pod = run_pod(env, "gpu-member", annotations={POD_ANNOTATION: "true"})
    bystander = start_sleeper(env, pod, "bystander")
    request = api.CreateContainerRequest(
        pod_sandbox_id=pod.id, sandbox_config=pod.config,
        config=_gpu_container_config("cdi-annotation", gpu_files))
    gpu = c.call(c.runtime.create_container(request)).container_id
    with pytest.raises(GRPCError) as failed:
        c.start(gpu)
    crash = Crash(failed.value.message or "", wait_stopped(env, bystander))
    c.remove(gpu)
    remove_pod(env, pod)
    assert_clean(env)
    return crash


def test_gpu_container_that_crashes_the_pod_sandbox_is_cleaned_up(
        env: cri.CriEnv, gpu_files: GpuFiles) -> None:
    try:
        crash = _start_gpu_member_without_a_gpu(env, gpu_files)
        assert 'urpc method "containerManager.StartSubcontainer" failed' in crash.message
        assert crash.bystander == ContainerState.CONTAINER_EXITED
    finally:
        env.reset()


def test_gpu_container_that_crashes_the_pod_sandbox_says_why(
        env: cri.CriEnv, gpu_files: GpuFiles) -> None:
    """As for a single container (test_gpu.py), the error must carry runsc's own
    reason, read back from the panic log, not a bare EOF."""
    try:
        crash = _start_gpu_member_without_a_gpu(env, gpu_files)
        assert "the sandbox crashed" in crash.message, crash.message
        assert "createDeviceFile" in crash.message, crash.message
    finally:
        env.reset()
