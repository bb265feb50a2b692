"""Fixtures for the e2e tests: private containerd daemons, ctr, images, runtimes.

Tests take `containerd` (or just `ctr`) and run once per containerd version
chosen with `--containerd` (default 1.6 and 2.1). One daemon per version lives
for the whole session; after every test that used it the suite fails the test
if it left containers, runsc state, mounts or shim/runsc processes behind, and
then clears them so the next test starts clean.

    def test_echo(ctr, busybox, gvisorgpu, container_id):
        out = ctr("run", "--rm", *gvisorgpu, busybox, container_id(), "echo", "hi")
        assert out.stdout == "hi\\n"
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import signal
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import paths
from tests.e2e import containerd as cd
from tests.e2e import cri, images, leftovers


class ContainerdPool:
    """At most one private daemon per version for the session, started on demand."""

    def __init__(self, keep_dirs: bool) -> None:
        self.daemons: dict[str, cd.Containerd] = {}
        self.keep_dirs = keep_dirs

    def get(self, version: str) -> cd.Containerd:
        why = cd.missing_for(version)
        if why is not None:
            pytest.skip(why)
        daemon = self.daemons.get(version)
        if daemon is None:
            daemon = self.daemons[version] = cd.Containerd(version)
        if daemon.pid is None:  # first use, or a test stopped it and did not restart it
            daemon.start()
        return daemon

    def close(self) -> None:
        for daemon in self.daemons.values():
            daemon.close()
            leftovers.kill_processes(daemon.workdir)
            if not self.keep_dirs:
                leftovers.remove_tree(daemon.workdir)


def _pinned(metafunc: pytest.Metafunc) -> bool:
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", "")
        if "containerd_version" in (names.split(",") if isinstance(names, str) else names):
            return True
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test that uses a daemon once per --containerd version, unless the
    test pins versions itself: @pytest.mark.parametrize("containerd_version", ["2.1"])."""
    if "containerd_version" in metafunc.fixturenames and not _pinned(metafunc):
        opt = str(metafunc.config.getoption("containerd_versions"))
        versions = [v.strip() for v in opt.split(",") if v.strip()]
        metafunc.parametrize("containerd_version", versions, scope="session")


@pytest.fixture(scope="session")
def containerd_pool(request: pytest.FixtureRequest) -> Iterator[ContainerdPool]:
    pool = ContainerdPool(bool(request.config.getoption("keep_e2e_dirs")))
    # A SIGTERM (a CI time-out) would otherwise skip teardown and leave daemons,
    # shims and sandboxes running; as KeyboardInterrupt, pytest still tears down.
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield pool
    finally:
        pool.close()
        if previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def check_after_test(daemon: cd.Containerd) -> list[str]:
    """What a test left behind in `daemon` (and its temp dir), after a grace period."""
    if daemon.pid is None:
        daemon.start()
    found = []
    for ns in daemon.ctr.namespaces():
        ctr = daemon.ctr.with_namespace(ns)
        found += [f"containerd task {ns}/{t}" for t in ctr.tasks()]
        found += [f"containerd container {ns}/{c}" for c in ctr.containers()]
    return found + leftovers.wait_clean(daemon.workdir, daemon.runsc_root, daemon.pid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, show the end of the daemon's log (shim errors land there)."""
    report = yield
    daemon = getattr(item, "funcargs", {}).get("containerd")
    if report.failed and isinstance(daemon, cd.Containerd):
        report.sections.append((f"containerd {daemon.version} log ({daemon.log_path})",
                                daemon.log_tail(60)))
    return report


@pytest.fixture
def containerd(containerd_pool: ContainerdPool, containerd_version: str) -> Iterator[cd.Containerd]:
    """The running private containerd of this test's version; checked for leftovers after."""
    daemon = containerd_pool.get(containerd_version)
    yield daemon
    found = check_after_test(daemon)
    if found:
        daemon.remove_all()
        leftovers.clean(daemon.workdir, daemon.runsc_root, daemon.pid)
        pytest.fail(f"the test left these behind (containerd {daemon.version}, "
                    f"{daemon.workdir}):\n  " + "\n  ".join(found), pytrace=False)


@pytest.fixture
def ctr(containerd: cd.Containerd) -> cd.Ctr:
    """ctr of the matching version, bound to the private daemon and namespace "gg"."""
    return containerd.ctr


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="session")
def busybox_image(image_dir: Path) -> images.Image:
    if images.busybox_path() is None:
        pytest.skip("busybox is not installed (apt-get install busybox-static)")
    return images.build_busybox_image(image_dir / "busybox.tar")


@pytest.fixture(scope="session")
def pause_image(image_dir: Path) -> images.Image:
    if images.busybox_path() is None:
        pytest.skip("busybox is not installed (apt-get install busybox-static)")
    return images.build_pause_image(image_dir / "pause.tar")


@pytest.fixture
def busybox(containerd: cd.Containerd, busybox_image: images.Image) -> str:
    """The busybox image imported into this daemon (namespace "gg"); its reference."""
    return containerd.import_image(busybox_image.archive, busybox_image.ref)


@pytest.fixture
def pause(containerd: cd.Containerd, pause_image: images.Image) -> str:
    """The stand-in pause image imported into this daemon; its reference."""
    return containerd.import_image(pause_image.archive, pause_image.ref)


@pytest.fixture
def rootfs(containerd: cd.Containerd) -> Iterator[Path]:
    """A fresh busybox rootfs folder for `ctr run --rootfs` (writable, per test).

    A --rootfs spec carries no environment: give absolute paths (/bin/echo) or
    `--env PATH=...`; runc does not search a default PATH.
    """
    target = containerd.workdir / "rootfs" / secrets.token_hex(4)
    images.make_rootfs(target)
    yield target
    if not leftovers.mounts_under(target):
        leftovers.remove_tree(target)


@pytest.fixture
def container_id() -> Callable[[str], str]:
    """Makes container ids that are never prefixes of each other (runsc matches
    ids by prefix): a common stem plus a fixed-width random suffix."""
    counter = itertools.count()

    def make(stem: str = "c") -> str:
        return f"{stem}-{next(counter):03d}{secrets.token_hex(3)}"

    return make


@pytest.fixture
def runtime_config(containerd: cd.Containerd, runsc_2024: Path) -> Callable[..., Path]:
    """Writes a gvisorgpu runtime config (runsc.toml shape) and returns its path.

    Defaults: runsc 20240729, root under the daemon's temp dir, network none,
    platform systrap. Keyword arguments: runsc, root, log_level,
    runsc_config={flag: value}, extra={top-level key: value}, name.
    """
    names = itertools.count()

    def write(**kwargs: Any) -> Path:
        kwargs.setdefault("runsc", runsc_2024)
        kwargs.setdefault("name", f"gvisorgpu-{next(names)}.toml")
        return containerd.write_runtime_config(**kwargs)

    return write


@pytest.fixture
def gvisorgpu(runtime_config: Callable[..., Path]) -> list[str]:
    """`ctr run` flags for our shim with the default runtime config."""
    if not paths.SHIM.exists():
        pytest.skip(f"{paths.SHIM.name} is not installed (pip install -e .)")
    return cd.gvisorgpu_args(runtime_config())


@pytest.fixture
def go_runsc(containerd: cd.Containerd, runsc_2024: Path) -> list[str]:
    """`ctr run` flags for containerd's Go runc shim driving runsc 20240729 with
    the same global flags as `gvisorgpu` (the comparison baseline)."""
    wrapper = cd.write_runsc_wrapper(containerd.workdir / "runsc-go", runsc_2024)
    return cd.go_runsc_args(wrapper, containerd.runsc_root)


# --- CRI: one containerd with the CRI plugin per test module and version ---------


@contextlib.contextmanager
def cri_module(request: pytest.FixtureRequest, version: str, runsc: Path | None,
               pause_image: images.Image, busybox_image: images.Image,
               **options: Any) -> Iterator[cri.CriEnv]:
    """What a module's ``cri_env`` fixture yields: a CRI containerd of
    ``version`` with the runc handler, and the gvisorgpu one when ``runsc`` is
    given; ``options`` go to :func:`tests.e2e.cri.cri_containerd`."""
    why = cd.missing_for(version)
    if why is not None:
        pytest.skip(why)
    with cri.cri_containerd(
            version, runsc=runsc,
            images=[(pause_image.archive, pause_image.ref),
                    (busybox_image.archive, busybox_image.ref)],
            keep_dir=bool(request.config.getoption("keep_e2e_dirs")), **options) as env:
        yield env


@pytest.fixture
def env(cri_env: cri.CriEnv) -> Iterator[cri.CriEnv]:
    """The module's CRI containerd (its ``cri_env``), with the gvisorgpu handler's
    default runtime config; the test fails if it leaves anything behind."""
    if cri_env.runtime_config is not None:
        cri_env.configure()
    yield cri_env
    found = cri_env.reset()
    if found:
        pytest.fail(f"the test left these behind (containerd {cri_env.daemon.version}, "
                    f"{cri_env.daemon.workdir}):\n  " + "\n  ".join(found), pytrace=False)
