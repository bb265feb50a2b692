"""shim.task.stats: runsc's stats become the cgroup Metrics that CRI and ctr decode.

The CAPTURED lines are real `runsc events --stats` output for a busybox container: idle
(`sleep`), after `dd if=/dev/zero of=/dev/shm/x bs=1M count=50` inside it, and with three more
processes, from runsc 20240729 and 20221219. The wire paths in WIRE_* are the field numbers of
shim-protocol.md §6.6, decoded here by a hand-written walker rather than by the generated code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import betterproto
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shim.api.io.containerd.cgroups import v1, v2
from shim.task import stats

V1_UNLIMITED = 9223372036854771712  # what memory.limit_in_bytes shows with no limit
U64_MAX = 2**64 - 1

_LO = ('"network_interfaces":[{"Name":"lo","RxBytes":0,"RxPackets":0,"RxErrors":0,'
       '"RxDropped":0,"TxBytes":0,"TxPackets":0,"TxErrors":0,"TxDropped":0}]')
_ZERO_ENTRIES = ('"swap":{"limit":0,"failcnt":0},"kernel":{"limit":0,"failcnt":0},'
                 '"kernelTCP":{"limit":0,"failcnt":0}')


def _event(cid: str, cpu: int, mem: int, pids: int, network: bool) -> str:
    return (f'{{"type":"stats","id":"{cid}","data":{{"cpu":{{"usage":{{"total":{cpu}}}}},'
            f'"memory":{{"usage":{{"limit":0,"usage":{mem},"failcnt":0}},{_ZERO_ENTRIES}}},'
            f'"pids":{{"current":{pids}}}' + (f",{_LO}" if network else "") + "}}")


# name: (events --stats line, cpu ns, memory bytes, pids)
CAPTURED: dict[str, tuple[str, int, int, int]] = {
    "20240729-sleep": (_event("cap1", 109028548, 2031616, 1, True), 109028548, 2031616, 1),
    "20240729-shm-50M": (_event("cap1", 454859413, 54460416, 1, True), 454859413, 54460416, 1),
    "20240729-4-pids": (_event("cap1", 1014659746, 55848960, 4, True), 1014659746, 55848960, 4),
    "20221219-sleep": (_event("cap22", 73304755, 2027520, 1, False), 73304755, 2027520, 1),
    "20221219-shm-50M": (_event("cap22", 130861802, 54456320, 1, False), 130861802, 54456320, 1),
}

# The exact shape of one capture, so a change in the helper above cannot go unnoticed.
VERBATIM_20240729_SLEEP = (
    '{"type":"stats","id":"cap1","data":{"cpu":{"usage":{"total":109028548}},"memory":{"usage":'
    '{"limit":0,"usage":2031616,"failcnt":0},"swap":{"limit":0,"failcnt":0},"kernel":{"limit":0,'
    '"failcnt":0},"kernelTCP":{"limit":0,"failcnt":0}},"pids":{"current":1},"network_interfaces"'
    ':[{"Name":"lo","RxBytes":0,"RxPackets":0,"RxErrors":0,"RxDropped":0,"TxBytes":0,'
    '"TxPackets":0,"TxErrors":0,"TxDropped":0}]}}'
)

# Everything runsc's JSON has room for, each value distinct so a crossed field shows.
FULL: dict[str, Any] = {
    "cpu": {"usage": {"total": 5_000_000, "kernel": 2_000_000, "user": 3_000_000,
                      "percpu": [1_000_000, 4_000_000]}},
    "memory": {
        "cache": 4096,
        "usage": {"limit": 1 << 30, "usage": 10 << 20, "max": 12 << 20, "failcnt": 3},
        "swap": {"limit": 7, "usage": 8, "max": 9, "failcnt": 10},
        "kernel": {"limit": 11, "usage": 12, "max": 13, "failcnt": 14},
        "kernelTCP": {"limit": 15, "usage": 16, "max": 17, "failcnt": 18},
        "raw": {"total_inactive_file": 1 << 20, "total_rss": 6 << 20, "total_pgfault": 101,
                "total_pgmajfault": 102, "inactive_file": 2 << 20, "anon": 5 << 20,
                "pgfault": 201, "pgmajfault": 202, "mapped_file": 303},
    },
    "pids": {"current": 3, "limit": 64},
    "network_interfaces": [{"Name": "eth0", "RxBytes": 21, "RxPackets": 22, "RxErrors": 23,
                            "RxDropped": 24, "TxBytes": 25, "TxPackets": 26, "TxErrors": 27,
                            "TxDropped": 28}],
}


def _data(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(CAPTURED[name][0])["data"]
    return data


def _at(message: betterproto.Message, path: str) -> Any:
    value: Any = message
    for part in path.split("."):
        value = value[int(part)] if part.isdigit() else getattr(value, part)
    return value


def _decode_v1(data: dict[str, Any], **kw: Any) -> v1.Metrics:
    any_ = stats.metrics_any(data, cgroup_v2=False, **kw)
    assert any_.type_url == "io.containerd.cgroups.v1.Metrics"
    return v1.Metrics().parse(any_.value)


def _decode_v2(data: dict[str, Any], **kw: Any) -> v2.Metrics:
    any_ = stats.metrics_any(data, cgroup_v2=True, **kw)
    assert any_.type_url == "io.containerd.cgroups.v2.Metrics"
    return v2.Metrics().parse(any_.value)


# --------------------------------------------------------------------------- captured outputs


def test_capture_helper_reproduces_a_verbatim_line() -> None:
    assert CAPTURED["20240729-sleep"][0] == VERBATIM_20240729_SLEEP


@pytest.mark.parametrize("name", CAPTURED)
def test_captured_v1(name: str) -> None:
    _, cpu, mem, pids = CAPTURED[name]
    m = _decode_v1(_data(name))
    assert m.cpu.usage.total == cpu
    assert (m.memory.usage.usage, m.memory.usage.limit) == (mem, V1_UNLIMITED)
    assert m.memory.hierarchical_memory_limit == V1_UNLIMITED
    assert (m.pids.current, m.pids.limit) == (pids, 0)
    # No breakdown from runsc: CRI's working set (usage - total_inactive_file) is all of it.
    assert (m.memory.total_inactive_file, m.memory.total_rss, m.memory.cache) == (0, 0, 0)
    assert name.startswith("20221219") or [n.name for n in m.network] == ["lo"]


@pytest.mark.parametrize("name", CAPTURED)
def test_captured_v2(name: str) -> None:
    _, cpu, mem, pids = CAPTURED[name]
    m = _decode_v2(_data(name))
    assert m.cpu.usage_usec == cpu // 1000
    assert (m.memory.usage, m.memory.usage_limit, m.memory.inactive_file) == (mem, U64_MAX, 0)
    assert (m.pids.current, m.pids.limit) == (pids, U64_MAX)


@pytest.mark.parametrize("name", CAPTURED)
@pytest.mark.parametrize("cgroup_v2", [False, True], ids=["v1", "v2"])
def test_captured_messages_reach_the_wire(name: str, cgroup_v2: bool) -> None:
    # CRI tests `Memory != nil` / `Memory.Usage != nil` before reading: they must be sent.
    present: list[betterproto.Message]
    if cgroup_v2:
        m2 = _decode_v2(_data(name))
        present = [m2.cpu, m2.memory, m2.pids]
    else:
        m1 = _decode_v1(_data(name))
        present = [m1.cpu, m1.cpu.usage, m1.memory, m1.memory.usage, m1.pids]
    assert all(betterproto.serialized_on_wire(part) for part in present)


# --------------------------------------------------------------------------- field mapping


V1_FIELDS = [
    pytest.param("cpu.usage.total", 5_000_000, id="cpu-total"),
    pytest.param("cpu.usage.kernel", 2_000_000, id="cpu-kernel"),
    pytest.param("cpu.usage.user", 3_000_000, id="cpu-user"),
    pytest.param("cpu.usage.per_cpu", [1_000_000, 4_000_000], id="per-cpu"),
    pytest.param("memory.usage.limit", 1 << 30, id="reported-limit-wins"),
    pytest.param("memory.usage.usage", 10 << 20, id="usage"),
    pytest.param("memory.usage.max", 12 << 20, id="max-usage"),
    pytest.param("memory.usage.failcnt", 3, id="failcnt"),
    pytest.param("memory.swap.usage", 8, id="swap"),
    pytest.param("memory.kernel.max", 13, id="kernel"),
    pytest.param("memory.kernel_tcp.failcnt", 18, id="kernel-tcp"),
    pytest.param("memory.cache", 4096, id="cache"),
    pytest.param("memory.total_cache", 4096, id="total-cache-from-cache"),
    pytest.param("memory.total_inactive_file", 1 << 20, id="raw-total-wins"),
    pytest.param("memory.inactive_file", 2 << 20, id="raw-own"),
    pytest.param("memory.total_rss", 6 << 20, id="raw-total-rss"),
    pytest.param("memory.pg_fault", 201, id="raw-renamed"),
    pytest.param("memory.total_pg_maj_fault", 102, id="raw-total-renamed"),
    pytest.param("memory.total_mapped_file", 303, id="total-from-own"),
    pytest.param("memory.rss", 0, id="v2-key-ignored"),
    pytest.param("pids.current", 3, id="pids"),
    pytest.param("pids.limit", 64, id="pids-limit"),
    pytest.param("network.0.name", "eth0", id="nic-name"),
    pytest.param("network.0.rx_bytes", 21, id="nic-rx"),
    pytest.param("network.0.tx_dropped", 28, id="nic-tx-dropped"),
]


@pytest.mark.parametrize(("path", "want"), V1_FIELDS)
def test_v1_field(path: str, want: Any) -> None:
    assert _at(_decode_v1(FULL, memory_limit=1 << 31), path) == want


V2_FIELDS = [
    pytest.param("cpu.usage_usec", 5_000, id="usage-usec"),
    pytest.param("cpu.system_usec", 2_000, id="system-usec"),
    pytest.param("cpu.user_usec", 3_000, id="user-usec"),
    pytest.param("memory.usage", 10 << 20, id="usage"),
    pytest.param("memory.usage_limit", 1 << 30, id="reported-limit-wins"),
    pytest.param("memory.max_usage", 12 << 20, id="max-usage"),
    pytest.param("memory.swap_usage", 8, id="swap-usage"),
    pytest.param("memory.swap_limit", 7, id="swap-limit"),
    pytest.param("memory.swap_max_usage", 9, id="swap-max"),
    pytest.param("memory.sock", 16, id="kernel-tcp-is-sock"),
    pytest.param("memory.file", 4096, id="cache-is-file"),
    pytest.param("memory.inactive_file", 2 << 20, id="raw"),
    pytest.param("memory.anon", 5 << 20, id="raw-anon"),
    pytest.param("memory.pgmajfault", 202, id="raw-pgmajfault"),
    pytest.param("pids.current", 3, id="pids"),
    pytest.param("pids.limit", 64, id="pids-limit"),
]


@pytest.mark.parametrize(("path", "want"), V2_FIELDS)
def test_v2_field(path: str, want: Any) -> None:
    assert _at(_decode_v2(FULL, memory_limit=1 << 31), path) == want


LIMITS = [
    # (runsc's limit, caller's memory_limit, v1 limit, v2 limit)
    pytest.param(0, None, V1_UNLIMITED, U64_MAX, id="unknown-is-unlimited"),
    pytest.param(0, 256 << 20, 256 << 20, 256 << 20, id="spec-limit"),
    pytest.param(0, -1, V1_UNLIMITED, U64_MAX, id="spec-minus-one-is-unlimited"),
    pytest.param(0, 0, V1_UNLIMITED, U64_MAX, id="spec-zero"),
    pytest.param(64 << 20, 256 << 20, 64 << 20, 64 << 20, id="runsc-limit-wins"),
]


@pytest.mark.parametrize(("reported", "spec", "want_v1", "want_v2"), LIMITS)
def test_memory_limit(reported: int, spec: int | None, want_v1: int, want_v2: int) -> None:
    data = {"memory": {"usage": {"limit": reported, "usage": 1 << 20}}}
    assert _decode_v1(data, memory_limit=spec).memory.usage.limit == want_v1
    assert _decode_v2(data, memory_limit=spec).memory.usage_limit == want_v2


MALFORMED = [
    pytest.param({}, id="empty"),
    pytest.param({"cpu": None, "memory": [], "pids": "x", "network_interfaces": {}}, id="types"),
    pytest.param({"cpu": {"usage": {"total": -5, "percpu": "no"}},
                  "memory": {"usage": {"usage": "12"}, "raw": {"rss": True}},
                  "pids": {"current": math.nan}, "network_interfaces": [None, 3]}, id="values"),
]


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_input_gives_zeros_not_errors(data: dict[str, Any]) -> None:
    m1, m2 = _decode_v1(data), _decode_v2(data)
    assert (m1.cpu.usage.total, m1.memory.usage.usage, m1.pids.current) == (0, 0, 0)
    assert (m1.cpu.usage.per_cpu, m1.network, m1.memory.rss) == ([], [], 0)
    assert (m2.cpu.usage_usec, m2.memory.usage, m2.pids.current) == (0, 0, 0)
    assert betterproto.serialized_on_wire(m1.memory.usage)


def test_huge_values_saturate() -> None:
    data = {"cpu": {"usage": {"total": 2**70}}, "memory": {"usage": {"usage": float("inf")}}}
    m = _decode_v1(data)
    assert (m.cpu.usage.total, m.memory.usage.usage) == (U64_MAX, U64_MAX)


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["cpu", "usage", "total", "percpu", "memory", "raw",
                                       "rss", "limit", "pids", "current", "cache",
                                       "network_interfaces", "Name", "RxBytes"]),
                      inner, max_size=4),
    max_leaves=20))
def test_any_json_encodes(value: Any) -> None:
    # A runsc format change must not make Stats fail: CRI fails every container's stats then.
    data = value if isinstance(value, dict) else {"cpu": value}
    for cgroup_v2 in (False, True):
        assert bytes(stats.metrics_any(data, cgroup_v2=cgroup_v2))


# --------------------------------------------------------------------------- wire numbers


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i


def _fields(buf: bytes) -> dict[int, int | bytes]:
    """Field number -> last value, for the varint and length-delimited fields of one message."""
    out: dict[int, int | bytes] = {}
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        if key & 7 == 0:
            out[key >> 3], i = _varint(buf, i)
        elif key & 7 == 2:
            size, i = _varint(buf, i)
            out[key >> 3], i = buf[i:i + size], i + size
        else:
            raise AssertionError(f"unexpected wire type {key & 7}")
    return out


def _wire_at(buf: bytes, numbers: tuple[int, ...]) -> int | bytes:
    value: int | bytes = buf
    for n in numbers:
        assert isinstance(value, bytes)
        value = _fields(value)[n]
    return value


# The fields CRI reads (shim-protocol.md §6.6), as field-number paths.
WIRE_V1 = [
    pytest.param((3, 1, 1), 5_000_000, id="cpu.usage.total"),
    pytest.param((4, 33, 2), 10 << 20, id="memory.usage.usage"),
    pytest.param((4, 33, 1), 1 << 30, id="memory.usage.limit"),
    pytest.param((4, 30), 1 << 20, id="memory.total_inactive_file"),
    pytest.param((4, 19), 6 << 20, id="memory.total_rss"),
    pytest.param((4, 26), 101, id="memory.total_pg_fault"),
    pytest.param((4, 27), 102, id="memory.total_pg_maj_fault"),
    pytest.param((2, 1), 3, id="pids.current"),
    pytest.param((7, 1), b"eth0", id="network.name"),
]
WIRE_V2 = [
    pytest.param((2, 1), 5_000, id="cpu.usage_usec"),
    pytest.param((4, 32), 10 << 20, id="memory.usage"),
    pytest.param((4, 33), 1 << 30, id="memory.usage_limit"),
    pytest.param((4, 13), 2 << 20, id="memory.inactive_file"),
    pytest.param((4, 1), 5 << 20, id="memory.anon"),
    pytest.param((4, 18), 201, id="memory.pgfault"),
    pytest.param((4, 19), 202, id="memory.pgmajfault"),
    pytest.param((1, 1), 3, id="pids.current"),
]


@pytest.mark.parametrize(("numbers", "want"), WIRE_V1)
def test_v1_wire_numbers(numbers: tuple[int, ...], want: int | bytes) -> None:
    assert _wire_at(stats.metrics_any(FULL, cgroup_v2=False).value, numbers) == want


@pytest.mark.parametrize(("numbers", "want"), WIRE_V2)
def test_v2_wire_numbers(numbers: tuple[int, ...], want: int | bytes) -> None:
    assert _wire_at(stats.metrics_any(FULL, cgroup_v2=True).value, numbers) == want


@pytest.mark.parametrize(("cgroup_v2", "url"), [
    (False, "io.containerd.cgroups.v1.Metrics"),
    (True, "io.containerd.cgroups.v2.Metrics"),
], ids=["v1", "v2"])
def test_type_url_is_exact(cgroup_v2: bool, url: str) -> None:
    # typeurl.Is compares the whole string: no type.googleapis.com/ prefix.
    any_ = stats.metrics_any({}, cgroup_v2=cgroup_v2)
    assert any_.type_url == url
    assert bytes(any_)[:2 + len(url)] == b"\x0a" + bytes([len(url)]) + url.encode()


# --------------------------------------------------------------------------- cgroup mode


# /proc/self/mounts of a cgroup v1 host with systemd's hybrid layout (this project's test VM).
HYBRID = """\
sysfs /sys sysfs rw,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
UNIFIED = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
"""

MOUNTS = [
    pytest.param(UNIFIED, True, id="unified"),
    pytest.param(HYBRID, False, id="hybrid"),
    pytest.param(HYBRID.replace("cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n", ""),
                 False, id="legacy"),
    pytest.param("", False, id="nothing-mounted"),
    pytest.param(UNIFIED + "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n", False, id="v2-overmounted"),
    pytest.param(HYBRID + "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n", True, id="v2-on-top"),
    pytest.param("cgroup2 /sys/fs/cgroup\\040x cgroup2 rw 0 0\n", False, id="escaped-other-path"),
    pytest.param("cgroup2 /sys/fs/cgroup/ cgroup2 rw 0 0\nbroken\n", False, id="not-the-path"),
]


@pytest.mark.parametrize(("text", "want"), MOUNTS)
def test_host_uses_cgroup_v2(text: str, want: bool) -> None:
    assert stats.host_uses_cgroup_v2(text) is want


@pytest.mark.parametrize(("text", "want"), [pytest.param(UNIFIED, True, id="unified"),
                                            pytest.param(HYBRID, False, id="hybrid")])
def test_read_cgroup_v2_reads_the_file(tmp_path: Path, text: str, want: bool) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(text)
    assert stats.read_cgroup_v2(str(mounts)) is want


def test_read_cgroup_v2_defaults_to_this_process() -> None:
    text = Path("/proc/self/mounts").read_text()
    assert stats.read_cgroup_v2() is stats.host_uses_cgroup_v2(text)
