"""The task layer against a fake runsc: every state-and-operation pair of an init
and of an exec follows the tables in shim.task.state exactly, the runsc work
happens only for legal operations, and failure paths release what they hold.
The e2e suite proves the same container code against the real runsc."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from shim.errors import FailedPrecondition, NotFound
from shim.runsc import GlobalOptions, KillOptions, RunscError
from shim.task.container import Container, CreateParams
from shim.task.process import Process
from shim.task.state import EXEC_TRANSITIONS, GONE, INIT_TRANSITIONS, Op, State
from shim.task.stdio import StdioPaths
from tests.unit.fake_runsc import Exits, FakeRunsc

Events = list[tuple[str, str, str]]


class Harness:
    def __init__(self, tmp: Path, *, pod_member: bool = False) -> None:
        self.tmp = tmp
        self.runsc = FakeRunsc()
        self.exits = Exits()
        self.events: Events = []
        self.params = CreateParams(
            id="c1", bundle=str(tmp), mounts=(), stdio=StdioPaths(),
            runsc=GlobalOptions(binary="/fake/runsc", root=str(tmp / "root")),
            sandbox_id="pod-1" if pod_member else None)
        self.container: Container | None = None

    def on_event(self, kind: str, proc: Process) -> None:
        self.events.append((kind, proc.container_id, proc.exec_id))

    async def create(self) -> Container:
        self.container = await Container.create(self.params, self.runsc, self.exits,
                                                self.on_event)
        return self.container

    async def init_exits(self, code: int) -> None:
        c = self.container
        assert c is not None
        if c.subcontainer:
            await _until(lambda: "c1" in self.runsc.waiting)
            self.runsc.waiting["c1"].set_result(code)
        else:
            self.exits.exit(c.init.pid, code)
        await _until(lambda: c.init.exited)

    async def into(self, state: State) -> Container:
        """A container whose init is in ``state``."""
        c = await self.create()
        if state is State.CREATED:
            return c
        await c.start("")
        if state is State.PAUSED:
            await c.pause()
        if state in (State.STOPPED, State.DELETED):
            await self.init_exits(0)
        if state is State.DELETED:
            await c.delete("")
        assert c.init.state is state
        return c


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


@pytest_asyncio.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.runsc.close()


@pytest_asyncio.fixture(params=["sandbox", "pod-member"])
async def either(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    """A sandbox's root container, or a pod's app container (a subcontainer)."""
    h = Harness(tmp_path, pod_member=request.param == "pod-member")
    try:
        yield h
    finally:
        h.runsc.close()


@pytest_asyncio.fixture
async def member(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path, pod_member=True)
    try:
        yield h
    finally:
        h.runsc.close()


# What each init operation asks runsc to do when it is legal (None: nothing).
INIT_OPS: dict[Op, tuple[Callable[[Container], Any], str | None]] = {
    Op.START: (lambda c: c.start(""), "start"),
    Op.PAUSE: (lambda c: c.pause(), "pause"),
    Op.RESUME: (lambda c: c.resume(), "resume"),
    Op.KILL: (lambda c: c.kill("", signal.SIGTERM, False), "kill"),
    Op.DELETE: (lambda c: c.delete(""), "delete"),
    Op.CHECKPOINT: (lambda c: c.checkpoint("/img", leave_running=True), "checkpoint"),
    Op.EXEC: (lambda c: _sync(c.add_exec("e1", {"args": ["true"]}, StdioPaths())), None),
}


async def _sync(value: Any) -> Any:
    return value


CASES = [(state, op) for state in State for op in INIT_OPS]


@pytest.mark.asyncio
@pytest.mark.parametrize(("state", "op"), CASES, ids=[f"{s.value}-{o.value}" for s, o in CASES])
async def test_init_follows_its_table(either: Harness, state: State, op: Op) -> None:
    harness = either
    c = await harness.into(state)
    before = len(harness.runsc.calls)
    call, command = INIT_OPS[op]
    outcome = INIT_TRANSITIONS[state].get(op)
    if outcome is None or outcome is GONE:
        with pytest.raises(NotFound if outcome is GONE else FailedPrecondition) as info:
            await call(c)
        assert "container c1: " in str(info.value) or "c1" in str(info.value)
        assert harness.runsc.calls[before:] == [], "a refused op must not reach runsc"
        assert c.init.state is state
        return
    await call(c)
    made = harness.runsc.commands()[before:]
    if op is Op.KILL and state is State.CREATED:
        # runsc refuses to signal a created container. A sandbox's process is
        # killed (its exit comes from the reaper); a pod member is deleted,
        # and that is its exit.
        assert made == (["delete"] if c.subcontainer else [])
        assert c.init.state is (State.STOPPED if c.subcontainer else State.CREATED)
        return
    if op is Op.START and c.subcontainer:
        command_seen = made[:1]  # then `runsc wait`, which follows the member's exit
        assert command_seen == [command] and made[1:] in ([], ["wait"])
    elif command is not None:
        assert made == [command]
    assert c.init.state is outcome


EXEC_OPS: dict[Op, tuple[Callable[[Container], Any], str | None]] = {
    Op.START: (lambda c: c.start("e1"), "exec"),
    Op.KILL: (lambda c: c.kill("e1", signal.SIGTERM, False), "kill"),
    Op.DELETE: (lambda c: c.delete("e1"), None),
}
EXEC_CASES = [(state, op) for state in (State.CREATED, State.RUNNING, State.STOPPED)
              for op in EXEC_OPS]


async def _exec_in(harness: Harness, state: State) -> Container:
    c = await harness.into(State.RUNNING)
    c.add_exec("e1", {"args": ["true"]}, StdioPaths())
    if state is not State.CREATED:
        await c.start("e1")
    if state is State.STOPPED:
        harness.exits.exit(c.execs["e1"].pid, 3)
        await _until(lambda: c.execs["e1"].exited)
    assert c.execs["e1"].state is state
    return c


@pytest.mark.asyncio
@pytest.mark.parametrize(("state", "op"), EXEC_CASES,
                         ids=[f"{s.value}-{o.value}" for s, o in EXEC_CASES])
async def test_exec_follows_its_table(harness: Harness, state: State, op: Op) -> None:
    c = await _exec_in(harness, state)
    proc = c.execs["e1"]
    before = len(harness.runsc.calls)
    call, command = EXEC_OPS[op]
    outcome = EXEC_TRANSITIONS[state].get(op)
    if outcome is None or outcome is GONE:
        with pytest.raises(NotFound if outcome is GONE else FailedPrecondition):
            await call(c)
        assert harness.runsc.calls[before:] == []
        assert proc.state is state
        return
    await call(c)
    assert harness.runsc.commands()[before:] == ([command] if command else [])
    assert proc.state is outcome


@pytest.mark.asyncio
async def test_events_are_published_in_order(harness: Harness) -> None:
    c = await harness.into(State.RUNNING)
    c.add_exec("e1", {"args": ["true"]}, StdioPaths())
    await c.start("e1")
    harness.exits.exit(c.execs["e1"].pid, 3)
    await harness.init_exits(137)
    assert harness.events == [("start", "c1", ""), ("start", "c1", "e1"),
                              ("exit", "c1", "e1"), ("exit", "c1", "")]
    assert await c.init.wait() == (137, c.init.exited_at)


# --- failure paths release what they hold (issue: waiters and fds) -----------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.asyncio
async def test_failed_exec_starts_leak_nothing_and_answer_every_wait(harness: Harness,
                                                                      tmp_path: Path) -> None:
    c = await harness.into(State.RUNNING)
    for name in ("in", "out", "err"):
        os.mkfifo(tmp_path / name)
    # Readers for the FIFOs, as containerd holds them.
    keep = [os.open(tmp_path / n, os.O_RDONLY | os.O_NONBLOCK) for n in ("out", "err")]
    stdio = StdioPaths(str(tmp_path / "in"), str(tmp_path / "out"), str(tmp_path / "err"))
    harness.runsc.failures["exec"] = "executable file not found in $PATH"
    baseline = _open_fds()
    waits = []
    for i in range(100):
        c.add_exec(f"probe-{i}", {"args": ["nope"]}, stdio)
        waits.append(asyncio.ensure_future(c.process(f"probe-{i}").wait()))
        with pytest.raises(RunscError, match="executable file not found"):
            await c.start(f"probe-{i}")
    done = await asyncio.wait_for(asyncio.gather(*waits), 5)
    assert {code for code, _ in done} == {255}
    assert _open_fds() == baseline
    assert harness.events == [("start", "c1", "")], "no TaskExit for a process that never ran"
    for i in range(100):
        await c.delete(f"probe-{i}")
    assert c.execs == {}
    for fd in keep:
        os.close(fd)


@pytest.mark.asyncio
async def test_deleting_before_start_answers_wait(member: Harness) -> None:
    c = await member.create()
    waiter = asyncio.ensure_future(c.init.wait())
    await c.delete("")
    code, _ = await asyncio.wait_for(waiter, 5)
    assert code == 137
    assert member.events == []


@pytest.mark.asyncio
async def test_an_exec_with_no_sandbox_pid_is_never_signalled_through_init(
        harness: Harness) -> None:
    harness.runsc.exec_internal_pid = None
    c = await _exec_in(harness, State.RUNNING)
    before = len(harness.runsc.calls)
    with pytest.raises(FailedPrecondition, match="did not report its pid in the sandbox"):
        await c.kill("e1", signal.SIGKILL, False)
    assert harness.runsc.calls[before:] == []


@pytest.mark.asyncio
async def test_kill_of_a_finished_process_is_not_found(harness: Harness) -> None:
    c = await harness.into(State.RUNNING)
    harness.runsc.failures["kill"] = 'signaling container "c1": PID 0: no such process'
    with pytest.raises(NotFound, match="process already finished"):
        await c.kill("", signal.SIGTERM, False)


@pytest.mark.asyncio
async def test_an_exit_during_an_operation_is_not_overwritten(member: Harness) -> None:
    # Killing a created pod member ends it (runsc delete --force); the exit it
    # records must survive the kill's own transition (CREATED -> CREATED).
    c = await member.create()
    await c.kill("", signal.SIGKILL, False)
    assert c.init.state is State.STOPPED and c.init.exit_status == 137
    assert member.events == [("exit", "c1", "")]


@pytest.mark.asyncio
async def test_delete_leaves_no_lock_a_racing_runsc_left(member: Harness) -> None:
    # Another runsc looking c1 up while the daemon's delete ran (containerd's
    # `delete` action) re-creates c1's lock after the state is gone.
    root = Path(member.params.runsc.root or "")
    c = await member.into(State.STOPPED)
    (root / "c1_sandbox:pod-1.lock").write_text("")
    (root / "c10_sandbox:pod-1.lock").write_text("")
    (root / "c10_sandbox:pod-1.state").write_text("")
    await c.delete("")
    # c10 (a prefix match for runsc, not for the shim) keeps its files.
    assert sorted(os.listdir(root)) == ["c10_sandbox:pod-1.lock", "c10_sandbox:pod-1.state"]


@pytest.mark.asyncio
async def test_a_members_forked_children_die_with_its_init(member: Harness) -> None:
    c = await member.into(State.RUNNING)
    await member.init_exits(0)
    kills = [call.options for call in member.runsc.calls if call.command == "kill"]
    assert kills == [KillOptions(signal=signal.SIGKILL, all=True)]
    assert member.events[-1] == ("exit", "c1", "")
    assert c.init.state is State.STOPPED


@pytest.mark.asyncio
@pytest.mark.parametrize("policy", ["refuse", "warn"])
async def test_exec_outside_a_seccomp_profile(tmp_path: Path, policy: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(tmp_path)
    h.params = dataclasses.replace(h.params, seccomp_profile=True, exec_seccomp=policy)
    try:
        c = await h.into(State.RUNNING)
        if policy == "refuse":
            with pytest.raises(FailedPrecondition, match="outside the container's seccomp"):
                c.add_exec("probe", {"args": ["true"]}, StdioPaths())
            assert c.execs == {}
        else:
            c.add_exec("probe", {"args": ["true"]}, StdioPaths())
            assert "running it anyway" in caplog.text
    finally:
        h.runsc.close()
