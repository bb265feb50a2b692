"""A private containerd for the e2e tests, and the ctr client that talks to it.

Each daemon lives entirely under one short temp dir (unix socket paths must
stay under 108 bytes): root, state, gRPC and ttrpc sockets, config, log, the
runsc root the tests hand to runtimes, and rootfs folders. containerd finds
shims on its PATH, which holds this repo's venv (for
containerd-shim-gvisorgpu-v1) and then the folder of the containerd binary in
use, so each version spawns *its own* containerd-shim-runc-v2.

Runtime options per ctr version (checked on 1.6.20, 1.7.24 and 2.1.9): all
three have `ctr run --runtime-config-path PATH`, which sends the generic
runtime options (`runtimeoptions.v1.Options`, field ConfigPath) for any
runtime except io.containerd.runc.v2; for runc.v2 ctr sends runc's own
options instead, built from `--runc-binary` (BinaryName), `--runc-root`
(Root) and `--runc-systemd-cgroup`, and refuses those three flags for any
other runtime. 1.7 and 2.1 also accept an absolute path as `--runtime`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests import paths
from tests.e2e import leftovers

RUNTIME_GVISORGPU = "io.containerd.gvisorgpu.v1"
RUNTIME_RUNC = "io.containerd.runc.v2"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Plugins a private test daemon must not load. CRI would listen for kubelets and
# set up CNI; NRI (2.x, on by default) listens on the global /var/run/nri socket;
# the rest only log noise here. In 2.x CRI is split into several plugins, and
# disabling only io.containerd.grpc.v1.cri still loads the others.
_NOISE = [
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.blockfile",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
]
_CRI = {
    1: ["io.containerd.grpc.v1.cri"],
    2: [
        "io.containerd.grpc.v1.cri",
        "io.containerd.cri.v1.images",
        "io.containerd.cri.v1.runtime",
        # Both fail to load without CRI's plugins; nothing outside CRI uses them.
        "io.containerd.podsandbox.controller.v1.podsandbox",
        "io.containerd.grpc.v1.sandbox-controllers",
    ],
}
_NRI = {1: [], 2: ["io.containerd.nri.v1.nri"]}
_CONFIG_VERSION = {1: 2, 2: 3}


def major(version: str) -> int:
    return int(version.split(".", 1)[0])


def containerd_binary(version: str) -> Path | None:
    """The containerd binary for "1.6", "1.7" or "2.1", if installed."""
    return paths.CONTAINERD.get(version)


def missing_for(version: str) -> str | None:
    """Why a containerd of `version` cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "e2e tests need root (containerd, mounts, runsc)"
    binary = containerd_binary(version)
    if binary is None:
        return f"containerd {version} is not installed (run scripts/install-deps)"
    for tool in ("ctr", "containerd-shim-runc-v2"):
        if not (binary.parent / tool).exists():
            return f"{tool} for containerd {version} is missing next to {binary}"
    return None


def short_tempdir(prefix: str = "gg-", parent: Path | None = None) -> Path:
    """A fresh temp dir with a short path (in /tmp or a short `parent`), so socket
    paths inside it fit sun_path."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=str(parent or "/tmp")))


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def runtime_config_toml(
    runsc: Path | str,
    root: Path | str,
    *,
    log_level: str = "",
    runsc_config: Mapping[str, object] | None = None,
    extra: Mapping[str, object] | None = None,
) -> str:
    """The shim's runtime config file, in the shape of gVisor's runsc.toml."""
    lines = [f"binary_name = {_toml_value(str(runsc))}", f"root = {_toml_value(str(root))}"]
    if log_level:
        lines.append(f"log_level = {_toml_value(log_level)}")
    lines += [f"{k} = {_toml_value(v)}" for k, v in (extra or {}).items()]
    lines.append("")
    lines.append("[runsc_config]")
    flags = {"network": "none", "platform": "systrap", **(runsc_config or {})}
    lines += [f"{k} = {_toml_value(v)}" for k, v in flags.items()]
    return "\n".join(lines) + "\n"


def gvisorgpu_args(config_path: Path | str) -> list[str]:
    """`ctr run` flags that pick this project's shim with a runtime config file."""
    return ["--runtime", RUNTIME_GVISORGPU, "--runtime-config-path", str(config_path)]


DEFAULT_RUNSC_FLAGS = ("--network=none", "--platform=systrap")


def write_runsc_wrapper(path: Path, runsc: Path | str,
                        flags: Sequence[str] = DEFAULT_RUNSC_FLAGS) -> Path:
    """A "runc" for containerd's Go shim that is runsc with fixed global flags.

    The runc shim puts its own global flags first (`--root R --log L
    --log-format json`, and `--systemd-cgroup` when asked), all of which runsc
    also accepts, so prepending ours keeps them global.
    """
    argv = " ".join(shlex.quote(a) for a in (str(runsc), *flags))
    path.write_text(f'#!/bin/sh\nexec {argv} "$@"\n')
    path.chmod(0o755)
    return path


def go_runsc_args(wrapper: Path | str, root: Path | str) -> list[str]:
    """`ctr run` flags for containerd's runc shim driving runsc through `wrapper`.

    The shim appends the namespace to `root` and passes that to runsc as --root.
    """
    return ["--runtime", RUNTIME_RUNC, "--runc-binary", str(wrapper), "--runc-root", str(root)]


class Ctr:
    """The ctr of one containerd version, bound to one daemon and namespace."""

    def __init__(self, binary: Path, address: str, namespace: str) -> None:
        self.binary, self.address, self.namespace = binary, address, namespace

    def with_namespace(self, namespace: str) -> Ctr:
        return Ctr(self.binary, self.address, namespace)

    def argv(self, *args: str) -> list[str]:
        return [str(self.binary), "--address", self.address, "--namespace", self.namespace,
                *args]

    def __call__(
        self,
        *args: str,
        input: str | bytes | None = None,
        timeout: float = 60.0,
        check: bool = False,
        text: bool | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[Any]:
        """Run ctr to completion. Output is text unless `input` is bytes or text=False.

        stdin is /dev/null when no input is given: `ctr run` always attaches
        stdin, and the test runner's own stdin must not leak into a container.
        """
        as_text = not isinstance(input, bytes) if text is None else text
        kwargs: dict[str, Any] = {"input": input} if input is not None else {
            "stdin": subprocess.DEVNULL}
        return subprocess.run(self.argv(*args), capture_output=True, text=as_text,
                              timeout=timeout, check=check,
                              env=dict(env) if env is not None else None, **kwargs)

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ctr without waiting (the caller owns, waits for and kills it)."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen(self.argv(*args), **kwargs)

    def run_with_stdin(self, *args: str, data: bytes, task: str,
                       timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:
        """`ctr run ... task ...` fed `data` on stdin, closed only once the task runs.

        containerd loses stdin's EOF if it comes before the task has started
        (with every shim, runc's included), and the container would then wait
        for input forever; so the data goes in only after `task` is RUNNING.
        """
        proc = self.popen(*args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if self.tasks().get(task, (0, ""))[1] in ("RUNNING", "STOPPED"):
                    break
                time.sleep(0.02)
            out, err = proc.communicate(data, timeout=max(deadline - time.monotonic(), 1.0))
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def lines(self, *args: str, timeout: float = 30.0) -> list[str]:
        out = self(*args, timeout=timeout, check=True).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def tasks(self) -> dict[str, tuple[int, str]]:
        """{task id: (pid, status)} from `ctr task ls`."""
        rows: dict[str, tuple[int, str]] = {}
        for line in self.lines("task", "ls")[1:]:
            parts = line.split()
            if len(parts) >= 3:
                rows[parts[0]] = (int(parts[1]), parts[2])
        return rows

    def containers(self) -> list[str]:
        return self.lines("containers", "ls", "-q")

    def namespaces(self) -> list[str]:
        return self.lines("namespaces", "ls", "-q")


class Containerd:
    """One private containerd daemon of a given version, restartable in place."""

    def __init__(
        self,
        version: str,
        workdir: Path | None = None,
        *,
        namespace: str = "gg",
        cri: bool = False,
        log_level: str = "debug",
        extra_config: str = "",
        path_dirs: Sequence[Path] = (),
    ) -> None:
        binary = containerd_binary(version)
        if binary is None:
            raise FileNotFoundError(f"containerd {version} is not installed")
        self.version, self.binary, self.bindir = version, binary, binary.parent
        self.workdir = workdir or short_tempdir()
        self.cri, self.log_level, self.extra_config = cri, log_level, extra_config
        self.path_dirs = [paths.SHIM.parent, *path_dirs]
        self.proc: subprocess.Popen[bytes] | None = None
        self.imported: set[str] = set()
        self.ctr = Ctr(self.bindir / "ctr", str(self.address), namespace)

    # Everything lives under workdir; names are short on purpose (sun_path).
    @property
    def address(self) -> Path:
        return self.workdir / "c.sock"

    @property
    def ttrpc_address(self) -> Path:
        return self.workdir / "c.sock.ttrpc"

    @property
    def root(self) -> Path:
        return self.workdir / "root"

    @property
    def state(self) -> Path:
        return self.workdir / "state"

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.toml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "containerd.log"

    @property
    def runsc_root(self) -> Path:
        """Where tests point runtimes' runsc state (the leftover check watches it)."""
        return self.workdir / "runsc"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def env(self) -> dict[str, str]:
        search = [str(p) for p in self.path_dirs] + [str(self.bindir), SYSTEM_PATH]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTAINERD_", "TTRPC_"))}
        env["PATH"] = ":".join(search)
        return env

    def config_toml(self) -> str:
        m = major(self.version)
        disabled = _NOISE + _NRI[m] + ([] if self.cri else _CRI[m])
        q = "'" if m >= 2 else '"'
        text = f"""\
version = {_CONFIG_VERSION[m]}
root = {_toml_value(str(self.root))}
state = {_toml_value(str(self.state))}
disabled_plugins = {_toml_value(disabled)}

[grpc]
  address = {_toml_value(str(self.address))}

[ttrpc]
  address = {_toml_value(str(self.ttrpc_address))}

[debug]
  level = {_toml_value(self.log_level)}

[plugins]
  [plugins.{q}io.containerd.internal.v1.opt{q}]
    path = {_toml_value(str(self.workdir / "opt"))}
"""
        return text + self.extra_config

    def start(self, timeout: float = 30.0) -> None:
        """Start the daemon (again, after stop) and wait until it answers."""
        if self.pid is not None:
            raise RuntimeError(f"containerd {self.version} already runs as {self.pid}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.runsc_root.mkdir(exist_ok=True)
        self.config_path.write_text(self.config_toml())
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env,
                cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd {self.version} exited with {self.proc.returncode}:"
                                   f"\n{self.log_tail()}")
            if self.address.exists() and self.ctr("version", timeout=5).returncode == 0:
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"containerd {self.version} did not answer in {timeout}s:"
                           f"\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL, the daemon this object started. Shims live on."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the daemon, as a crash would; shims live on. start() brings it back."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, timeout: float = 30.0) -> None:
        """Stop and start the same daemon (same root, state, sockets)."""
        self.stop()
        self.start(timeout)

    def remove_all(self, timeout: float = 30.0) -> list[str]:
        """Kill and delete every task and container in every namespace.

        Returns what had to be removed, so a caller can report leftovers.
        """
        removed: list[str] = []
        if self.pid is None:
            return removed
        for ns in self.ctr.namespaces():
            ctr = self.ctr.with_namespace(ns)
            for task in ctr.tasks():
                removed.append(f"task {ns}/{task}")
                ctr("task", "kill", "-s", "SIGKILL", task, timeout=timeout)
                ctr("task", "rm", "-f", task, timeout=timeout)
            for container in ctr.containers():
                removed.append(f"container {ns}/{container}")
                ctr("containers", "rm", container, timeout=timeout)
        return removed

    def import_image(self, archive: Path, ref: str, namespace: str | None = None,
                     timeout: float = 120.0) -> str:
        """`ctr images import` once per daemon and namespace; returns the reference."""
        ctr = self.ctr.with_namespace(namespace) if namespace else self.ctr
        key = f"{ctr.namespace}/{ref}"
        if key not in self.imported:
            ctr("images", "import", str(archive), timeout=timeout, check=True)
            self.imported.add(key)
        return ref

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def write_runtime_config(self, name: str = "gvisorgpu.toml", **kwargs: Any) -> Path:
        """A runtime config for the gvisorgpu shim, runsc 2024 by default."""
        runsc = kwargs.pop("runsc", None) or paths.RUNSC_2024
        if runsc is None:
            raise FileNotFoundError("runsc 20240729 is not installed")
        root = kwargs.pop("root", None) or self.runsc_root
        path = self.workdir / name
        path.write_text(runtime_config_toml(runsc, root, **kwargs))
        return path

    def close(self) -> None:
        """Remove every task and container, then stop the daemon (the temp dir stays)."""
        with contextlib.suppress(Exception):
            self.remove_all()
        self.stop()
        # runc and runsc remove a container's cgroup but not the namespace's
        # parent; rmdir only succeeds on an empty cgroup, so one in use stays.
        for parent in Path("/sys/fs/cgroup").glob(f"*/{self.ctr.namespace}"):
            with contextlib.suppress(OSError):
                parent.rmdir()


@contextlib.contextmanager
def running(version: str, **kwargs: Any) -> Iterator[Containerd]:
    """A started daemon; afterwards it is stopped and its temp dir removed."""
    daemon = Containerd(version, **kwargs)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.close()
        leftovers.kill_processes(daemon.workdir)
        leftovers.remove_tree(daemon.workdir)
