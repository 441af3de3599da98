"""Small readers of the kernel's own counters, for the probe's figures and diagnosis.

Everything here reads /proc of the calling process, so inside `ip netns exec` the
per-namespace files (sockstat, netstat, ip_local_port_range, conntrack) describe that
namespace.  Only the standard library is used: this module is imported by the lean
orchestrator, whose memory every worker inherits.
"""
from __future__ import annotations

import os
import time
from typing import Dict, Optional, Tuple

PAGE = os.sysconf("SC_PAGE_SIZE")
# Bytes of one TCP socket object (slabinfo's "TCP" objsize: ~2.3 KiB on 6.x kernels)
# when /proc/slabinfo cannot be read (it needs root); on the low side on purpose, as
# it only sets the floor below which a slab figure cannot be true.
TCP_OBJECT_FALLBACK = 2048
# Slab growth under this share of the sockets' TCP objects alone cannot be the probe's
# (each connection costs far more: inode, file, dentry, epoll item besides the TCP
# object), so something else on the host freed slab meanwhile.
SLAB_PLAUSIBLE_SHARE = 0.25


def read_sysctl(name: str) -> Optional[str]:
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None


def sysctl_ints(name: str) -> Optional[Tuple[int, ...]]:
    value = read_sysctl(name)
    return None if value is None else tuple(int(v) for v in value.split())


def port_range() -> Tuple[int, int]:
    low, high = sysctl_ints("net.ipv4.ip_local_port_range") or (32768, 60999)
    return low, high


def reserved_ports(low: int, high: int) -> int:
    """How many ports of low..high net.ipv4.ip_local_reserved_ports keeps from connect()."""
    count = 0
    for part in (read_sysctl("net.ipv4.ip_local_reserved_ports") or "").split(","):
        if part.strip():
            a, _, b = part.strip().partition("-")
            lo, hi = int(a), int(b or a)
            count += max(0, min(hi, high) - max(lo, low) + 1)
    return count


def meminfo_kb() -> Dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            out[name] = int(rest.split()[0])
    return out


def sockstat() -> Dict[str, int]:
    """TCP counters of /proc/net/sockstat; `tcp_mem` is in bytes (the file says pages)."""
    out = {}
    with open("/proc/net/sockstat") as f:
        for line in f:
            proto, _, rest = line.partition(":")
            fields = rest.split()
            if proto == "sockets":
                out["sockets_used"] = int(fields[1])
            elif proto == "TCP":
                for key, value in zip(fields[::2], fields[1::2]):
                    out["tcp_" + key] = int(value)
    if "tcp_mem" in out:
        out["tcp_mem"] *= PAGE
    return out


def settled_sockstat(target: int, within: float, step: float = 0.02) -> Dict[str, int]:
    """sockstat() once tcp_inuse is down to `target`, or as it is after `within` seconds.

    Sockets a process closed gracefully stay in use, orphaned, until the peer has
    acknowledged their FIN.  On loopback that FIN can be dropped when it crosses the
    peer's own close (the peer's socket turns into a timewait one meanwhile), and then
    only its retransmission, an RTO (>= 200 ms) later, finishes the close: a count taken
    at once still shows a socket that is only closing."""
    deadline = time.monotonic() + within
    while True:
        out = sockstat()
        if out.get("tcp_inuse", 0) <= target or time.monotonic() >= deadline:
            return out
        time.sleep(step)


def netstat() -> Dict[str, int]:
    """TcpExt counters of /proc/net/netstat (ListenOverflows, ListenDrops, ...)."""
    out = {}
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            out.update(zip(names.split()[1:], map(int, values.split()[1:])))
    return out


def conntrack() -> Optional[Tuple[int, int]]:
    """(nf_conntrack_count, nf_conntrack_max), or None when conntrack is not loaded."""
    count = sysctl_ints("net.netfilter.nf_conntrack_count")
    limit = sysctl_ints("net.netfilter.nf_conntrack_max")
    return (count[0], limit[0]) if count and limit else None


def private_memory(pid: int) -> Tuple[int, int]:
    """(USS, PSS) of a process in bytes, from smaps_rollup (what psutil's memory_full_info reads)."""
    uss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:", "Private_Hugetlb:")):
                uss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return uss * 1024, pss * 1024


def snapshot() -> Dict[str, int]:
    """The counters whose growth the probe reports, taken together.

    `slab` (/proc/meminfo Slab) is host-wide: slab caches are shared by every network
    namespace, so running the probe inside a fresh one (--netns, the tests' throwaway
    namespaces) isolates sockstat and netstat but not Slab.  judge_slab() says when
    other activity on the host has drowned the probe's share of it."""
    mem = meminfo_kb()
    snap = {"slab": mem["Slab"] * 1024, "mem_available": mem["MemAvailable"] * 1024}
    snap.update(sockstat())
    stats = netstat()
    for key in ("ListenOverflows", "ListenDrops", "TCPMemoryPressures", "TCPBacklogDrop",
                "TCPAbortOnMemory"):
        snap[key] = stats.get(key, 0)
    track = conntrack()
    if track:
        snap["conntrack_count"], snap["conntrack_max"] = track
    return snap


def tcp_object_size() -> int:
    """objsize of the TCP slab cache (bytes), or TCP_OBJECT_FALLBACK."""
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                if line.startswith("TCP "):
                    return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return TCP_OBJECT_FALLBACK


def judge_slab(growth: int, sockets: int, object_size: Optional[int] = None) -> Tuple[bool, Optional[str]]:
    """(reliable, why not) for a Slab growth measured while `sockets` TCP sockets were open.

    Slab is host-wide (see snapshot()): anything else freeing kernel memory during the
    run shrinks the figure, possibly below zero.  A growth that is negative or smaller
    than SLAB_PLAUSIBLE_SHARE of the sockets' TCP objects alone is not the probe's
    cost; the caller should say "not measurable" rather than print it.  (Other activity
    can inflate it too, which no floor detects; the report's estimate is the check.)
    """
    if sockets <= 0:
        return False, "no connections were open to measure"
    size = object_size or tcp_object_size()
    floor = SLAB_PLAUSIBLE_SHARE * sockets * size
    if growth < 0:
        return False, (f"host-wide Slab shrank by {-growth:,} B while {sockets:,} sockets were open: "
                       f"other activity on the host freed kernel memory meanwhile")
    if growth < floor:
        return False, (f"host-wide Slab grew {growth:,} B, under {SLAB_PLAUSIBLE_SHARE:.0%} of what "
                       f"{sockets:,} TCP socket objects alone take ({sockets * size:,} B): other "
                       f"activity on the host freed kernel memory meanwhile")
    return True, None
