"""shim.runsc: argv builders (pure), log/error parsing, flag parsing on captured
``runsc flags`` output, and the runner against tiny stand-in scripts."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from shim import runsc
from shim.daemon.reaper import Reaper
from shim.runsc import (
    CheckpointOptions,
    CreateOptions,
    DeleteOptions,
    EventsOptions,
    ExecOptions,
    GlobalOptions,
    KillOptions,
    PauseOptions,
    PsOptions,
    ResumeOptions,
    Runsc,
    RunscError,
    StartOptions,
    StateOptions,
    Stdio,
    Subcommand,
    WaitOptions,
)
from shim.task.errors import wire_status
from shim.ttrpc.status import Code

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# --------------------------------------------------------------------------- argv

GLOBAL_CASES = [
    ("defaults", GlobalOptions(), ["--log-format=json"]),
    ("no log format", GlobalOptions(log_format=None), []),
    (
        "all typed",
        GlobalOptions(root="/r", log="/b/log.json", debug=True, debug_log="/d/", platform="systrap",
                      network="none"),
        ["--root=/r", "--log=/b/log.json", "--log-format=json", "--debug-log=/d/",
         "--platform=systrap", "--network=none", "--debug"],
    ),
    (
        "extra flags keep their order, after the typed ones",
        GlobalOptions(root="/r", extra={"nvproxy": "true", "host-uds": "open", "a": ""}),
        ["--root=/r", "--log-format=json", "--nvproxy=true", "--host-uds=open", "--a="],
    ),
]


@pytest.mark.parametrize(("desc", "opts", "expected"), GLOBAL_CASES,
                         ids=[c[0] for c in GLOBAL_CASES])
def test_global_args(desc: str, opts: GlobalOptions, expected: list[str]) -> None:
    assert opts.args() == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"network": "bridge"}, "network must be one of none, host, sandbox"),
        ({"extra": {"--debug": "x"}}, "without leading dashes"),
        ({"extra": {"a b": "x"}}, "bad runsc flag name"),
        ({"extra": {"root": "/x"}}, "has its own GlobalOptions field"),
        ({"extra": {"network": "host"}}, "has its own GlobalOptions field"),
    ],
)
def test_global_refusals(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GlobalOptions(**kwargs)  # type: ignore[arg-type]


def test_global_options_copy_extra() -> None:
    extra = {"nvproxy": "true"}
    opts = GlobalOptions(extra=extra)
    extra["tpuproxy"] = "true"
    assert opts.args() == ["--log-format=json", "--nvproxy=true"]


def test_expand_id_only_in_path_flags() -> None:
    opts = GlobalOptions(log="/b/%ID%/log.json", debug_log="/d/%ID%/",
                         extra={"panic-log": "/p/%ID%", "pod-init-config": "%ID%"})
    got = opts.expand_id("c1")
    assert (got.log, got.debug_log) == ("/b/c1/log.json", "/d/c1/")
    assert dict(got.extra) == {"panic-log": "/p/c1", "pod-init-config": "%ID%"}


G = GlobalOptions(binary="runsc", root="/r", log_format=None)
SUB_CASES: list[tuple[str, Subcommand, list[str]]] = [
    ("create", CreateOptions(bundle="/b"), ["create", "--bundle=/b", "c"]),
    ("create full", CreateOptions(bundle="/b", pid_file="/b/init.pid", console_socket="/s.sock",
                                  user_log="/l"),
     ["create", "--bundle=/b", "--pid-file=/b/init.pid", "--console-socket=/s.sock",
      "--user-log=/l", "c"]),
    ("start", StartOptions(), ["start", "c"]),
    ("state", StateOptions(), ["state", "c"]),
    ("pause", PauseOptions(), ["pause", "c"]),
    ("resume", ResumeOptions(), ["resume", "c"]),
    ("wait", WaitOptions(), ["wait", "c"]),
    ("wait pid", WaitOptions(pid=3), ["wait", "--pid=3", "c"]),
    ("wait rootpid", WaitOptions(rootpid=9), ["wait", "--rootpid=9", "c"]),
    ("kill default is SIGTERM", KillOptions(), ["kill", "c", "15"]),
    ("kill enum", KillOptions(signal=signal.SIGKILL, all=True), ["kill", "--all", "c", "9"]),
    ("kill by name, one pid", KillOptions(signal="USR1", pid=4),
     ["kill", "--pid=4", "c", "USR1"]),
    ("delete", DeleteOptions(), ["delete", "c"]),
    ("delete force", DeleteOptions(force=True), ["delete", "--force", "c"]),
    ("ps", PsOptions(), ["ps", "--format=json", "c"]),
    ("ps table", PsOptions(format="table"), ["ps", "--format=table", "c"]),
    ("exec", ExecOptions(process="/p.json"), ["exec", "--process=/p.json", "--detach", "c"]),
    ("exec full", ExecOptions(process="/p.json", detach=False, pid_file="/e.pid",
                              internal_pid_file="/e.ipid", console_socket="/s"),
     ["exec", "--process=/p.json", "--pid-file=/e.pid", "--internal-pid-file=/e.ipid",
      "--console-socket=/s", "c"]),
    ("events", EventsOptions(), ["events", "--stats", "c"]),
    ("events stream", EventsOptions(stats=False, interval=2), ["events", "--interval=2", "c"]),
    ("checkpoint", CheckpointOptions(image_path="/img"), ["checkpoint", "--image-path=/img", "c"]),
    ("checkpoint full", CheckpointOptions(image_path="/i", work_path="/w", leave_running=True),
     ["checkpoint", "--image-path=/i", "--work-path=/w", "--leave-running", "c"]),
]


@pytest.mark.parametrize(("desc", "sub", "expected"), SUB_CASES, ids=[c[0] for c in SUB_CASES])
def test_subcommand_argv(desc: str, sub: Subcommand, expected: list[str]) -> None:
    assert runsc.argv(G, sub, "c") == ["runsc", "--root=/r", *expected]


# --------------------------------------------------------------------------- errors

ARGV = ("/usr/bin/runsc", "--root=/r", "--log=/b/log.json", "start", "c")
NETNS = ("starting container: setting up network: creating interfaces from net namespace "
         '"/proc/1/ns/net": cannot run with network enabled in root network namespace')
ERROR_CASES = [
    ("log message wins over stderr", 128, "stderr text\n", "from the log",
     "runsc start failed: from the log"),
    ("last stderr line without a log", 128, "first\nsecond\n\n", None,
     "runsc start failed: second"),
    ("exit status as a last resort", 2, "", None, "runsc start failed: exit status 2"),
    ("timeout", None, "", None, "runsc start failed: killed after a timeout"),
    ("network refusal names the config key", 128, "", NETNS,
     f'runsc start failed: {NETNS}; runsc cannot set up its own network stack '
     '(--network=sandbox) on this host; set network = "none" (loopback only) or network = '
     '"host" in the shim\'s runtime config (key `network`: none | host | sandbox)'),
]


@pytest.mark.parametrize(("desc", "code", "stderr", "log_msg", "expected"), ERROR_CASES,
                         ids=[c[0] for c in ERROR_CASES])
def test_error_message(desc: str, code: int | None, stderr: str, log_msg: str | None,
                       expected: str) -> None:
    err = RunscError(ARGV, code, stderr.encode(), log_msg)
    assert str(err) == expected
    assert err.message == expected
    assert wire_status(err) == Code.UNKNOWN


def test_error_sandbox_eof_hint() -> None:
    msg = ("creating container: cannot create sandbox: cannot read client sync file: "
           "waiting for sandbox to start: EOF")
    assert "runsc nvproxy list-supported-drivers" in str(RunscError(ARGV, 128, b"", msg))


@pytest.mark.parametrize(
    ("reason", "not_found", "unavailable"),
    [
        ('loading container "nope": file does not exist', True, False),
        ('waiting on container "c1": sandbox no longer running and its exit status is '
         "unavailable", False, True),
        ("cannot signal container \"c\" in state created", False, False),
    ],
)
def test_error_classification(reason: str, not_found: bool, unavailable: bool) -> None:
    err = RunscError(ARGV, 128, b"", reason)
    assert (err.not_found, err.exit_status_unavailable) == (not_found, unavailable)
    assert wire_status(err) == (Code.NOT_FOUND if not_found else Code.UNKNOWN)


def _rec(msg: str, level: str = "error") -> str:
    return json.dumps({"msg": msg, "level": level, "time": "2026-01-01T00:00:00Z"},
                      separators=(",", ":"))


LOG_CASES = [
    ("records back to back, no newline", _rec("a") + _rec("b") + _rec("c", "info"), 0, "b"),
    ("newline separated", "\n".join([_rec("a"), _rec("b")]) + "\n", 0, "b"),
    ("only info", _rec("x", "info") + _rec("y", "debug"), 0, None),
    ("fatal counts", _rec("a") + _rec("z", "fatal"), 0, "z"),
    ("offset skips older errors", _rec("old") + _rec("new", "info"), len(_rec("old")), None),
    ("torn first record and text noise", _rec("torn")[5:] + "I1126 text {not json}" + _rec("ok"),
     0, "ok"),
    ("braces inside the message", _rec('bad {"x": 1} value'), 0, 'bad {"x": 1} value'),
    ("offset past the end (file was replaced)", _rec("fresh"), 10_000, "fresh"),
    ("empty", "", 0, None),
]


@pytest.mark.parametrize(("desc", "content", "offset", "expected"), LOG_CASES,
                         ids=[c[0] for c in LOG_CASES])
def test_last_error_message(tmp_path: Path, desc: str, content: str, offset: int,
                            expected: str | None) -> None:
    log = tmp_path / "log.json"
    log.write_text(content)
    assert runsc.last_error_message(str(log), offset) == expected


def test_last_error_message_missing_file(tmp_path: Path) -> None:
    assert runsc.last_error_message(str(tmp_path / "nope")) is None
    assert runsc.last_error_message(None) is None


# --------------------------------------------------------------------------- probe parsing


def _fixture_flags(release: int) -> dict[str, str]:
    return runsc.parse_flags((FIXTURES / f"runsc-flags-{release}.txt").read_text())


@pytest.mark.parametrize(
    ("release", "count", "present", "absent", "platform"),
    [
        (20221219, 68, {"root", "log", "log-format", "debug", "debug-log", "platform", "network",
                        "allow-flag-override", "panic-log", "rootless"},
         {"nvproxy", "nvproxy-docker", "tpuproxy", "host-settings"}, "ptrace"),
        (20240729, 88, {"nvproxy", "nvproxy-docker", "nvproxy-driver-version", "tpuproxy",
                        "metric-server", "TESTONLY-unsafe-nonroot", "EXPERIMENTAL-xdp"},
         {"nvproxy-allowed-driver-capabilities", "nvproxy-allow-unsupported-driver",
          "host-settings"}, "systrap"),
    ],
)
def test_parse_flags_fixtures(release: int, count: int, present: set[str], absent: set[str],
                              platform: str) -> None:
    flags = _fixture_flags(release)
    assert len(flags) == count
    assert present <= flags.keys()
    assert not absent & flags.keys()
    assert all(not name.startswith("-") and " " not in name for name in flags)
    assert f'(default "{platform}")' in flags["platform"]


def test_parse_flags_usage_text() -> None:
    flags = _fixture_flags(20240729)
    # Go puts a back-quoted word of the usage where the type goes; the name is unaffected.
    assert flags["nvproxy-docker"].startswith("DEPRECATED")
    assert flags["nvproxy"] == "EXPERIMENTAL: enable support for Nvidia GPUs"
    assert flags["debug"] == "enable debug logging."


@pytest.mark.parametrize(
    ("text", "version", "release"),
    [
        ("runsc version 0.0~20240729.0\nspec: 1.2.0\n", "0.0~20240729.0", 20240729),
        ("runsc version 0.0~20221219.0\nspec: 1.0.2-dev\n", "0.0~20221219.0", 20221219),
        ("runsc version release-20260817.0\nspec: 1.1.0\n", "release-20260817.0", 20260817),
        ("runsc version 20250113.0\n", "20250113.0", 20250113),
        ("runsc version VERSION_MISSING\n", "VERSION_MISSING", None),
        ("", "", None),
    ],
)
def test_parse_version(text: str, version: str, release: int | None) -> None:
    assert runsc.parse_version(text) == (version, release)


HELP = """Usage: runsc <flags> <subcommand> <subcommand args>

Subcommands:
\tcreate           create a secure container
\twait             wait on a process inside a container

Subcommands for helpers:
\tnvproxy          shows information about nvproxy support

Additional help topics (Use "runsc help <topic>" to see help on the topic):
\tplatforms        Print a list of available platforms.

Use "runsc flags" for a list of top-level flags
"""


def test_parse_subcommands() -> None:
    assert runsc.parse_subcommands(HELP) == {"create", "wait", "nvproxy"}


def _caps(release: int, **kw: object) -> runsc.RunscCapabilities:
    fields: dict[str, object] = {
        "path": "/usr/bin/runsc", "version": f"0.0~{release}.0", "release": release,
        "flags": frozenset(_fixture_flags(release)), "default_platform": None,
        "supported_drivers": None, "subcommands": frozenset()}
    fields.update(kw)
    return runsc.RunscCapabilities(**fields)  # type: ignore[arg-type]


def test_check_flags_names_flag_and_version() -> None:
    old = _caps(20221219)
    runsc.check_flags(old, {"debug": "true", "--platform": "ptrace"})
    with pytest.raises(runsc.UnsupportedFlag) as info:
        runsc.check_flags(old, {"nvproxy": "true", "debug": "true", "made-up": "1"})
    assert str(info.value) == (
        "runsc 0.0~20221219.0 (/usr/bin/runsc) does not support --nvproxy (added in "
        "release-20230529.0), --made-up; upgrade runsc or remove the flag from the runtime "
        "config")
    assert info.value.flags == ("nvproxy", "made-up")
    assert wire_status(info.value) == Code.FAILED_PRECONDITION


def test_check_global_options() -> None:
    opts = GlobalOptions(root="/r", debug=True, platform="ptrace", extra={"nvproxy": "true"})
    assert opts.flag_names() == ["root", "log-format", "platform", "debug", "nvproxy"]
    runsc.check_flags(_caps(20240729), opts.flag_names())
    with pytest.raises(runsc.UnsupportedFlag, match="does not support --nvproxy "):
        runsc.check_flags(_caps(20221219), opts.flag_names())


def test_nvproxy_capability() -> None:
    assert _caps(20240729).nvproxy and not _caps(20221219).nvproxy


# --------------------------------------------------------------------------- runner


@pytest_asyncio.fixture
async def reaper() -> AsyncIterator[Reaper]:
    r = Reaper()
    r.install(asyncio.get_running_loop(), subreaper=False)
    try:
        yield r
    finally:
        r.uninstall()


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# Stand-in that answers like runsc: it finds the subcommand after the global
# flags and prints canned JSON for it.
FAKE = r"""
for a; do case $a in --*) ;; *) cmd=$a; break;; esac; done
printf '%s\0' "$@" > "$(dirname "$0")/argv"
case $cmd in
  state) printf '{"ociVersion":"1.2.0","id":"c","status":"running","pid":42,"bundle":"/b",
    "annotations":{"k":"v"}}';;
  ps) echo '[1,2]';;
  wait) echo '{"id":"c","exitStatus":137}';;
  events) echo '{"type":"stats","id":"c","data":{"pids":{"current":2}}}';;
  exec)
    for a; do case $a in
      --pid-file=*) echo 4242 > "${a#*=}";;
      --internal-pid-file=*) echo 3 > "${a#*=}";;
      --process=*) cp "${a#*=}" "$(dirname "$0")/process.json";;
    esac; done;;
  start) echo "container says hi"; echo "and on stderr" >&2;;
esac
"""

# Stand-in that fails the way runsc does: an error record appended to --log
# (no newline), a plain line on stderr, exit 128.
FAIL = r"""
for a; do case $a in --log=*) log=${a#*=};; esac; done
printf '{"msg":"loading container \\"c\\": file does not exist","level":"error","time":"t"}' \
  >> "$log"
echo 'loading container "c": file does not exist' >&2
exit 128
"""


@pytest_asyncio.fixture
async def fake(reaper: Reaper, tmp_path: Path) -> Runsc:
    return Runsc(GlobalOptions(binary=_script(tmp_path / "runsc", FAKE), root="/r",
                               log=str(tmp_path / "log.json")), reaper)


def _argv(tmp_path: Path) -> list[str]:
    return (tmp_path / "argv").read_bytes().decode().split("\0")[:-1]


@pytest.mark.asyncio
async def test_runner_parses_json(reaper: Reaper, fake: Runsc, tmp_path: Path) -> None:
    state = await fake.state("c")
    assert state == runsc.ContainerState(id="c", status="running", pid=42, bundle="/b",
                                         oci_version="1.2.0", annotations={"k": "v"})
    assert _argv(tmp_path) == ["--root=/r", f"--log={tmp_path}/log.json", "--log-format=json",
                               "state", "c"]
    assert await fake.ps("c") == [1, 2]
    assert await fake.wait("c") == 137
    assert await fake.stats("c") == {"pids": {"current": 2}}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda r: r.create("c", CreateOptions(bundle="/b", pid_file="/p")),
         ["create", "--bundle=/b", "--pid-file=/p", "c"]),
        (lambda r: r.start("c"), ["start", "c"]),
        (lambda r: r.kill("c", KillOptions(signal=9, all=True)), ["kill", "--all", "c", "9"]),
        (lambda r: r.kill("c"), ["kill", "c", "15"]),
        (lambda r: r.delete("c", DeleteOptions(force=True)), ["delete", "--force", "c"]),
        (lambda r: r.pause("c"), ["pause", "c"]),
        (lambda r: r.resume("c"), ["resume", "c"]),
        (lambda r: r.checkpoint("c", CheckpointOptions(image_path="/i")),
         ["checkpoint", "--image-path=/i", "c"]),
        (lambda r: r.wait("c", WaitOptions(pid=5)), ["wait", "--pid=5", "c"]),
    ],
)
async def test_runner_argv(reaper: Reaper, fake: Runsc, tmp_path: Path, call: object,
                           expected: list[str]) -> None:
    await call(fake)  # type: ignore[operator]
    assert _argv(tmp_path)[3:] == expected


@pytest.mark.asyncio
async def test_exec_writes_process_and_reads_pids(reaper: Reaper, fake: Runsc,
                                                  tmp_path: Path) -> None:
    process = {"args": ["sh", "-c", "true"], "cwd": "/", "env": ["PATH=/bin"]}
    started = await fake.exec("c", process)
    assert started == runsc.ExecStarted(pid=4242, internal_pid=3)
    assert json.loads((tmp_path / "process.json").read_text()) == process
    args = _argv(tmp_path)
    assert args[3] == "exec" and "--detach" in args and args[-1] == "c"
    spec = next(a.split("=", 1)[1] for a in args if a.startswith("--process="))
    assert not os.path.exists(spec), "the temporary process spec is removed"


@pytest.mark.asyncio
async def test_exec_keeps_given_pid_files(reaper: Reaper, fake: Runsc, tmp_path: Path) -> None:
    started = await fake.exec("c", {"args": ["true"]}, pid_file=str(tmp_path / "e.pid"),
                              internal_pid_file=str(tmp_path / "e.ipid"))
    assert started.pid == int((tmp_path / "e.pid").read_text())
    assert (tmp_path / "e.ipid").read_text().strip() == "3"


@pytest.mark.asyncio
async def test_stdio_is_handed_to_the_child(reaper: Reaper, fake: Runsc) -> None:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        await fake.start("c", Stdio(stdout=out_w, stderr=err_w))
        os.close(out_w)
        os.close(err_w)
        assert os.read(out_r, 100) == b"container says hi\n"
        assert os.read(err_r, 100) == b"and on stderr\n"
    finally:
        for fd in (out_r, err_r):
            os.close(fd)


@pytest.mark.asyncio
async def test_failure_reads_the_log(reaper: Reaper, tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    log.write_text(_rec("an older failure"))
    r = Runsc(GlobalOptions(binary=_script(tmp_path / "runsc", FAIL), log=str(log)), reaper)
    with pytest.raises(RunscError) as info:
        await r.kill("c", KillOptions(signal=9))
    err = info.value
    assert str(err) == 'runsc kill failed: loading container "c": file does not exist'
    assert err.returncode == 128
    assert err.argv[-3:] == ("kill", "c", "9")
    assert err.stderr == 'loading container "c": file does not exist\n'
    assert err.not_found and wire_status(err) == Code.NOT_FOUND


@pytest.mark.asyncio
async def test_failure_with_stdio_still_explained(reaper: Reaper, tmp_path: Path) -> None:
    # runsc's stderr is the container's here; only the log can explain.
    r = Runsc(GlobalOptions(binary=_script(tmp_path / "runsc", FAIL),
                            log=str(tmp_path / "log.json")), reaper)
    with pytest.raises(RunscError, match="file does not exist") as info:
        await r.create("c", CreateOptions(bundle="/b"), Stdio())
    assert info.value.stderr == ""


@pytest.mark.asyncio
async def test_failure_without_log_uses_stderr(reaper: Reaper, tmp_path: Path) -> None:
    r = Runsc(GlobalOptions(binary=_script(tmp_path / "runsc", "echo 'flag provided but not "
                                           "defined: -bogus' >&2; exit 2")), reaper)
    with pytest.raises(RunscError) as info:
        await r.start("c")
    assert str(info.value) == "runsc start failed: flag provided but not defined: -bogus"
    assert info.value.returncode == 2


@pytest.mark.asyncio
async def test_bad_wait_output(reaper: Reaper, tmp_path: Path) -> None:
    r = Runsc(GlobalOptions(binary=_script(tmp_path / "runsc", "echo not json")), reaper)
    with pytest.raises(RunscError, match="unexpected output b'not json"):
        await r.wait("c")


@pytest.mark.asyncio
async def test_timeout_kills_the_child(reaper: Reaper, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    r = Runsc(GlobalOptions(binary=_script(tmp_path / "runsc", f"echo $$ > {pidfile}; "
                                           "exec sleep 30")), reaper, timeout=0.3)
    with pytest.raises(RunscError, match=r"no answer within 0\.3 s; killed it") as info:
        await r.state("c")
    assert info.value.returncode is None
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)


@pytest.mark.asyncio
async def test_cancelled_wait_kills_the_child(reaper: Reaper, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    r = Runsc(GlobalOptions(binary=_script(tmp_path / "runsc", f"echo $$ > {pidfile}; "
                                           "exec sleep 30")), reaper)
    task = asyncio.create_task(r.wait("c"))
    while not pidfile.exists() or not pidfile.read_text().strip():
        await asyncio.sleep(0.01)
    pid = int(pidfile.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    code = await reaper.watch(pid)
    assert code == 128 + signal.SIGKILL


# --------------------------------------------------------------------------- probe

FAKE_RUNSC = r"""
case "$1" in
  --version) printf 'runsc version 0.0~20240729.0\nspec: 1.2.0\n';;
  flags) cat "$(dirname "$0")/flags.txt" >&2;;
  help) case "$2" in
    platforms) printf 'ptrace\nkvm\nsystrap\n';;
    *) printf 'Subcommands:\n\tcreate  c\n\tnvproxy  n\n';;
  esac;;
  nvproxy) printf '550.54.15\n550.90.07\n535.104.12\n535.129.03\n';;
  *) exit 128;;
esac
"""


@pytest.mark.asyncio
async def test_probe_stand_in_and_cache(reaper: Reaper, tmp_path: Path) -> None:
    (tmp_path / "flags.txt").write_text((FIXTURES / "runsc-flags-20240729.txt").read_text())
    binary = _script(tmp_path / "runsc", FAKE_RUNSC)
    cache = runsc.ProbeCache(str(tmp_path / "cache"))
    caps = await runsc.probe(binary, reaper, cache)
    assert caps.path == binary
    assert (caps.version, caps.release) == ("0.0~20240729.0", 20240729)
    assert caps.default_platform == "systrap"
    assert caps.flags == frozenset(_fixture_flags(20240729))
    # runsc prints them unsorted; sorted as integer triples.
    assert caps.supported_drivers == ("535.104.12", "535.129.03", "550.54.15", "550.90.07")
    assert caps.subcommands == {"create", "nvproxy"}
    assert caps.platforms == frozenset({"ptrace", "kvm", "systrap"})
    assert await runsc.probe(binary, reaper, cache) is caps
    # Another process (a new daemon) finds it on disk without running runsc.
    (tmp_path / "flags.txt").unlink()
    assert await runsc.probe(binary, reaper, runsc.ProbeCache(str(tmp_path / "cache"))) == caps
    # A changed binary is probed again.
    (tmp_path / "flags.txt").write_text((FIXTURES / "runsc-flags-20221219.txt").read_text())
    _script(tmp_path / "runsc", FAKE_RUNSC.replace("nvproxy)", "nvproxy) exit 128;;\n  x)"))
    again = await runsc.probe(binary, reaper, cache)
    assert again is not caps
    assert again.supported_drivers is None and not again.nvproxy
    assert again.default_platform == "ptrace"


@pytest.mark.asyncio
async def test_probe_old_build(reaper: Reaper, tmp_path: Path) -> None:
    (tmp_path / "flags.txt").write_text((FIXTURES / "runsc-flags-20221219.txt").read_text())
    caps = await runsc.probe(_script(tmp_path / "runsc", FAKE_RUNSC.replace(r"\tnvproxy  n", "")),
                             reaper, runsc.ProbeCache(None))
    assert caps.supported_drivers is None
    assert caps.has_flag("--debug") and not caps.has_flag("nvproxy")
    assert caps.platforms == frozenset({"ptrace", "kvm", "systrap"})


@pytest.mark.asyncio
@pytest.mark.parametrize("body", ["true", "echo 'Usage: other-tool' >&2; exit 1"])
async def test_probe_refuses_what_is_not_runsc(reaper: Reaper, tmp_path: Path,
                                               body: str) -> None:
    with pytest.raises(runsc.RunscNotFound, match="does not answer like runsc"):
        await runsc.probe(_script(tmp_path / "runsc", body), reaper, runsc.ProbeCache(None))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no-such-runsc-binary", "'no-such-runsc-binary' is not on PATH"),
        ("/nonexistent/runsc", "'/nonexistent/runsc' is not an executable file"),
    ],
)
def test_resolve_binary_refusal(name: str, message: str) -> None:
    with pytest.raises(runsc.RunscNotFound, match=message) as info:
        runsc.resolve_binary(name)
    assert "set binary_name in the runtime config" in str(info.value)


def test_resolve_binary_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = _script(tmp_path / "runsc", "true")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert runsc.resolve_binary("runsc") == binary


@pytest.mark.parametrize(("release", "flags", "hooks", "seccomp"), [
    (20240729, {"oci-seccomp"}, ["prestart", "createRuntime", "poststart", "poststop"], True),
    (20260601, set(), ["prestart", "createRuntime", "createContainer", "poststart", "poststop"],
     False),
])
def test_features_report_only_what_is_known(release: int, flags: set[str], hooks: list[str],
                                            seccomp: bool) -> None:
    caps = dataclasses.replace(_caps(20240729), release=release, flags=frozenset(flags))
    doc = runsc.features(caps, "1.2.0")
    assert doc["hooks"] == hooks
    assert doc["linux"]["seccomp"] == {"enabled": seccomp}
    assert doc["ociVersionMax"] == "1.2.0"
    assert "mountOptions" not in doc and "capabilities" not in doc["linux"]


def test_spec_version_from_version_output() -> None:
    assert runsc.parse_spec_version("runsc version 0.0~20240729.0\nspec: 1.2.0\n") == "1.2.0"
    assert runsc.parse_spec_version("runsc version x\n") is None
