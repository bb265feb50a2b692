"""Stats: ``runsc events --stats`` as the cgroup ``Metrics`` containerd decodes.

ctr and CRI compare the Any's type URL exactly (shim-protocol.md §6.6), so the
Metrics flavour must match the host: cgroup v1 messages on a v1 or hybrid
host, v2 on the unified hierarchy, as containerd's own shims decide.

What runsc reports (releases 20221219 and 20240729; gVisor ``runsc/boot/events.go``
and ``Container.populateStats``): ``cpu.usage.total``, ``memory.usage.usage``,
``pids.current`` and, in 20240729 but not 20221219, ``network_interfaces``.
The numbers are the sentry's own accounting, not a host cgroup's. Memory usage
is what the sentry's memory file holds (anonymous memory, page cache and
tmpfs/shm alike, all kept there), for the whole sandbox when it runs one
container; in a pod the pause container reports 0 and the others an equal
share (a container that mounts the sentry's own cgroupfs gets its own
memory.usage_in_bytes instead). CPU time is the sandbox's host cgroup usage
split between containers in proportion to the sentry's per-container CPU
time. Every memory limit is reported as 0, and nothing is broken down (no
kernel/user CPU, per CPU, cache, rss, page faults, swap, throttling, IO or
hugetlb). runsc's JSON has room for some of those (``cpu.usage.kernel/user/
percpu``, ``memory.cache``, ``memory.raw``, ``*.max``, ``pids.limit``), so
they are mapped when present. Because there is no breakdown, rss (v1) and
anon (v2) stay 0 rather than guessed, and CRI's working set
(usage - inactive_file) is the whole usage.

Mapping:

==========================  ==========================  =========================
runsc                       v1 Metrics                  v2 Metrics
==========================  ==========================  =========================
cpu.usage.total (ns)        cpu.usage.total             cpu.usage_usec (/1000)
cpu.usage.kernel / user     cpu.usage.kernel / user     cpu.system_usec / user_usec
cpu.usage.percpu            cpu.usage.per_cpu           (no field)
memory.usage.*              memory.usage.*              memory.usage / usage_limit
                                                        / max_usage
memory.swap.*               memory.swap.*               memory.swap_usage / ...
memory.kernel.*             memory.kernel.*             (no field)
memory.kernelTCP.*          memory.kernel_tcp.*         memory.sock (usage)
memory.cache                memory.cache, total_cache   memory.file
memory.raw (memory.stat)    memory.<same name> (pgpgin  memory.<same name>
                            -> pg_pg_in etc.; total_*
                            from own when absent)
pids.current / limit        pids.current / limit        pids.current / limit
network_interfaces          network                     (no field)
==========================  ==========================  =========================

A memory limit of 0 means "not reported", never "no memory": CRI computes
available bytes as limit - working set without checking for 0, so an
unknown limit becomes the caller's ``memory_limit`` (the spec's, which runsc
applies to the sandbox's host cgroup) or the value the kernel shows for "unlimited".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from betterproto.lib.google.protobuf import Any as AnyMessage

from shim.api.io.containerd.cgroups import v1, v2

__all__ = [
    "V1_TYPE_URL",
    "V2_TYPE_URL",
    "host_uses_cgroup_v2",
    "metrics_any",
    "metrics_v1",
    "metrics_v2",
    "read_cgroup_v2",
]

V1_TYPE_URL = "io.containerd.cgroups.v1.Metrics"
V2_TYPE_URL = "io.containerd.cgroups.v2.Metrics"

_U64_MAX = 2**64 - 1
# memory.limit_in_bytes with no limit set: LONG_MAX rounded down to a page.
_V1_UNLIMITED = 0x7FFF_FFFF_FFFF_F000
_CGROUP_ROOT = "/sys/fs/cgroup"
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")

# cgroup v1 memory.stat keys whose proto field is spelt differently.
_V1_RENAMES = {
    "pgpgin": "pg_pg_in",
    "pgpgout": "pg_pg_out",
    "pgfault": "pg_fault",
    "pgmajfault": "pg_maj_fault",
    "hierarchical_memsw_limit": "hierarchical_swap_limit",
}
# The per-cgroup counters of v1 memory.stat; each also comes as total_<key>.
_V1_COUNTERS = (
    "cache", "rss", "rss_huge", "mapped_file", "dirty", "writeback", "pgpgin", "pgpgout",
    "pgfault", "pgmajfault", "inactive_anon", "active_anon", "inactive_file", "active_file",
    "unevictable",
)
_V1_RAW = {
    **{key: _V1_RENAMES.get(key, key) for key in _V1_COUNTERS},
    **{f"total_{key}": f"total_{_V1_RENAMES.get(key, key)}" for key in _V1_COUNTERS},
    "hierarchical_memory_limit": "hierarchical_memory_limit",
    "hierarchical_memsw_limit": "hierarchical_swap_limit",
}
# v2 memory.stat keys are the proto field names.
_V2_RAW = frozenset({
    "anon", "file", "kernel_stack", "slab", "sock", "shmem", "file_mapped", "file_dirty",
    "file_writeback", "anon_thp", "inactive_anon", "active_anon", "inactive_file",
    "active_file", "unevictable", "slab_reclaimable", "slab_unreclaimable", "pgfault",
    "pgmajfault", "workingset_refault", "workingset_activate", "workingset_nodereclaim",
    "pgrefill", "pgscan", "pgsteal", "pgactivate", "pgdeactivate", "pglazyfree", "pglazyfreed",
    "thp_fault_alloc", "thp_collapse_alloc",
})

_NETWORK_FIELDS = {
    "rx_bytes": "RxBytes", "rx_packets": "RxPackets", "rx_errors": "RxErrors",
    "rx_dropped": "RxDropped", "tx_bytes": "TxBytes", "tx_packets": "TxPackets",
    "tx_errors": "TxErrors", "tx_dropped": "TxDropped",
}


def metrics_any(data: Mapping[str, Any], *, cgroup_v2: bool,
                memory_limit: int | None = None) -> AnyMessage:
    """The ``StatsResponse.stats`` Any for the ``data`` of ``runsc events --stats``.

    ``memory_limit`` is the container's limit in bytes if the caller knows it
    (``linux.resources.memory.limit``); runsc never reports one.
    """
    if cgroup_v2:
        return AnyMessage(type_url=V2_TYPE_URL,
                          value=bytes(metrics_v2(data, memory_limit=memory_limit)))
    return AnyMessage(type_url=V1_TYPE_URL,
                      value=bytes(metrics_v1(data, memory_limit=memory_limit)))


def metrics_v1(data: Mapping[str, Any], *, memory_limit: int | None = None) -> v1.Metrics:
    """runsc's stats as cgroup v1 Metrics (see the module docstring for the mapping)."""
    cpu = _section(data, "cpu", "usage")
    memory = _section(data, "memory")
    pids = _section(data, "pids")
    usage = _entry_v1(_section(memory, "usage"))
    if not usage.limit:
        usage.limit = _positive(memory_limit) or _V1_UNLIMITED
    stat = v1.MemoryStat(
        usage=usage,
        swap=_entry_v1(_section(memory, "swap")),
        kernel=_entry_v1(_section(memory, "kernel")),
        kernel_tcp=_entry_v1(_section(memory, "kernelTCP")),
        hierarchical_memory_limit=usage.limit,
    )
    stat.cache = stat.total_cache = _u64(memory.get("cache"))
    raw = _section(memory, "raw")
    for key, value in raw.items():
        if key in _V1_RAW:
            setattr(stat, _V1_RAW[key], _u64(value))
    for key in _V1_COUNTERS:
        # The container is a leaf, so a hierarchical total equals its own value.
        if key in raw and f"total_{key}" not in raw:
            name = _V1_RENAMES.get(key, key)
            setattr(stat, f"total_{name}", getattr(stat, name))
    return v1.Metrics(
        pids=v1.PidsStat(current=_u64(pids.get("current")), limit=_u64(pids.get("limit"))),
        cpu=v1.CpuStat(usage=v1.CpuUsage(
            total=_u64(cpu.get("total")),
            kernel=_u64(cpu.get("kernel")),
            user=_u64(cpu.get("user")),
            per_cpu=[_u64(n) for n in _list(cpu.get("percpu"))],
        )),
        memory=stat,
        network=[_network(nic) for nic in _list(data.get("network_interfaces"))
                 if isinstance(nic, Mapping)],
    )


def metrics_v2(data: Mapping[str, Any], *, memory_limit: int | None = None) -> v2.Metrics:
    """runsc's stats as cgroup v2 Metrics (see the module docstring for the mapping)."""
    cpu = _section(data, "cpu", "usage")
    memory = _section(data, "memory")
    pids = _section(data, "pids")
    usage, swap = _section(memory, "usage"), _section(memory, "swap")
    stat = v2.MemoryStat(
        usage=_u64(usage.get("usage")),
        # containerd reads "max" in memory.max and pids.max as 2^64-1.
        usage_limit=_positive(usage.get("limit")) or _positive(memory_limit) or _U64_MAX,
        max_usage=_u64(usage.get("max")),
        swap_usage=_u64(swap.get("usage")),
        swap_limit=_u64(swap.get("limit")),
        swap_max_usage=_u64(swap.get("max")),
        sock=_u64(_section(memory, "kernelTCP").get("usage")),
        file=_u64(memory.get("cache")),
    )
    for key, value in _section(memory, "raw").items():
        if key in _V2_RAW:
            setattr(stat, key, _u64(value))
    return v2.Metrics(
        pids=v2.PidsStat(current=_u64(pids.get("current")),
                         limit=_positive(pids.get("limit")) or _U64_MAX),
        cpu=v2.CpuStat(
            usage_usec=_u64(cpu.get("total")) // 1000,
            user_usec=_u64(cpu.get("user")) // 1000,
            system_usec=_u64(cpu.get("kernel")) // 1000,
        ),
        memory=stat,
    )


def host_uses_cgroup_v2(mounts_text: str) -> bool:
    """Whether ``/proc/self/mounts`` shows the unified hierarchy at /sys/fs/cgroup.

    Only a cgroup2 mount *at* /sys/fs/cgroup counts: a hybrid host (cgroup2 at
    /sys/fs/cgroup/unified) is v1 to containerd's shims, and the last mount
    on the path is the one visible.
    """
    fstype = None
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and _unescape(fields[1]) == _CGROUP_ROOT:
            fstype = fields[2]
    return fstype == "cgroup2"


def read_cgroup_v2(mounts: str = "/proc/self/mounts") -> bool:
    """``host_uses_cgroup_v2`` for this process's mount namespace."""
    with open(mounts, encoding="utf-8", errors="replace") as f:
        return host_uses_cgroup_v2(f.read())


# --------------------------------------------------------------------------- helpers


def _section(data: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    """``data[k1][k2]…``, or {} where runsc omitted a level (its JSON uses omitempty)."""
    for key in keys:
        value = data.get(key)
        if not isinstance(value, Mapping):
            return {}
        data = value
    return data


def _entry_v1(entry: Mapping[str, Any]) -> v1.MemoryEntry:
    return v1.MemoryEntry(limit=_u64(entry.get("limit")), usage=_u64(entry.get("usage")),
                          max=_u64(entry.get("max")), failcnt=_u64(entry.get("failcnt")))


def _network(nic: Mapping[str, Any]) -> v1.NetworkStat:
    name = nic.get("Name")
    return v1.NetworkStat(name=name if isinstance(name, str) else "",
                          **{field: _u64(nic.get(key)) for field, key in _NETWORK_FIELDS.items()})


def _u64(value: object) -> int:
    """A JSON number as a uint64; anything else (absent, negative, not a number) is 0.

    A malformed value must not fail the whole Stats call: CRI lists every
    container's stats in one call and fails them all on one error.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if not value >= 0:  # negative or NaN
        return 0
    return _U64_MAX if value >= _U64_MAX else int(value)


def _positive(value: object) -> int | None:
    return _u64(value) or None


def _list(value: object) -> Iterable[Any]:
    return value if isinstance(value, list) else ()


def _unescape(path: str) -> str:
    # The kernel writes space, tab, newline and backslash in mount paths as \ooo (octal).
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), path)
