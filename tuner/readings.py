"""A snapshot of everything the capacity model needs, read from the live host, and
where it is read (a network namespace is entered through tuner.host.netns), and counting a
port's listeners through sock_diag.

The snapshot is plain data (dicts of numbers and strings) so that the model can be
run on fixed inputs (tests build the seed's 8 GB box by hand).  Every read is O(1) in
the number of open sockets: /proc/net/sockstat and /proc/meminfo, never a per-socket
scan, so a report stays fast on a host holding millions of connections.

The files themselves are read by tuner.host.procfs (one reader each, one error policy); this
module decides what is read where: host-wide knobs in the initial namespace,
per-namespace ones (and sockstat, addresses, local routes) inside `--netns`.  Reads that
need privileges (/proc/slabinfo is mode 0400) are recorded in `unreadable` instead of
raising: a normal user gets a report with "unreadable (needs root)" cells, not a
traceback.
"""
from __future__ import annotations

import resource
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from probes.kernel import own_port_range

from tuner.host import localnet, procfs
from tuner.host.netns import check_name, in_netns


@dataclass
class Snapshot:
    """Raw readings. Units are the kernel's: sysctl text, kB for meminfo, bytes elsewhere."""

    sysctls: Dict[str, Optional[str]] = field(default_factory=dict)  # None: not present here
    unreadable: List[str] = field(default_factory=list)               # what needed root
    nofile_soft: int = 0
    nofile_hard: int = 0
    cap_sys_resource: bool = False
    page_size: int = 4096
    meminfo_kb: Dict[str, int] = field(default_factory=dict)
    # slab cache name -> [object size, objects per slab, pages per slab]
    slab: Optional[Dict[str, List[int]]] = None
    # slab cache name -> active objects (what the caches hold now)
    slab_objects: Dict[str, int] = field(default_factory=dict)
    sockstat: Dict[str, Dict[str, int]] = field(default_factory=dict)
    cgroup_memory: Dict[str, Optional[int]] = field(default_factory=dict)  # limit/usage bytes
    addresses: List[Dict[str, object]] = field(default_factory=list)
    # routes of type local (what bind() accepts as a source), AnyIP prefixes included
    local_routes: List[Dict[str, object]] = field(default_factory=list)
    # Sockets here can carry their own port range (IP_LOCAL_PORT_RANGE, Linux 6.3+), so a
    # client that sets it (tuner probe does) fills more of each range fast (probes.config).
    own_port_range: bool = False
    netns: Optional[str] = None
    # A diagnosed process (tuner diagnose): descriptors it holds for other than its
    # connections (None: assume probes.config.FD_HEADROOM, the common reserve), and its thread/mapping figures.
    fds_reserved: Optional[int] = None
    process: Optional[Dict[str, object]] = None

    # Small typed accessors used by the knob rules.
    def ints(self, name: str) -> Optional[List[int]]:
        raw = self.sysctls.get(name)
        if raw is None:
            return None
        return [int(x) for x in raw.split()]

    def int(self, name: str) -> Optional[int]:
        vals = self.ints(name)
        return vals[0] if vals else None


def _read_sysctls(names, snap: Snapshot) -> None:
    for name in names:
        try:
            snap.sysctls[name] = procfs.read_sysctl(name)
        except procfs.Unreadable:
            snap.sysctls[name] = None
            snap.unreadable.append(name)


def _read_slab(snap: Snapshot) -> None:
    try:
        caches = procfs.slabinfo()
    except procfs.Unreadable:
        snap.unreadable.append("/proc/slabinfo")
        return
    if caches is None:
        return
    snap.slab = {name: [c.objsize, c.objperslab, c.pagesperslab] for name, c in caches.items()}
    snap.slab_objects = {name: c.active_objs for name, c in caches.items()}


def source_address_counts(snap: Snapshot, ifname: Optional[str], remote: bool = False) -> dict:
    """{4: n, 6: n}: distinct source addresses outbound connections can use on `ifname`
    (None: every non-loopback device, AnyIP prefixes on lo included), per IP version;
    `remote`: connections to another host (127.0.0.0/8 counts nowhere then):
    tuner.host.localnet counts them, for the probe too."""
    return {v: localnet.source_count(localnet.source_networks(snap.addresses, snap.local_routes,
                                                                ifname, version=v, remote=remote))
            for v in (4, 6)}


def source_address_count(snap: Snapshot, ifname: Optional[str], remote: bool = False) -> int:
    """Source addresses of the better-provided IP version (a client connects over one:
    the report's row says how many each has)."""
    return max(source_address_counts(snap, ifname, remote).values())


def listeners(port: int, address: Optional[str] = None) -> int:
    """TCP sockets listening on `port` (on `address`, when given) in this namespace.

    Read from the kernel's socket table through sock_diag (tuner.host.sockdiag, as `ss -l`
    reads it), so nothing connects: a probe server that counts every client sees no stray
    one from a readiness check.  The kernel filters by state, so the cost is the
    number of listeners, not of connections.
    """
    from tuner.host import sockdiag  # here, not at the top: the report never counts listeners

    return sum(1 for l in sockdiag.listening()
               if l.port == port and address in (None, l.address))


def take_snapshot(host_sysctls, netns_sysctls, netns: Optional[str] = None,
                  enter=None) -> Snapshot:
    """Read the host; names in `netns_sysctls` (and sockstat, addresses) from `netns`,
    or inside `enter` (a context manager: a process's namespace opened by path)."""
    check_name(netns)
    snap = Snapshot(netns=netns)
    _read_sysctls(host_sysctls, snap)
    snap.nofile_soft, snap.nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    snap.cap_sys_resource = procfs.has_capability(procfs.CAP_SYS_RESOURCE)
    snap.page_size = procfs.page_size()
    snap.own_port_range = own_port_range()
    snap.meminfo_kb = procfs.meminfo_kb()
    _read_slab(snap)
    snap.cgroup_memory = procfs.cgroup_memory()
    with enter if enter is not None else in_netns(netns):
        _read_sysctls(netns_sysctls, snap)
        snap.sockstat = procfs.sockstat()
        snap.addresses = localnet.read_addresses()
        snap.local_routes = localnet.read_local_routes()
    return snap
