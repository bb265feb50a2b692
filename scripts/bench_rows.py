"""The measured rows that run in a plain private containerd (no wrappers).

Every row compares (a) this shim with (b) containerd's Go runc shim driving
the same runsc with the same flags through a wrapper, interleaved: each
round takes one sample of every runtime, in rotating order, so that drift in
the machine's speed hits both alike, and ratios are taken per round.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import psutil
from bench_procs import Mem, Seen, ShimProcs, find_shim_procs, memory

from tests.e2e import containerd as cd
from tests.e2e import images

__all__ = ["FLOOR", "GO", "LABEL", "OURS", "PlainRows", "Result", "Session"]

OURS, GO, FLOOR = "ours", "go", "floor"
LABEL = {OURS: "this shim", GO: "Go shim", FLOOR: "runsc run alone"}


@dataclass(frozen=True)
class Sleepers:
    """Shim memory with many sleeping containers of one runtime."""

    containers: int
    processes: int
    shared_pss_mib: float
    task_pss_mib: list[float]  # per container: the processes serving it

    @property
    def total_pss_mib(self) -> float:
        return self.shared_pss_mib + sum(self.task_pss_mib)

    @property
    def per_container_pss_mib(self) -> float:
        return self.total_pss_mib / self.containers


@dataclass
class Result:
    """Everything measured in one containerd version (both daemons)."""

    version: str
    samples: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    memory: dict[str, dict[str, list[Mem]]] = field(default_factory=dict)
    sleepers: dict[str, Sleepers] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)
    failures: dict[str, dict[str, str]] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)

    def add(self, row: str, variant: str, rnd: int, value: float) -> None:
        self.samples.setdefault(row, {}).setdefault(variant, {})[rnd] = value

    def fail(self, variant: str, row: str, why: str) -> None:
        self.failures.setdefault(variant, {}).setdefault(row, why)
        print(f"  {LABEL[variant]}: {row} FAILED, left out: {why}", file=sys.stderr)

    def failed(self, variant: str, row: str) -> bool:
        return row in self.failures.get(variant, {})


class Session:
    """One private containerd with the busybox image and both runtimes set up."""

    def __init__(self, daemon: cd.Containerd, result: Result, runsc: Path, flags: list[str],
                 tag: str, ours_runsc: Path, go_runsc: Path, seen: Seen) -> None:
        self.d, self.ctr, self.result = daemon, daemon.ctr, result
        self.runsc, self.flags, self.tag = runsc, flags, tag
        self.counter = 0
        self.round = 0  # of the interleave in progress
        self.image = images.build_busybox_image(daemon.workdir / "busybox.tar")
        self.image_ref = daemon.import_image(self.image.archive, self.image.ref)
        config = daemon.write_runtime_config(
            runsc=ours_runsc, runsc_config=dict(f.lstrip("-").split("=", 1) for f in flags))
        self.args = {OURS: cd.gvisorgpu_args(config),
                     GO: cd.go_runsc_args(go_runsc, daemon.runsc_root)}
        self.seen = seen

    def next_id(self, variant: str) -> str:
        # One length for every id: runsc resolves container ids by prefix.
        self.counter += 1
        return f"b{self.tag}{variant[0]}{self.counter:05d}"

    def run_echo(self, variant: str) -> float:
        cid = self.next_id(variant)
        t0 = time.monotonic()
        out = self.ctr("run", "--rm", *self.args[variant], self.image_ref, cid, "echo", "hello",
                       timeout=60)
        elapsed = time.monotonic() - t0
        if out.returncode != 0 or out.stdout != "hello\n":
            self.remove([cid])
            raise RuntimeError(f"exit {out.returncode}, stdout {out.stdout!r}, "
                               f"stderr {out.stderr.strip()[-600:]!r}")
        return elapsed

    def warm_up(self) -> None:
        """One container per runtime, so no row pays a first start (our
        forkserver, runsc's capability probe, cold page cache)."""
        for v in (OURS, GO):
            self.attempt(v, "warm-up", partial(self.run_echo, v))

    def attempt(self, variant: str, row: str, action: Callable[[], float]) -> float | None:
        if self.result.failed(variant, row) or self.result.failed(variant, "warm-up"):
            return None
        try:
            return action()
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
            self.result.fail(variant, row, str(e))
            return None

    def interleave(self, row: str, variants: list[str], rounds: int,
                   action: Callable[[str], float], warm: bool = True) -> None:
        """One unrecorded sample each, then `rounds` rounds in rotating order."""
        if not variants:
            return
        if warm:
            for v in variants:
                self.attempt(v, row, partial(action, v))
        for rnd in range(rounds):
            self.round = rnd
            k = rnd % len(variants)
            for v in variants[k:] + variants[:k]:
                value = self.attempt(v, row, partial(action, v))
                if value is not None:
                    self.result.add(row, v, rnd, value)

    def remove(self, cids: Iterable[str]) -> None:
        """Force-remove tasks and containers, a few at a time (two ctr calls each)."""
        def one(cid: str) -> None:
            self.ctr("task", "rm", "-f", cid, timeout=60)
            self.ctr("containers", "rm", cid, timeout=60)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, cids))


class PlainRows(Session):
    """latency, exec, memory, sleepers, parallel and throughput."""

    floor_bundle: Path | None = None

    def latency(self, rounds: int) -> None:
        self.floor_bundle = self._floor_bundle()
        self.interleave("latency", [OURS, GO, FLOOR], rounds,
                        lambda v: self._runsc_run() if v == FLOOR else self.run_echo(v))

    def _floor_bundle(self) -> Path:
        """A bundle with the very spec containerd makes for the image, on a plain rootfs."""
        cid = self.next_id("spec")
        self.ctr("containers", "create", self.image_ref, cid, "echo", "hello", check=True)
        try:
            spec = json.loads(self.ctr("containers", "info", cid, check=True).stdout)["Spec"]
        finally:
            self.ctr("containers", "rm", cid)
        bundle = self.d.workdir / "floor"
        images.make_rootfs(bundle / "rootfs")
        spec["root"] = {"path": "rootfs", "readonly": False}
        # A cgroup per run, as containerd's spec asks for each container.
        spec.setdefault("linux", {})["cgroupsPath"] = f"/{self.ctr.namespace}/b{self.tag}floor"
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle

    def _runsc_run(self) -> float:
        cid = self.next_id(FLOOR)
        assert self.floor_bundle is not None
        argv = [str(self.runsc), "--root", str(self.d.runsc_root / "floor"), *self.flags,
                "run", "--bundle", str(self.floor_bundle), cid]
        t0 = time.monotonic()
        out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=60)
        elapsed = time.monotonic() - t0
        if out.returncode != 0 or out.stdout != "hello\n":
            raise RuntimeError(f"runsc run: exit {out.returncode}, stdout {out.stdout!r}, "
                               f"stderr {out.stderr.strip()[-600:]!r}")
        return elapsed

    # --- sleeping containers ----------------------------------------------

    def start_sleepers(self, variant: str, count: int) -> list[str]:
        """`count` containers running `sleep`; raises (after removing them) if one fails."""
        cids = [self.next_id(variant) for _ in range(count)]

        def one(cid: str) -> str:
            out = self.ctr("run", "-d", *self.args[variant], self.image_ref, cid, "sleep", "3600",
                           timeout=120)
            return "" if out.returncode == 0 else f"{cid}: {out.stderr.strip()[-400:]}"

        with ThreadPoolExecutor(4) as pool:
            errors = [e for e in pool.map(one, cids) if e]
        if errors:
            self.remove(cids)
            raise RuntimeError(f"{len(errors)} of {count} did not start; first: {errors[0]}")
        return cids

    def find(self, by_variant: dict[str, list[str]]) -> dict[str, ShimProcs]:
        """Per runtime: the processes serving each of its tasks, and the shared
        shim processes that run the executable its tasks' processes run."""
        all_cids = [c for cids in by_variant.values() for c in cids]
        addresses = {str(self.d.address), str(self.d.ttrpc_address)}
        try:
            procs = find_shim_procs(self.d.state, self.ctr.namespace, all_cids, addresses,
                                    self.runsc)
        except (OSError, ValueError, KeyError, psutil.Error) as e:
            raise RuntimeError(f"finding the shim processes: {e}") from e
        self.seen.note(procs.all())
        out = {}
        for variant, cids in by_variant.items():
            tasks = {c: procs.tasks[c] for c in cids}
            exes = {_exe(p) for pids in tasks.values() for p in pids} - {""}
            out[variant] = ShimProcs(tasks, {p for p in procs.shared if _exe(p) in exes})
            missing = [c for c, pids in tasks.items() if not pids]
            if missing:
                raise RuntimeError(f"no process listens on the socket of {len(missing)} "
                                   f"task(s), e.g. {missing[0]}")
        return out

    def shim_memory(self, by_variant: dict[str, list[str]]) -> dict[str, dict[str, list[Mem]]]:
        return {v: {"task": memory(set().union(*p.tasks.values())), "shared": memory(p.shared)}
                for v, p in self.find(by_variant).items()}

    def one_sleeper(self, exec_rounds: int, want_memory: bool, settle: float) -> None:
        """Memory of the shims with one sleeping container each, then exec round trips."""
        sleepers: dict[str, list[str]] = {}
        try:
            for v in (OURS, GO):
                try:
                    sleepers[v] = self.start_sleepers(v, 1)
                except RuntimeError as e:
                    self.result.fail(v, "memory" if want_memory else "exec", str(e))
            if want_memory and sleepers:
                time.sleep(settle)
                try:
                    self.result.memory = self.shim_memory(sleepers)
                except RuntimeError as e:
                    for v in sleepers:
                        self.result.fail(v, "memory", str(e))
            if exec_rounds:
                live = list(sleepers)
                self.interleave("exec", live, exec_rounds,
                                lambda v: self._exec_once(sleepers[v][0]))
        finally:
            self.remove(c for cids in sleepers.values() for c in cids)

    def _exec_once(self, cid: str) -> float:
        t0 = time.monotonic()
        out = self.ctr("task", "exec", "--exec-id", self.next_id("x"), cid, "true", timeout=60)
        elapsed = time.monotonic() - t0
        if out.returncode != 0:
            raise RuntimeError(f"exec exit {out.returncode}: {out.stderr.strip()[-600:]}")
        return elapsed

    def many_sleepers(self, count: int, settle: float) -> None:
        """Total PSS of all shim processes with `count` sleeping containers of one runtime."""
        for v in (OURS, GO):
            cids: list[str] = []
            try:
                cids = self.start_sleepers(v, count)
                time.sleep(settle)
                procs = self.find({v: cids})[v]
                mem = memory(procs.all())
                pss = {m.pid: m.pss / 2**20 for m in mem}
                self.result.sleepers[v] = Sleepers(
                    containers=count, processes=len(mem),
                    shared_pss_mib=sum(pss.get(p, 0.0) for p in procs.shared),
                    task_pss_mib=[sum(pss.get(p, 0.0) for p in procs.tasks[c]) for c in cids])
            except RuntimeError as e:
                self.result.fail(v, "sleepers", str(e))
            finally:
                self.remove(cids)

    # --- parallel and throughput ------------------------------------------

    def parallel(self, width: int, rounds: int) -> None:
        self.interleave("parallel", [OURS, GO], rounds, lambda v: self._batch(v, width),
                        warm=False)

    def _batch(self, variant: str, width: int) -> float:
        cids = [self.next_id(variant) for _ in range(width)]
        procs: list[subprocess.Popen[bytes]] = []
        t0 = time.monotonic()
        try:
            for cid in cids:
                procs.append(self.ctr.popen("run", "--rm", *self.args[variant], self.image_ref,
                                            cid, "echo", "hello", stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE))
            outs = [p.communicate(timeout=max(180 - (time.monotonic() - t0), 1)) for p in procs]
        except BaseException:
            for p in procs:
                p.kill()
                p.wait()
            self.remove(cids)
            raise
        elapsed = time.monotonic() - t0
        bad = [(c, p.returncode, err) for c, p, (out, err) in zip(cids, procs, outs, strict=True)
               if p.returncode != 0 or out != b"hello\n"]
        if bad:
            self.remove(c for c, _, _ in bad)
            cid, rc, err = bad[0]
            raise RuntimeError(f"{len(bad)} of {width} failed; first {cid}: exit {rc}, "
                               f"{err.decode(errors='replace').strip()[-400:]}")
        return elapsed

    def throughput(self, mib: int, rounds: int) -> None:
        self.interleave("throughput", [OURS, GO], rounds, lambda v: self._stream(v, mib))

    def _stream(self, variant: str, mib: int) -> float:
        """MiB/s from the first to the last stdout byte (start-up excluded), all
        bytes counted. dd's report goes to stderr, drained by a thread so that
        neither pipe can stall the other."""
        cid = self.next_id(variant)
        proc = self.ctr.popen("run", "--rm", *self.args[variant], self.image_ref, cid, "dd",
                              "if=/dev/zero", "bs=1M", f"count={mib}",
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        stderr, err = proc.stderr, list[bytes]()
        drain = threading.Thread(target=lambda: err.append(stderr.read()), daemon=True)
        drain.start()
        got, first, last = 0, 0.0, 0.0
        try:
            while chunk := os.read(proc.stdout.fileno(), 1 << 20):
                last = time.monotonic()
                first = first or last
                got += len(chunk)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        drain.join(timeout=30)
        if proc.returncode != 0 or got != mib << 20:
            self.remove([cid])
            raise RuntimeError(f"exit {proc.returncode}, {got} of {mib << 20} bytes: "
                               f"{b''.join(err).decode(errors='replace')[-600:]}")
        return float(mib) / max(last - first, 1e-6)


def _exe(pid: int) -> str:
    try:
        return os.path.realpath(psutil.Process(pid).exe())
    except psutil.Error:
        return ""
