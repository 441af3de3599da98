"""A snapshot of everything the capacity model needs, read from the live host.

The snapshot is plain data (dicts of numbers and strings) so that the model can be
run on fixed inputs (tests build the seed's 8 GB box by hand) and so that
`--json` can show exactly what was read.  Every read is O(1) in the number of
open sockets: /proc/net/sockstat and /proc/meminfo, never a per-socket scan, so a
report stays fast on a host holding millions of connections.

Reads that need privileges (e.g. /proc/slabinfo is mode 0400) are recorded in
`unreadable` instead of raising: a normal user gets a report with "unreadable
(needs root)" cells, not a traceback.
"""
from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import resource
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterator, List, Optional

from .errors import PermissionNeeded

PROC_SYS = "/proc/sys"
NETNS_RUN_DIR = "/var/run/netns"
CAP_SYS_RESOURCE = 24
CAP_SYS_ADMIN = 21


@dataclass
class Snapshot:
    """Raw readings. Units are the kernel's: sysctl text, kB for meminfo, bytes elsewhere."""

    sysctls: Dict[str, Optional[str]] = field(default_factory=dict)  # None: not present here
    unreadable: List[str] = field(default_factory=list)               # what needed root
    nofile_soft: int = 0
    nofile_hard: int = 0
    cap_sys_resource: bool = False
    euid: int = 0
    page_size: int = 4096
    meminfo_kb: Dict[str, int] = field(default_factory=dict)
    # slab cache name -> [object size, objects per slab, pages per slab]
    slab: Optional[Dict[str, List[int]]] = None
    sockstat: Dict[str, Dict[str, int]] = field(default_factory=dict)
    cgroup_memory: Dict[str, Optional[int]] = field(default_factory=dict)  # limit/usage bytes
    addresses: List[Dict[str, object]] = field(default_factory=list)
    netns: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Snapshot":
        return cls(**data)

    # Small typed accessors used by the knob rules.
    def ints(self, name: str) -> Optional[List[int]]:
        raw = self.sysctls.get(name)
        if raw is None:
            return None
        return [int(x) for x in raw.split()]

    def int(self, name: str) -> Optional[int]:
        vals = self.ints(name)
        return vals[0] if vals else None

    @property
    def is_root(self) -> bool:
        return self.euid == 0


def sysctl_path(name: str) -> str:
    return os.path.join(PROC_SYS, *name.split("."))


def read_sysctl(name: str) -> Optional[str]:
    """Text of a sysctl with whitespace folded; None when this kernel/netns lacks it.

    PermissionError propagates so the caller can record "needs root".
    """
    try:
        with open(sysctl_path(name)) as f:
            return " ".join(f.read().split())
    except FileNotFoundError:
        return None


def _read_sysctls(names, snap: Snapshot) -> None:
    for name in names:
        try:
            snap.sysctls[name] = read_sysctl(name)
        except PermissionError:
            snap.sysctls[name] = None
            snap.unreadable.append(name)


def read_meminfo() -> Dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                out[key] = int(parts[0])
    return out


def read_slabinfo() -> Optional[Dict[str, List[int]]]:
    """Object geometry of each slab cache, or None when /proc/slabinfo needs root."""
    try:
        with open("/proc/slabinfo") as f:
            lines = f.read().splitlines()
    except (PermissionError, FileNotFoundError):
        return None
    caches = {}
    for line in lines[2:]:
        parts = line.split()
        # name active num objsize objperslab pagesperslab ...
        if len(parts) >= 6:
            caches[parts[0]] = [int(parts[3]), int(parts[4]), int(parts[5])]
    return caches


def read_sockstat(path: str = "/proc/net/sockstat") -> Dict[str, Dict[str, int]]:
    """/proc/net/sockstat as {"TCP": {"inuse": .., "mem": ..}, ...}: O(1), no socket walk."""
    out: Dict[str, Dict[str, int]] = {}
    with open(path) as f:
        for line in f:
            proto, _, rest = line.partition(":")
            words = rest.split()
            out[proto.strip()] = {k: int(v) for k, v in zip(words[::2], words[1::2])}
    return out


def read_netstat(path: str = "/proc/net/netstat") -> Dict[str, int]:
    """TcpExt counters (ListenOverflows, ListenDrops, TCPMemoryPressures, ...)."""
    out: Dict[str, int] = {}
    with open(path) as f:
        lines = f.read().splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        prefix = head.split(":")[0]
        if prefix != "TcpExt":
            continue
        for k, v in zip(head.split()[1:], vals.split()[1:]):
            out[k] = int(v)
    return out


def has_capability(cap: int, pid: str = "self") -> bool:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> cap & 1)
    return False


def read_cgroup_memory() -> Dict[str, Optional[int]]:
    """Memory limit and usage of this process's cgroup (v2 first, then v1).

    "limit" None means unlimited. Kernel socket memory is charged to the cgroup, so a
    container's limit caps connections even on a big host.
    """
    result: Dict[str, Optional[int]] = {"version": None, "limit": None, "usage": None}
    try:
        with open("/proc/self/cgroup") as f:
            entries = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return result
    for _, controllers, path in entries:
        if controllers == "":  # v2 unified hierarchy
            base = "/sys/fs/cgroup" + path
            limit = _read_first(os.path.join(base, "memory.max"))
            if limit is not None:
                result.update(version=2, limit=None if limit == "max" else int(limit),
                              usage=_int_or_none(_read_first(os.path.join(base, "memory.current"))))
                return result
    for _, controllers, path in entries:
        if "memory" in controllers.split(","):
            # The v1 mount may show our cgroup as its root (a container) or the full path.
            for base in ("/sys/fs/cgroup/memory" + path, "/sys/fs/cgroup/memory"):
                limit = _read_first(os.path.join(base, "memory.limit_in_bytes"))
                if limit is not None:
                    value = int(limit)
                    # v1 says "unlimited" with a huge page-aligned number.
                    result.update(version=1, limit=None if value >= 1 << 60 else value,
                                  usage=_int_or_none(_read_first(os.path.join(base, "memory.usage_in_bytes"))))
                    return result
    return result


def _read_first(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _int_or_none(text: Optional[str]) -> Optional[int]:
    return int(text) if text not in (None, "", "max") else None


def read_addresses() -> List[Dict[str, object]]:
    """IPv4/IPv6 addresses of every interface, through netlink (pyroute2)."""
    from pyroute2 import IPRoute

    out = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for addr in ipr.get_addr():
            out.append({
                "ifname": names.get(addr["index"], str(addr["index"])),
                "address": addr.get_attr("IFA_ADDRESS") or addr.get_attr("IFA_LOCAL"),
                "prefixlen": addr["prefixlen"],
                "family": 6 if addr["family"] == 10 else 4,
            })
    return out


def source_address_count(addresses, ifname: Optional[str], family: int = 4) -> int:
    """How many distinct IPv4 source addresses outbound connections can use.

    On `lo` an address like 127.0.0.1/8 makes the whole prefix local (Linux answers
    for all of 127.0.0.0/8), so it counts as 2^24 - 2 addresses, not one.
    """
    total = 0
    for a in addresses:
        if a["family"] != family or (ifname and a["ifname"] != ifname):
            continue
        if not ifname and a["ifname"] == "lo":
            continue  # outbound to another host never leaves from loopback addresses
        if a["ifname"] == "lo":
            net = ipaddress.ip_network(f"{a['address']}/{a['prefixlen']}", strict=False)
            total += max(net.num_addresses - 2, 1)
        else:
            total += 1
    return total


def netns_exists(name: str) -> bool:
    from .inputs import netns_names

    return name in netns_names()


@contextlib.contextmanager
def in_netns(name: Optional[str]) -> Iterator[None]:
    """Run the body inside network namespace `name` (None: stay where we are).

    /proc/sys/net and /proc/net resolve against the caller's netns at open time, so
    switching this (single-threaded) process in and back is enough; pyroute2's
    pushns/popns keep the way back.
    """
    if name is None:
        yield
        return
    check_netns(name)
    from pyroute2 import netns as pnetns

    # An open descriptor, not the name: given a name, pyroute2 creates a namespace that
    # does not exist (setns defaults to O_CREAT), and entering must never create one.
    fd = os.open(os.path.join(NETNS_RUN_DIR, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            pnetns.pushns(fd)
        except OSError as e:
            pnetns.dropns()
            if e.errno == errno.EPERM:
                raise PermissionNeeded(f"entering network namespace {name!r} needs root: run as root")
            raise
    finally:
        os.close(fd)
    try:
        yield
    finally:
        pnetns.popns()


def check_netns(name: str) -> None:
    from .inputs import check_netns_name

    check_netns_name(name)


def take_snapshot(host_sysctls, netns_sysctls, netns: Optional[str] = None) -> Snapshot:
    """Read the host; names in `netns_sysctls` (and sockstat, addresses) from `netns`."""
    if netns is not None:
        check_netns(netns)
    snap = Snapshot(netns=netns)
    _read_sysctls(host_sysctls, snap)
    snap.nofile_soft, snap.nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    snap.cap_sys_resource = has_capability(CAP_SYS_RESOURCE)
    snap.euid = os.geteuid()
    snap.page_size = resource.getpagesize()
    snap.meminfo_kb = read_meminfo()
    snap.slab = read_slabinfo()
    if snap.slab is None:
        snap.unreadable.append("/proc/slabinfo")
    snap.cgroup_memory = read_cgroup_memory()
    with in_netns(netns):
        _read_sysctls(netns_sysctls, snap)
        snap.sockstat = read_sockstat()
        snap.addresses = read_addresses()
    return snap
