"""The kernel's counters as the probe uses them: figures before and after, and whether a
host-wide figure can be the probe's own.

The files are read by tuner.host.procfs (stdlib only, one error policy); this module
shapes what the probe needs from them.  Everything reads /proc of the calling process,
so inside `ip netns exec` the per-namespace files (sockstat, netstat,
ip_local_port_range, conntrack) describe that namespace.  The lean orchestrator imports
it, and every worker inherits its memory: nothing here imports more than the standard
library at import time.
"""
from __future__ import annotations

import errno
import os
import socket
import time
from functools import lru_cache
from typing import Dict, Optional, Tuple

from tuner.host import procfs

PAGE = os.sysconf("SC_PAGE_SIZE")
# Bytes of one TCP socket object (slabinfo's "TCP" objsize: ~2.3 KiB on 6.x kernels)
# when /proc/slabinfo cannot be read (it needs root); on the low side on purpose, as
# it only sets the floor below which a slab figure cannot be true.
TCP_OBJECT_FALLBACK = 2048
# Slab growth under this share of the sockets' TCP objects alone cannot be the probe's
# (each connection costs far more: inode, file, dentry, epoll item besides the TCP
# object), so something else on the host freed slab meanwhile.
SLAB_PLAUSIBLE_SHARE = 0.25
# TCP slab objects that may read as active without being anyone's socket (SLUB counts a
# CPU's current slab as in use): growth within this of the probe's own is the probe's.
OTHERS_SLACK = 200


IP_LOCAL_PORT_RANGE = 51       # a per-socket ephemeral range, low | high << 16 (Linux 6.3+)
# Set to 1, the probes give sockets no range of their own and plans keep half of each
# range, as before Linux 6.3: how bench/bench_anyip.py measures what the range changes.
SHARED_RANGE_ENV = "TUNER_SHARED_PORT_RANGE"


@lru_cache(maxsize=None)
def own_port_range() -> bool:
    """Whether this kernel takes IP_LOCAL_PORT_RANGE (Linux 6.3+): asked of one socket.
    Here, not in probes.sockets, so `tuner report` learns it without loading ctypes."""
    if os.environ.get(SHARED_RANGE_ENV) == "1":
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.setsockopt(socket.SOL_IP, IP_LOCAL_PORT_RANGE, 0)   # 0: no range of its own
        except OSError as e:
            if e.errno in (errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP):
                return False
            raise
    return True


def port_range() -> Tuple[int, int]:
    return procfs.port_range() or (32768, 60999)


def reserved_ports(low: int, high: int) -> int:
    """How many ports of low..high the reserved ports (ip_local_reserved_ports) keep from connect()."""
    return procfs.ports_in(procfs.reserved_ports_text(), low, high)


def sockstat() -> Dict[str, int]:
    """TCP counters of /proc/net/sockstat, flat ("tcp_inuse", "sockets_used", ...);
    `tcp_mem` is in bytes (the file says pages)."""
    raw = procfs.sockstat()
    out = {"sockets_used": raw.get("sockets", {}).get("used", 0)}
    out.update({"tcp_" + key: value for key, value in raw.get("TCP", {}).items()})
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


def private_memory(pid: int) -> Tuple[int, int]:
    """(USS, PSS) of a process in bytes (psutil, imported here: only the orchestrator
    measures, after its workers are forked)."""
    import psutil

    try:
        info = psutil.Process(pid).memory_full_info()
    except psutil.NoSuchProcess as exc:
        raise ProcessLookupError(pid) from exc
    except psutil.AccessDenied as exc:
        raise PermissionError(pid) from exc
    return info.uss, info.pss


def snapshot() -> Dict[str, int]:
    """The counters whose growth the probe reports, taken together.

    `slab` (/proc/meminfo Slab) is host-wide: slab caches are shared by every network
    namespace, so running the probe inside a fresh one (--netns, the tests' throwaway
    namespaces) isolates sockstat and netstat but not Slab.  judge_slab() says when
    other activity on the host has drowned the probe's share of it."""
    mem = procfs.meminfo_kb()
    snap = {"slab": mem["Slab"] * 1024, "mem_available": mem["MemAvailable"] * 1024}
    snap.update(sockstat())
    stats = procfs.net_counters("TcpExt")
    for key in ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop", "TCPMemoryPressures", "TCPBacklogDrop",
                "TCPAbortOnMemory"):
        snap[key] = stats.get(key, 0)
    track = procfs.conntrack()
    if track:
        snap["conntrack_count"], snap["conntrack_max"] = track
    objects = tcp_objects()
    if objects is not None:
        snap["tcp_objects"] = objects
    return snap


def tcp_objects() -> Optional[int]:
    """Full TCP sockets of the whole host (the TCP and TCPv6 slab caches' active objects),
    every namespace's: what shares Slab with the probe's sockets.  None without root."""
    try:
        caches = procfs.slabinfo() or {}
    except procfs.Unreadable:
        return None
    found = [caches[name].active_objs for name in ("TCP", "TCPv6") if name in caches]
    return sum(found) if found else None


def others_opened(base: Dict[str, int], after: Dict[str, int], own_most: int) -> Optional[str]:
    """Why Slab's growth is not the probe's when the host's TCP sockets grew by more than
    the probe's own (`own_most`: the most sockets the probe's connections can account for,
    both ends where both may be on this host); None when they did not.  Slab is host-wide,
    so other sockets opening meanwhile inflate the figure, which no floor catches (a
    loopback probe of 1,000 read 2.05x the estimate as reliable, issue 28).  The slack is
    SLUB's per-CPU slabs, counted as active though partly free."""
    if "tcp_objects" not in base or "tcp_objects" not in after:
        return None
    grown = after["tcp_objects"] - base["tcp_objects"]
    if grown <= own_most * 1.1 + OTHERS_SLACK:
        return None
    return (f"the host's TCP sockets grew by {grown:,} while the probe's account for at most "
            f"{own_most:,}: other sockets opened on the host meanwhile, and Slab counts theirs too")


def tcp_object_size() -> int:
    """objsize of the TCP slab cache (bytes), or TCP_OBJECT_FALLBACK."""
    try:
        tcp = (procfs.slabinfo() or {}).get("TCP")
    except procfs.Unreadable:
        tcp = None
    return tcp.objsize if tcp else TCP_OBJECT_FALLBACK


def judge_run(base: Dict[str, int], after: Dict[str, int], sockets: int, own_most: int) -> Tuple[bool, Optional[str]]:
    """judge_slab() of a run's snapshots: its Slab growth over `sockets` held, with the
    host's TCP sockets grown past `own_most` (others_opened) making it unmeasurable."""
    return judge_slab(after["slab"] - base["slab"], sockets, others=others_opened(base, after, own_most))


def judge_slab(growth: int, sockets: int, object_size: Optional[int] = None,
               others: Optional[str] = None) -> Tuple[bool, Optional[str]]:
    """(reliable, why not) for a Slab growth measured while `sockets` TCP sockets were open.

    Slab is host-wide (see snapshot()): anything else freeing kernel memory during the
    run shrinks the figure, possibly below zero.  A growth that is negative or smaller
    than SLAB_PLAUSIBLE_SHARE of the sockets' TCP objects alone is not the probe's
    cost; the caller should say "not measurable" rather than print it.  (Other activity
    can inflate it too, which no floor detects; the report's estimate is the check.)
    """
    if sockets <= 0:
        return False, "no connections were open to measure"
    if others:     # others_opened(): the host's TCP sockets grew past the probe's own
        return False, others
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
