"""The host's kernel files (/proc/sys, /proc/meminfo, slabinfo, /proc/net, cgroup memory)
and this process's own view of them, read with one error policy.

Stdlib only: the probe's forked workers import it (through probes.kernel), and they must
stay lean; psutil and pyroute2 are used by callers in the parent process, never here.
tests/test_readings.py checks that importing this module pulls in neither, nor typer.

Error policy, the same for every reader here:

- a file this kernel (or this network namespace) does not have -> None (or, for the
  readers that return a dict, an empty dict): "n/a here", never an exception;
- a file the caller may not read (EACCES, EPERM: /proc/slabinfo is mode 0400) ->
  `Unreadable`, a PermissionError naming the path, which callers record as
  "unreadable" (the report's status) instead of failing;
- anything else (EIO, a file that does not parse) propagates: it is a real fault.

Values come back in the kernel's own units unless a name says otherwise (meminfo_kb is
in kB, sockstat's "mem" in pages).  Files under /proc/net and /proc/sys/net resolve
against the caller's network namespace when they are opened, so reading inside a
namespace (tuner.host.netns.in_netns, `ip netns exec`) describes that namespace.

Another process's files (/proc/PID/..., its cgroups), which `tuner diagnose` reads, are
tuner/host/procpid.py's, with the policy that suits a process that may exit meanwhile.
"""
from __future__ import annotations

import errno
import os
import resource
from typing import Dict, NamedTuple, Optional, Tuple

from tuner.host.procpid import cgroup_root, process_cgroup_pids, v2_base

PROC_SYS = "/proc/sys"
_MISSING = (errno.ENOENT, errno.ENOTDIR)
_DENIED = (errno.EACCES, errno.EPERM)


class Unreadable(PermissionError):
    """A kernel file exists but this process may not read it (record it as unreadable)."""

    def __init__(self, path: str):
        super().__init__(errno.EACCES, f"{path} is not readable without root", path)
        self.path = path


def read_text(path: str) -> Optional[str]:
    """The whole file as text; None when it does not exist; Unreadable when denied."""
    try:
        # As procpid reads: a comm's \r stays in its line, its non-UTF-8 bytes read.
        with open(path, newline="", errors="surrogateescape") as f:
            return f.read()
    except OSError as e:
        if e.errno in _MISSING:
            return None
        if e.errno in _DENIED:
            raise Unreadable(path) from None
        raise


# ---------------------------------------------------------------- /proc/sys

def sysctl_path(name: str) -> str:
    """net.ipv4.tcp_mem -> /proc/sys/net/ipv4/tcp_mem (dots only: no name is a path)."""
    return os.path.join(PROC_SYS, *name.split("."))


def read_sysctl(name: str) -> Optional[str]:
    """A sysctl's text with whitespace folded to single spaces ("4096 131072 6291456");
    None when this kernel or namespace lacks it."""
    text = read_text(sysctl_path(name))
    return None if text is None else " ".join(text.split())


def sysctl_ints(name: str) -> Optional[Tuple[int, ...]]:
    text = read_sysctl(name)
    return None if text is None else tuple(int(v) for v in text.split())


def sysctl_int(name: str) -> Optional[int]:
    values = sysctl_ints(name)
    return values[0] if values else None


def port_range() -> Optional[Tuple[int, int]]:
    """net.ipv4.ip_local_port_range of this namespace: the ports connect() picks from."""
    values = sysctl_ints("net.ipv4.ip_local_port_range")
    return None if not values else (values[0], values[1])


def reserved_ports_text() -> str:
    """net.ipv4.ip_local_reserved_ports ("" when none, or when the kernel lacks it)."""
    return read_sysctl("net.ipv4.ip_local_reserved_ports") or ""


def tcp_mem() -> Optional[Tuple[int, ...]]:
    """net.ipv4.tcp_mem in pages (low, pressure, high)."""
    return sysctl_ints("net.ipv4.tcp_mem")


def nr_open() -> Optional[int]:
    """fs.nr_open: the ceiling on any RLIMIT_NOFILE."""
    return sysctl_int("fs.nr_open")


def conntrack_count() -> Optional[int]:
    """Connections conntrack tracks now in this namespace, None when it is not loaded."""
    return sysctl_int("net.netfilter.nf_conntrack_count")


def conntrack() -> Optional[Tuple[int, int]]:
    """(nf_conntrack_count, nf_conntrack_max), or None when conntrack is not loaded."""
    count = sysctl_int("net.netfilter.nf_conntrack_count")
    limit = sysctl_int("net.netfilter.nf_conntrack_max")
    return None if count is None or limit is None else (count, limit)


def ports_in(text: str, low: int, high: int) -> int:
    """How many ports of low..high a port list ("1000,2000-2009", the format of
    ip_local_reserved_ports) names; ports outside low..high do not count."""
    count = 0
    for part in text.replace(",", " ").split():
        first, _, last = part.partition("-")
        count += max(0, min(int(last or first), high) - max(int(first), low) + 1)
    return count


# ---------------------------------------------------------------- memory

def meminfo_kb() -> Dict[str, int]:
    """/proc/meminfo as {"MemAvailable": kB, "Slab": kB, ...} (HugePages_* are counts)."""
    out: Dict[str, int] = {}
    for line in (read_text("/proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key] = int(parts[0])
    return out


class SlabCache(NamedTuple):
    """One line of /proc/slabinfo: counts and object geometry of a slab cache."""

    active_objs: int
    num_objs: int
    objsize: int         # bytes of one object
    objperslab: int
    pagesperslab: int


def slabinfo() -> Optional[Dict[str, SlabCache]]:
    """Every slab cache by name; None when the kernel has no /proc/slabinfo.  Raises
    Unreadable without root (the file is mode 0400)."""
    text = read_text("/proc/slabinfo")
    if text is None:
        return None
    caches: Dict[str, SlabCache] = {}
    for line in text.splitlines()[2:]:  # a version line and a header
        parts = line.split()
        if len(parts) >= 6:
            caches[parts[0]] = SlabCache(*(int(p) for p in parts[1:6]))
    return caches


def cgroup_memory() -> Dict[str, Optional[int]]:
    """Memory limit and usage of this process's cgroup (v2 first, then v1), in bytes.

    "limit" None means unlimited.  Kernel socket memory is charged to the cgroup, so a
    container's limit caps connections even on a big host.
    """
    result: Dict[str, Optional[int]] = {"version": None, "limit": None, "usage": None}
    try:
        text = read_text("/proc/self/cgroup")
    except Unreadable:
        return result
    entries = [line.split(":", 2) for line in (text or "").splitlines() if line.count(":") >= 2]
    for _, controllers, path in entries:
        if controllers == "":  # v2 unified hierarchy
            base = cgroup_root() + path
            limit = _first_word(os.path.join(base, "memory.max"))
            if limit is not None:
                result.update(version=2, limit=_int_or_none(limit),
                              usage=_int_or_none(_first_word(os.path.join(base, "memory.current"))))
                return result
    for _, controllers, path in entries:
        if "memory" in controllers.split(","):
            # The v1 mount may show our cgroup as its root (a container) or the full path.
            for base in (cgroup_root() + "/memory" + path, cgroup_root() + "/memory"):
                limit = _first_word(os.path.join(base, "memory.limit_in_bytes"))
                if limit is not None:
                    value = int(limit)
                    # v1 says "unlimited" with a huge page-aligned number.
                    result.update(version=1, limit=None if value >= 1 << 60 else value,
                                  usage=_int_or_none(_first_word(os.path.join(base, "memory.usage_in_bytes"))))
                    return result
    return result


def _first_word(path: str) -> Optional[str]:
    try:
        text = read_text(path)
    except Unreadable:
        return None
    return None if text is None else text.strip()


def _int_or_none(text: Optional[str]) -> Optional[int]:
    return int(text) if text not in (None, "", "max") else None


# ---------------------------------------------------------------- /proc/net (this namespace)

def sockstat(path: str = "/proc/net/sockstat") -> Dict[str, Dict[str, int]]:
    """/proc/net/sockstat as {"sockets": {"used": ..}, "TCP": {"inuse": .., "mem": pages}}:
    O(1) in the number of sockets, never a per-socket scan."""
    out: Dict[str, Dict[str, int]] = {}
    for line in (read_text(path) or "").splitlines():
        proto, _, rest = line.partition(":")
        words = rest.split()
        out[proto.strip()] = {k: int(v) for k, v in zip(words[::2], words[1::2])}
    return out


def net_counters(group: str, path: str = "/proc/net/netstat") -> Dict[str, int]:
    """One group of counters from /proc/net/netstat ("TcpExt": ListenOverflows,
    ListenDrops, TCPMemoryPressures, ...) or /proc/net/snmp ("Tcp", "Ip", ...): both
    files pair a line of names with a line of values."""
    lines = (read_text(path) or "").splitlines()
    out: Dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2]):
        if names.split(":", 1)[0] == group:
            out.update(zip(names.split()[1:], (int(v) for v in values.split()[1:])))
    return out


# ---------------------------------------------------------------- this process

def capabilities(pid: str = "self") -> int:
    """The effective capability mask of a process (CapEff in /proc/PID/status); 0 when
    the process is gone."""
    # "\n" only: splitlines() would also split the comm ("x\rCapEff:\t1ff") into a line.
    for line in (read_text(f"/proc/{pid}/status") or "").split("\n"):
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


CAP_SYS_RESOURCE = 24


def has_capability(cap: int, pid: str = "self") -> bool:
    return bool(capabilities(pid) >> cap & 1)


def page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- this process's task limit, its workers' CPU

def task_limit_hit() -> tuple:
    """(limit, detail) a fork() that failed with EAGAIN most likely hit: the pids.max of
    this process's cgroup or an ancestor with the least room (cgroup v2, or the v1 pids
    hierarchy; process_cgroup_pids, as diagnose reads it), RLIMIT_NPROC, or
    kernel.threads-max.  Read once, at the failure, by the probe."""
    try:
        pids = process_cgroup_pids(os.getpid())
    except OSError:
        pids = {"limit": None}
    if pids["limit"] is not None:
        base = v2_base() if pids["version"] == 2 else os.path.join(cgroup_root(), "pids")
        where = pids["path"][len(base or ""):]
        return "pids.max", (f"cgroup {where or '/'} has pids.max {pids['limit']} "
                            f"({pids['current']} tasks in it)")
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != resource.RLIM_INFINITY and os.geteuid() != 0:
        return "RLIMIT_NPROC", f"RLIMIT_NPROC is {soft}"
    return "kernel.threads-max", "the host's task limit (or its memory for new tasks)"


def started_seconds(pid: int) -> Optional[float]:
    """When process pid started, in seconds since boot (/proc/PID/stat starttime), None
    once it is gone: beside uptime_seconds(), whether it started after a moment."""
    text = read_text(f"/proc/{pid}/stat")
    if text is None:
        return None
    return int(text.rpartition(")")[2].split()[19]) / os.sysconf("SC_CLK_TCK")


def uptime_seconds() -> float:
    """Seconds since boot (/proc/uptime), the clock starttime counts on."""
    return float((read_text("/proc/uptime") or "0").split()[0])


def cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU time of process pid so far (/proc/PID/stat), None once it is gone."""
    text = read_text(f"/proc/{pid}/stat")
    if text is None:
        return None
    fields = text.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- for diagnose --watch

def task_count() -> Optional[int]:
    """Tasks (threads) on the host now: the total of /proc/loadavg's 'running/total'."""
    text = read_text("/proc/loadavg")
    return None if text is None else int(text.split()[3].split("/")[1])


def slab_active(names) -> Dict[str, Tuple[int, int]]:
    """(active objects, object size) of these slab caches (root only: /proc/slabinfo,
    Unreadable otherwise; {} where the kernel has none).

    --watch compares proc_inode_cache and dentry growth with connection growth: a tool
    listing /proc/PID/fd (lsof, ss -p, an agent) pins a proc inode and a dentry per
    descriptor it looks at."""
    wanted, out = set(names), {}
    for line in (read_text("/proc/slabinfo") or "").splitlines():
        parts = line.split()
        if parts and parts[0] in wanted and len(parts) > 3:
            out[parts[0]] = (int(parts[1]), int(parts[3]))
    return out


def conntrack_stats(names) -> Dict[str, int]:
    """Counters of /proc/net/stat/nf_conntrack (insert_failed, drop, ...) summed over
    CPUs (one hex row each); {} where conntrack is not loaded."""
    text = read_text("/proc/net/stat/nf_conntrack")
    if text is None:
        return {}
    head, *rows = text.split("\n")
    columns = head.split()
    out = {k: 0 for k in names if k in columns}
    for row in rows:
        vals = row.split()
        if len(vals) == len(columns):
            for k in out:
                out[k] += int(vals[columns.index(k)], 16)
    return out
