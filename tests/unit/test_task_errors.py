"""Which status each refusal reaches containerd with.

The task service behind a real ttrpc server (with the daemon's error table)
and client; runsc is a stand-in: a script answers the capability probe and
:class:`FakeRunsc` plays the container commands. Each case is one request and
the code containerd sees: InvalidArgument for bad input, FailedPrecondition
for the wrong state or host, NotFound, AlreadyExists, Unimplemented; Unknown
only where runsc failed for a reason the shim cannot interpret (it carries
runsc's own words).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import betterproto
import pytest
import pytest_asyncio
from betterproto.lib.google.protobuf import Any as AnyMessage
from betterproto.lib.google.protobuf import Empty

from shim.api.containerd.task import v2 as api
from shim.api.containerd.types import Mount
from shim.api.runtimeoptions.v1 import Options as RuntimeOptions
from shim.daemon.reaper import Reaper
from shim.oci.shape import check_spec
from shim.runsc import ProbeCache
from shim.task.errors import wire_status
from shim.task.service import SERVICE_NAMES, TaskService
from shim.ttrpc.client import Client
from shim.ttrpc.server import Server
from shim.ttrpc.status import Code, RpcError
from tests.unit.fake_runsc import Exits, FakeRunsc
from tests.unit.ttrpc_helpers import serving

pytestmark = pytest.mark.asyncio

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TASK = "containerd.task.v2.Task"
NAMESPACE = "errs"

# Answers the probe as runsc 20240729 does; every other command fails.
PROBE = r"""#!/bin/sh
case "$1" in
  --version) printf 'runsc version 0.0~20240729.0\nspec: 1.2.0\n';;
  flags) cat "$(dirname "$0")/flags.txt" >&2;;
  help) case "$2" in platforms) printf 'ptrace\nsystrap\n';; *) printf 'Subcommands:\n';; esac;;
  *) exit 128;;
esac
"""


def _spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "cwd": "/", "env": ["PATH=/bin"],
                    "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "linux": {"namespaces": [{"type": "pid"}]},
    }
    spec.update(changes)
    return spec


class Children:
    """The daemon's reaper as the service sees it: probe commands really run,
    container exits come from the test."""

    def __init__(self, reaper: Reaper, exits: Exits) -> None:
        self.run = reaper.run
        self.watch = exits.watch


@dataclass
class World:
    tmp: Path
    client: Client
    runsc: FakeRunsc
    config: Path

    def bundle(self, name: str, spec: Any = None) -> Path:
        bundle = self.tmp / "bundles" / name
        (bundle / "rootfs").mkdir(parents=True)
        (bundle / "config.json").write_text(json.dumps(_spec() if spec is None else spec))
        return bundle

    def create_request(self, cid: str, **fields: Any) -> api.CreateTaskRequest:
        options = AnyMessage(type_url="runtimeoptions.v1.Options",
                             value=bytes(RuntimeOptions(config_path=str(self.config))))
        if "bundle" not in fields:
            fields["bundle"] = str(self.bundle(cid))
        return api.CreateTaskRequest(id=cid, options=options, **fields)

    async def call(self, method: str, request: betterproto.Message,
                   response: type[betterproto.Message] = Empty,
                   namespace: str = NAMESPACE) -> Code:
        """The status code of one call (OK when it succeeded)."""
        try:
            await self.client.call(TASK, method, request, response, timeout=30,
                                   metadata={"containerd-namespace-ttrpc": namespace})
        except RpcError as e:
            self.last_message = e.message
            return e.code
        return Code.OK

    async def created(self, cid: str) -> None:
        assert await self.call("Create", self.create_request(cid), api.CreateTaskResponse) \
            == Code.OK, self.last_message

    async def running(self, cid: str) -> None:
        await self.created(cid)
        assert await self.call("Start", api.StartRequest(id=cid), api.StartResponse) == Code.OK

    last_message: str = ""


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop(), subreaper=False)
    fake = FakeRunsc()
    (tmp_path / "flags.txt").write_text((FIXTURES / "runsc-flags-20240729.txt").read_text())
    binary = tmp_path / "runsc"
    binary.write_text(PROBE)
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    config = tmp_path / "runsc.toml"
    config.write_text(f'binary_name = "{binary}"\nroot = "{tmp_path / "root"}"\n'
                      'network = "none"\n')
    service = TaskService(NAMESPACE, _Sink(), asyncio.Event(), Children(reaper, Exits()),
                          ProbeCache(None), runtime=lambda params: fake)
    server = Server(error_status=wire_status)
    server.register_service(SERVICE_NAMES, service.handlers())
    try:
        async with serving(server) as path, await Client.connect(path, timeout=5) as client:
            yield World(tmp_path, client, fake, config)
    finally:
        fake.close()
        reaper.uninstall()


class _Sink:
    def publish(self, topic: str, type_url: str, message: betterproto.Message) -> None:
        pass

    def kick(self) -> None:
        pass


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return str(path)


# --------------------------------------------------------------------------- Create

CreateCase = Callable[[World], api.CreateTaskRequest]


def _with_spec(spec: Any) -> CreateCase:
    def make(w: World) -> api.CreateTaskRequest:
        return w.create_request("c1", bundle=str(w.bundle("c1", spec)))
    return make


def _with_config(text: str) -> CreateCase:
    def make(w: World) -> api.CreateTaskRequest:
        w.config.write_text(text)
        return w.create_request("c1")
    return make


def _with_options(type_url: str, value: bytes) -> CreateCase:
    def make(w: World) -> api.CreateTaskRequest:
        req = w.create_request("c1")
        req.options = AnyMessage(type_url=type_url, value=value)
        return req
    return make


def _bundle_is_a_file(w: World) -> api.CreateTaskRequest:
    _write(w.tmp / "file", "")
    return w.create_request("c1", bundle=str(w.tmp / "file"))


def _config_is_a_directory(w: World) -> api.CreateTaskRequest:
    (w.tmp / "b" / "config.json").mkdir(parents=True)
    return w.create_request("c1", bundle=str(w.tmp / "b"))


def _bad_json(w: World) -> api.CreateTaskRequest:
    bundle = w.bundle("c1")
    (bundle / "config.json").write_text("{not json")
    return w.create_request("c1", bundle=str(bundle))


def _pod_member_of_an_unknown_sandbox(w: World) -> api.CreateTaskRequest:
    annotations = {"io.kubernetes.cri.container-type": "container",
                   "io.kubernetes.cri.sandbox-id": "pod-1"}
    return _with_spec(_spec(annotations=annotations))(w)


def _mount(source: str, type_: str = "bind", options: tuple[str, ...] = ("rbind",)) -> CreateCase:
    def make(w: World) -> api.CreateTaskRequest:
        return w.create_request("c1", rootfs=[Mount(type=type_, source=source,
                                                    options=list(options))])
    return make


CREATE_CASES: list[tuple[str, CreateCase, Code]] = [
    ("accepted", lambda w: w.create_request("c1"), Code.OK),
    # the request itself
    ("empty id", lambda w: w.create_request("", bundle=str(w.bundle("x"))), Code.INVALID_ARGUMENT),
    ("id with a path", lambda w: w.create_request("../x", bundle=str(w.bundle("x"))),
     Code.INVALID_ARGUMENT),
    ("no bundle", lambda w: w.create_request("c1", bundle=""), Code.INVALID_ARGUMENT),
    ("relative bundle", lambda w: w.create_request("c1", bundle="bundles/c1"),
     Code.INVALID_ARGUMENT),
    ("missing bundle", lambda w: w.create_request("c1", bundle=str(w.tmp / "nothing")),
     Code.INVALID_ARGUMENT),
    ("bundle is a file", _bundle_is_a_file, Code.INVALID_ARGUMENT),
    ("config.json is a directory", _config_is_a_directory, Code.INVALID_ARGUMENT),
    ("restore from a checkpoint", lambda w: w.create_request("c1", checkpoint="/ckpt"),
     Code.INVALID_ARGUMENT),
    # the spec
    ("spec not JSON", _bad_json, Code.INVALID_ARGUMENT),
    ("spec is an array", _with_spec([1, 2]), Code.INVALID_ARGUMENT),
    ("annotations an array", _with_spec(_spec(annotations=["a"])), Code.INVALID_ARGUMENT),
    ("linux a string", _with_spec(_spec(linux="x")), Code.INVALID_ARGUMENT),
    ("process an array", _with_spec(_spec(process=[])), Code.INVALID_ARGUMENT),
    ("env a string", _with_spec(_spec(process={"args": ["sh"], "env": "PATH=/bin"})),
     Code.INVALID_ARGUMENT),
    ("memory limit a string", _with_spec(_spec(linux={"resources": {"memory": {"limit": "1G"}}})),
     Code.INVALID_ARGUMENT),
    ("cgroupsPath a number", _with_spec(_spec(linux={"cgroupsPath": 5})), Code.INVALID_ARGUMENT),
    ("mounts an object", _with_spec(_spec(mounts={"destination": "/x"})), Code.INVALID_ARGUMENT),
    ("null sections are unset", _with_spec(_spec(hooks=None, mounts=None, annotations=None)),
     Code.OK),
    # runtime options and config
    ("unknown options type", _with_options("example.Options", b""), Code.INVALID_ARGUMENT),
    ("undecodable options", _with_options("runtimeoptions.v1.Options", b"\xff\xff"),
     Code.INVALID_ARGUMENT),
    ("config file missing", lambda w: (w.config.unlink(), w.create_request("c1"))[1],
     Code.INVALID_ARGUMENT),
    ("config not TOML", _with_config("binary_name = "), Code.INVALID_ARGUMENT),
    ("config unknown key", _with_config('binray_name = "runsc"\n'), Code.INVALID_ARGUMENT),
    # the host
    ("runsc missing", _with_config('binary_name = "/nonexistent/runsc"\n'),
     Code.FAILED_PRECONDITION),
    ("flag runsc lacks", lambda w: _with_config(
        w.config.read_text() + '[runsc_config]\nno-such-flag = "1"\n')(w),
     Code.FAILED_PRECONDITION),
    ("pod member of a sandbox this shim lacks", _pod_member_of_an_unknown_sandbox,
     Code.FAILED_PRECONDITION),
    # stdio
    ("stdout missing FIFO", lambda w: w.create_request("c1", stdout=str(w.tmp / "gone")),
     Code.INVALID_ARGUMENT),
    ("stdin missing FIFO", lambda w: w.create_request("c1", stdin=str(w.tmp / "gone")),
     Code.INVALID_ARGUMENT),
    ("stdout a directory", lambda w: w.create_request("c1", stdout=str(w.tmp)),
     Code.INVALID_ARGUMENT),
    ("stdout relative", lambda w: w.create_request("c1", stdout="out.fifo"),
     Code.INVALID_ARGUMENT),
    ("stdout tcp://", lambda w: w.create_request("c1", stdout="tcp://127.0.0.1:1"),
     Code.INVALID_ARGUMENT),
    ("stdout binary://", lambda w: w.create_request("c1", stdout="binary:///bin/logger"),
     Code.UNIMPLEMENTED),
    ("stdout FIFO", lambda w: w.create_request("c1", stdout=_fifo(w.tmp / "out")), Code.OK),
    # rootfs mounts
    ("mount source missing", _mount("/nonexistent/layer"), Code.INVALID_ARGUMENT),
    ("mount type unknown", _mount("none", "nosuchfs", ()), Code.INVALID_ARGUMENT),
    ("mount target outside rootfs", lambda w: w.create_request(
        "c1", rootfs=[Mount(type="tmpfs", source="tmpfs", target="../../x")]),
     Code.INVALID_ARGUMENT),
]


@pytest.mark.parametrize(("make", "code"), [(m, c) for _, m, c in CREATE_CASES],
                         ids=[name for name, _, _ in CREATE_CASES])
async def test_create_refusals(world: World, make: CreateCase, code: Code) -> None:
    if os.geteuid() != 0 and "mount" in str(make):
        pytest.skip("mounting needs root")
    got = await world.call("Create", make(world), api.CreateTaskResponse)
    assert got == code, world.last_message
    if code != Code.OK:
        # Refused before runsc made anything (a `delete --force` may tidy up).
        assert "create" not in world.runsc.commands()
        assert world.last_message and "Error:" not in world.last_message


async def test_duplicate_create_is_already_exists(world: World) -> None:
    await world.created("c1")
    assert await world.call("Create", world.create_request("c1", bundle=str(world.tmp)),
                            api.CreateTaskResponse) == Code.ALREADY_EXISTS


async def test_a_namespace_that_is_no_identifier_is_invalid(world: World) -> None:
    assert await world.call("Create", world.create_request("c1"), api.CreateTaskResponse,
                            namespace="../etc") == Code.INVALID_ARGUMENT


async def test_runsc_failing_for_its_own_reasons_is_unknown_with_its_words(world: World) -> None:
    """The one place Unknown is right: runsc failed, and the shim cannot say
    whose fault it was; the message is runsc's."""
    world.runsc.failures["create"] = "creating container: cannot load the sandbox spec"
    assert await world.call("Create", world.create_request("c1"),
                            api.CreateTaskResponse) == Code.UNKNOWN
    assert "cannot load the sandbox spec" in world.last_message


# --------------------------------------------------------------------------- the rest

Setup = Callable[[World], Awaitable[None]]


async def _nothing(w: World) -> None:
    return None


async def _created(w: World) -> None:
    await w.created("c1")


async def _running(w: World) -> None:
    await w.running("c1")


async def _with_exec(w: World) -> None:
    await w.running("c1")
    assert await w.call("Exec", _exec("e1", {"args": ["true"]})) == Code.OK


def _exec(exec_id: str, process: Any, raw: bytes | None = None, **stdio: str) \
        -> api.ExecProcessRequest:
    value = json.dumps(process).encode() if raw is None else raw
    return api.ExecProcessRequest(id="c1", exec_id=exec_id, spec=AnyMessage(
        type_url="types.containerd.io/opencontainers/runtime-spec/1/Process", value=value),
        **stdio)


OP_CASES: list[tuple[str, Setup, str, Callable[[World], betterproto.Message], Code]] = [
    # no such container or process
    ("start unknown", _nothing, "Start", lambda w: api.StartRequest(id="c9"), Code.NOT_FOUND),
    ("state unknown exec", _running, "State", lambda w: api.StateRequest(id="c1", exec_id="e9"),
     Code.NOT_FOUND),
    ("wait unknown", _nothing, "Wait", lambda w: api.WaitRequest(id="c9"), Code.NOT_FOUND),
    ("pids unknown", _nothing, "Pids", lambda w: api.PidsRequest(id="c9"), Code.NOT_FOUND),
    ("close io unknown", _nothing, "CloseIO", lambda w: api.CloseIoRequest(id="c9", stdin=True),
     Code.NOT_FOUND),
    ("delete unknown", _nothing, "Delete", lambda w: api.DeleteRequest(id="c9"), Code.NOT_FOUND),
    ("kill unknown exec", _running, "Kill",
     lambda w: api.KillRequest(id="c1", exec_id="e9", signal=9), Code.NOT_FOUND),
    ("update unknown", _nothing, "Update", lambda w: api.UpdateTaskRequest(id="c9"),
     Code.NOT_FOUND),
    # the wrong state
    ("start twice", _running, "Start", lambda w: api.StartRequest(id="c1"),
     Code.FAILED_PRECONDITION),
    ("pause created", _created, "Pause", lambda w: api.PauseRequest(id="c1"),
     Code.FAILED_PRECONDITION),
    ("resume running", _running, "Resume", lambda w: api.ResumeRequest(id="c1"),
     Code.FAILED_PRECONDITION),
    ("delete running", _running, "Delete", lambda w: api.DeleteRequest(id="c1"),
     Code.FAILED_PRECONDITION),
    ("exec twice", _with_exec, "Exec", lambda w: _exec("e1", {"args": ["true"]}),
     Code.ALREADY_EXISTS),
    # bad input
    ("exec id with a path", _running, "Exec", lambda w: _exec("../e", {"args": ["true"]}),
     Code.INVALID_ARGUMENT),
    ("exec spec not JSON", _running, "Exec", lambda w: _exec("e1", None, b"{nope"),
     Code.INVALID_ARGUMENT),
    ("exec spec an array", _running, "Exec", lambda w: _exec("e1", ["true"]),
     Code.INVALID_ARGUMENT),
    ("exec without args", _running, "Exec", lambda w: _exec("e1", {"cwd": "/"}),
     Code.INVALID_ARGUMENT),
    ("exec args a string", _running, "Exec", lambda w: _exec("e1", {"args": "true"}),
     Code.INVALID_ARGUMENT),
    ("exec env numbers", _running, "Exec", lambda w: _exec("e1", {"args": ["t"], "env": [1]}),
     Code.INVALID_ARGUMENT),
    ("exec relative cwd", _running, "Exec",
     lambda w: _exec("e1", {"args": ["t"], "cwd": "tmp"}), Code.INVALID_ARGUMENT),
    ("exec uid a string", _running, "Exec",
     lambda w: _exec("e1", {"args": ["t"], "user": {"uid": "0"}}), Code.INVALID_ARGUMENT),
    ("signal past SIGRTMAX", _running, "Kill", lambda w: api.KillRequest(id="c1", signal=65),
     Code.INVALID_ARGUMENT),
    ("signal 0", _running, "Kill", lambda w: api.KillRequest(id="c1", signal=0),
     Code.INVALID_ARGUMENT),  # runsc: unknown signal "0"
    ("terminal too wide", _running, "ResizePty",
     lambda w: api.ResizePtyRequest(id="c1", width=70000, height=24), Code.INVALID_ARGUMENT),
    ("checkpoint without a path", _running, "Checkpoint",
     lambda w: api.CheckpointTaskRequest(id="c1"), Code.INVALID_ARGUMENT),
    ("checkpoint relative path", _running, "Checkpoint",
     lambda w: api.CheckpointTaskRequest(id="c1", path="ckpt"), Code.INVALID_ARGUMENT),
    ("checkpoint bad options", _running, "Checkpoint",
     lambda w: api.CheckpointTaskRequest(id="c1", path="/ckpt", options=AnyMessage(
         type_url="containerd.runc.v1.CheckpointOptions", value=b"\xff")),
     Code.INVALID_ARGUMENT),
    # what runsc cannot do
    ("update", _running, "Update", lambda w: api.UpdateTaskRequest(id="c1"),
     Code.UNIMPLEMENTED),
    # accepted
    ("exec", _running, "Exec", lambda w: _exec("e1", {"args": ["true"], "cwd": "/"}), Code.OK),
    ("signal 9", _running, "Kill", lambda w: api.KillRequest(id="c1", signal=9), Code.OK),
    ("checkpoint", _running, "Checkpoint", lambda w: api.CheckpointTaskRequest(
        id="c1", path="/ckpt"), Code.OK),
]


@pytest.mark.parametrize(("setup", "method", "make", "code"),
                         [case[1:] for case in OP_CASES], ids=[case[0] for case in OP_CASES])
async def test_operation_refusals(world: World, setup: Setup, method: str,
                                  make: Callable[[World], betterproto.Message],
                                  code: Code) -> None:
    await setup(world)
    before = len(world.runsc.calls)
    assert await world.call(method, make(world)) == code, world.last_message
    if code not in (Code.OK, Code.NOT_FOUND):
        assert world.runsc.calls[before:] == []  # refused before runsc


async def test_an_exec_whose_stdout_is_gone_is_invalid_at_start(world: World) -> None:
    await world.running("c1")
    assert await world.call("Exec", _exec("e1", {"args": ["true"]},
                                          stdout=str(world.tmp / "gone"))) == Code.OK
    assert await world.call("Start", api.StartRequest(id="c1", exec_id="e1"),
                            api.StartResponse) == Code.INVALID_ARGUMENT
    assert "stdout" in world.last_message and "gone" in world.last_message
    assert "exec" not in world.runsc.commands()
    # It never ran; its Wait is answered rather than left hanging.
    assert await world.call("Wait", api.WaitRequest(id="c1", exec_id="e1"),
                            api.WaitResponse) == Code.OK


# --------------------------------------------------------------------------- the spec's shape


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"process": {"args": ["a", 1]}}, "process.args must be an array of strings"),
        ({"process": {"terminal": "yes"}}, "process.terminal must be true or false"),
        ({"process": {"user": {"uid": -0.5}}}, "process.user.uid must be an integer"),
        ({"process": {"user": {"uid": True}}}, "process.user.uid must be an integer, not a "
                                               "boolean"),
        ({"process": {"user": {"additionalGids": [1, "2"]}}},
         "process.user.additionalGids must be an array of integers"),
        ({"root": {"path": 1}}, "root.path must be a string, not the number 1"),
        ({"mounts": [{"destination": "/x"}, "tmpfs"]}, "mounts must be an array of objects"),
        ({"mounts": [{"destination": "/x"}, {"options": "ro"}]},
         "mounts[1].options must be an array of strings"),
        ({"hooks": {"prestart": [{"path": ["/x"]}]}}, "hooks.prestart[0].path must be a string"),
        ({"annotations": {"a": 1}}, "annotations must be an object of strings"),
        ({"linux": {"devices": [{"path": "/dev/x", "major": "195"}]}},
         "linux.devices[0].major must be an integer"),
        ({"linux": {"resources": {"memory": {"limit": 1.5e9}}}},
         "linux.resources.memory.limit must be an integer"),
    ],
)
async def test_spec_shape_names_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match="config.json: " + message.replace("[", r"\[")
                       .replace("]", r"\]").replace(".", r"\.")) as info:
        check_spec(spec)
    assert type(info.value).__name__ == "InvalidArgument"


async def test_spec_shape_accepts_a_full_containerd_spec() -> None:
    spec = _spec(
        hostname="h", annotations={"io.kubernetes.cri.container-type": "container"},
        mounts=[{"destination": "/proc", "type": "proc", "source": "proc",
                 "options": ["nosuid"]}],
        hooks={"createRuntime": [{"path": "/bin/hook", "args": ["hook"], "timeout": 5}]},
        linux={"cgroupsPath": "kubepods-pod1.slice:cri-containerd:abc",
               "devices": [{"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0}],
               "resources": {"devices": [{"allow": False, "access": "rwm"}],
                             "memory": {"limit": 1 << 30}},
               "namespaces": [{"type": "network", "path": "/var/run/netns/x"}]})
    check_spec(spec)
