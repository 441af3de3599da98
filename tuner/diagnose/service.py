"""A running service as the kernel sees it: which processes, their sockets, their limits.

`tuner diagnose` (and `tuner metrics`) name a service by --pid, --port or --unit; this
module turns that into processes and reads, for each, what decides how many
connections it can hold.  Socket facts come from sock_diag (netlink), inside the
process's own network namespace, never from /proc/net/tcp (a Python loop over a
million lines) nor from listing /proc/PID/fd (which costs the process a proc inode and
a dentry per descriptor).  /proc/PID readers live in tuner/host/procpid.py.
"""
from __future__ import annotations

import contextlib
import os
import socket
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set

from tuner.host import procfs, procpid, sockdiag
from tuner.host.errors import PermissionNeeded, UsageError
from tuner.inputs import UNIT_NAME
from tuner.host.netns import entered, in_netns, own_inode

LOW_FD_FIRST = 64           # listeners and epoll instances are opened early: look here first,
LOW_FD_SCAN = 1024          # and this far only for a process whose listener was not there
EPOLL_COUNT_MAX_FDS = 4096  # fdinfo of an epoll instance is O(watches): read it for small
                            # processes only (the row's "used" is information, not a limit)

class ProcessGone(UsageError):
    """The process exited while tuner read it."""


@dataclass
class Listener:
    family: int                  # 4 or 6
    address: str
    port: int
    backlog: int                 # effective: min(listen() backlog, somaxconn at listen())
    queued: int                  # accept queue now (ss Recv-Q)
    inode: int
    pids: List[int] = field(default_factory=list)
    reuseport_siblings: int = 0  # other listening sockets on the same address and port

    def to_dict(self) -> dict:
        return {"address": self.address, "port": self.port, "family": self.family,
                "backlog": self.backlog, "queued": self.queued, "inode": self.inode,
                "pids": self.pids, "reuseport_siblings": self.reuseport_siblings}


@dataclass
class Connections:
    """Sockets on the service's ports: counts only, from one filtered sock_diag dump."""

    held: int = 0                                        # established + close-wait
    by_port: Dict[int, int] = field(default_factory=dict)
    peers: int = 0                                       # distinct peer addresses
    accept_queue: int = 0                                # established, not yet accepted
    peer_closed: int = 0                                 # close-wait: the peer closed, the service not

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Process:
    """One process's own figures (what the knob table reads from the host for tuner)."""

    pid: int
    name: str
    uid: int
    ppid: int
    exe: Optional[str]
    cmdline: List[str]
    threads: int
    fds: int
    nofile_soft: int
    nofile_hard: int
    cap_sys_resource: bool
    netns_inode: int
    maps: int
    socket_inodes: Dict[int, int] = field(default_factory=dict)  # inode -> fd (low fds)
    epoll_watches: Optional[int] = None
    cgroup_memory: Dict[str, object] = field(default_factory=dict)
    cgroup_pids: Dict[str, object] = field(default_factory=dict)
    unit: Optional[str] = None

    def to_dict(self) -> dict:
        # Not asdict(): socket_inodes can hold a thousand entries nobody needs in JSON.
        return {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
                for k, v in self.__dict__.items() if k != "socket_inodes"}


# ---------------------------------------------------------------- errors

@contextlib.contextmanager
def _reading(pid: int, what: str = "") -> Iterator[None]:
    """Turn the kernel's errors while reading one process into one-line tuner errors."""
    try:
        yield
    except (FileNotFoundError, ProcessLookupError):
        if os.path.exists(f"/proc/{pid}"):
            raise  # the process is there: a missing file is something else
        raise ProcessGone(f"pid {pid} exited while it was being read{what}: "
                          f"run again against the running service") from None
    except PermissionError:
        raise PermissionNeeded(f"reading pid {pid}{what} needs root (it belongs to another "
                               f"user): run tuner as root") from None


def check_pid(pid: int) -> None:
    """Refuse, in one line each, what cannot be a server: no such process, PID 1 (the
    init system; diagnose the service it started), a kernel thread, a zombie."""
    if pid < 1:
        raise UsageError(f"--pid {pid}: process IDs are positive numbers")
    if not os.path.exists(f"/proc/{pid}"):
        raise UsageError(f"no process with pid {pid} (list servers with 'ss -ltnp')")
    with _reading(pid):
        status = procpid.proc_status(pid)
        if status.get("Tgid") and int(status["Tgid"]) != pid:
            raise UsageError(f"pid {pid} is a thread of process {status['Tgid']}: "
                             f"use --pid {status['Tgid']}")
        if pid == 1:
            raise UsageError(f"pid 1 is the init process ({status.get('Name')}): diagnose the "
                             f"service it started, by --port or --unit")
        if procpid.is_kernel_thread(pid):
            raise UsageError(f"pid {pid} is a kernel thread ({status.get('Name')}): it holds no "
                             f"sockets of its own; name a server process")
        if status.get("State", "").startswith(("Z", "X")):
            raise UsageError(f"pid {pid} ({status.get('Name')}) is a zombie: it has exited and "
                             f"holds no sockets (its parent, pid {status.get('PPid')}, has not "
                             f"reaped it)")


# ---------------------------------------------------------------- network namespaces

@contextlib.contextmanager
def in_netns_of(pid: Optional[int]) -> Iterator[None]:
    """Run the body in the network namespace of `pid`, opened by path (/proc/PID/ns/net),
    so /proc/sys/net, /proc/net and new netlink sockets are that namespace's. No-op
    when it is ours."""
    if pid is None:
        yield
        return
    with _reading(pid, " (its network namespace)"):
        if procpid.netns_inode(pid) == own_inode():
            fd = None
        else:
            fd = os.open(procpid.netns_path(pid), os.O_RDONLY | os.O_CLOEXEC)
    if fd is None:
        yield
        return
    try:
        with entered(fd, f"the network namespace of pid {pid}"):
            yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------- sock_diag

def listeners() -> List[Listener]:
    """Every TCP listening socket of the current network namespace (tuner.host.sockdiag):
    a handful, so each is decoded."""
    out = [Listener(*row) for row in sockdiag.listening()]
    groups = Counter((l.family, l.address, l.port) for l in out)
    for l in out:
        l.reuseport_siblings = groups[(l.family, l.address, l.port)] - 1
    return out


def counted(ports: Sequence[int], listening: Sequence[Listener]) -> Connections:
    """connections() on these ports, with the accept queues read on both sides of the
    dump: connections arriving during it are established but queued, and the larger
    queue keeps them from being counted as held.  Only the families the listeners have
    are dumped: an IPv4 listener's connections are all AF_INET (an IPv6 one's may be
    either, v4-mapped), and each family's dump walks every socket of the namespace."""
    wanted = set(ports)
    families = {socket.AF_INET6 if l.family == 6 else socket.AF_INET
                for l in listening if l.port in wanted}
    conns = connections(ports, 0, families or (socket.AF_INET, socket.AF_INET6))
    after = {l.inode: l.queued for l in listeners()}
    for l in listening:
        l.queued = max(l.queued, after.get(l.inode, 0))
    conns.accept_queue = sum(l.queued for l in listening if l.port in set(ports))
    conns.held = max(sum(conns.by_port.values()) - conns.accept_queue, 0)
    return conns



_V4_MAPPED = bytes(10) + b"\xff\xff"


def connections(ports: Iterable[int], accept_queue: int = 0,
                families: Iterable[int] = (socket.AF_INET, socket.AF_INET6)) -> Connections:
    """Held sockets (established, close-wait) on these local ports, by port, and distinct
    peers, in the current namespace.

    One sock_diag dump per family, filtered in the kernel by state and port, read raw:
    only the 2-byte port and the peer address of each message are looked at, because
    decoding 200,000 messages field by field (pyroute2's parser) takes seconds and a
    diagnosis must stay well under one.  Sockets still in an accept queue are established
    but not yet the server's: `accept_queue` (from the listeners) is taken off `held`."""
    ports = sorted(set(ports))
    result = Connections(by_port={p: 0 for p in ports}, accept_queue=accept_queue)
    if not ports:
        return result
    by_port: Counter = Counter()
    by_state: Counter = Counter()
    peers: Set[bytes] = set()
    for family in sorted(families):
        sockdiag.dump_count(family, sockdiag.HELD_STATES, sockdiag.port_filter(ports), by_port,
                            peers, by_state)
    # CLOSE_WAIT: the peer closed (or reset) and the service never closed its end.
    result.peer_closed = by_state[sockdiag.TCP_CLOSE_WAIT]
    result.by_port = {p: by_port.get(p, 0) for p in ports}
    result.held = max(sum(result.by_port.values()) - accept_queue, 0)
    # An IPv4 client of a dual-stack listener is ::ffff:a.b.c.d there and a.b.c.d on an
    # IPv4 listener: one peer.
    result.peers = len({p[12:] + bytes(12) if p[:12] == _V4_MAPPED else p for p in peers})
    return result



# ---------------------------------------------------------------- processes

def read_process(pid: int) -> Process:
    """Everything diagnose needs from one process, each read O(1) in its connections."""
    check_pid(pid)
    with _reading(pid):
        status = procpid.proc_status(pid)
        limits = procpid.proc_limits(pid)
        soft, hard = limits.get("Max open files", (None, None))
        fds = procpid.fd_count(pid)
        low = procpid.low_fds(pid, LOW_FD_FIRST, fds)
        inodes = {}
        epoll_fds = []
        for fd, target in low.items():
            ino = procpid.socket_inode(target)
            if ino is not None:
                inodes[ino] = fd
            elif target == "anon_inode:[eventpoll]":
                epoll_fds.append(fd)
        watches = None
        if epoll_fds and fds <= EPOLL_COUNT_MAX_FDS:
            watches = 0
            for fd in epoll_fds:
                try:
                    watches += procpid.epoll_watches(pid, fd)
                except FileNotFoundError:
                    pass  # closed between the two reads
        cap_eff = int(status.get("CapEff", "0"), 16)
        proc = Process(
            pid=pid, name=status.get("Name", "?"), uid=int(status.get("Uid", "0").split()[0]),
            ppid=int(status.get("PPid", "0")),
            exe=procpid.exe(pid), cmdline=procpid.cmdline(pid),
            threads=int(status.get("Threads", "1")), fds=fds,
            nofile_soft=soft if soft is not None else 1 << 31,  # "unlimited": nr_open caps it
            nofile_hard=hard if hard is not None else 1 << 31,
            cap_sys_resource=bool(cap_eff >> procfs.CAP_SYS_RESOURCE & 1),
            netns_inode=procpid.netns_inode(pid), maps=procpid.map_count(pid),
            socket_inodes=inodes, epoll_watches=watches,
            cgroup_memory=procpid.process_cgroup_memory(pid),
            cgroup_pids=procpid.process_cgroup_pids(pid),
            unit=unit_of(pid))
    return proc


def scan_further(proc: Process) -> None:
    """Look up descriptors LOW_FD_FIRST..LOW_FD_SCAN of a process whose listener was not
    among its first ones (a server that opened files before listening)."""
    with _reading(proc.pid):
        for fd, target in procpid.low_fds(proc.pid, LOW_FD_SCAN, proc.fds).items():
            ino = procpid.socket_inode(target)
            if ino is not None:
                proc.socket_inodes[ino] = fd


def unit_of(pid: int) -> Optional[str]:
    """The system manager's unit a process runs in (from its cgroup path), if any: the
    unit a root fix may name (system_unit)."""
    try:
        groups = procpid.cgroups(pid)
    except OSError:
        return None
    for key in ("", "name=systemd"):
        path = groups.get(key) or ""
        if ".service" in path:
            return system_unit(path)
    return None


def system_unit(path: str) -> Optional[str]:
    """The outermost .service of a cgroup path, if the system manager made it.  Under a
    user's manager (user@UID.service) the user can make cgroups of any name (its subtree
    is delegated): a name from there would have root's systemctl act on a system unit
    the user picked, so None; so for a name systemd would not make (inputs.UNIT_NAME)."""
    for part in path.split("/"):
        if part.endswith(".service"):
            return part if UNIT_NAME.match(part) and not part.startswith("user@") else None
    return None


def pids_by_port(port: int, netns: Optional[str] = None) -> List[int]:
    """The processes listening on `port` (all addresses, IPv4 and IPv6) in this network
    namespace or in `netns`: pre-fork servers and SO_REUSEPORT workers all count."""
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port}: ports are 1..65535")
    with in_netns(netns):
        found = [l for l in listeners() if l.port == port]
        ns_inode = own_inode()
    where = f" in network namespace {netns!r}" if netns else ""
    if not found:
        raise UsageError(f"nothing listens on TCP port {port}{where} (list listeners with "
                         f"'ss -ltn'{'' if netns else '; --netns NAME looks inside a namespace'})")
    holders = procpid.pids_holding({l.inode for l in found}, ns_inode, LOW_FD_FIRST, LOW_FD_SCAN)
    if not holders:
        raise UsageError(f"port {port}{where} is listened on, but by no process tuner can see "
                         f"(another pid namespace, or a socket passed beyond its first "
                         f"{LOW_FD_SCAN} descriptors): use --pid")
    pids = sorted(holders)
    if 1 in pids:
        raise UsageError(f"port {port} is held by pid 1, the init process (socket activation): "
                         f"diagnose the service behind it with --unit NAME or --pid")
    # A pre-fork master and its workers all hold the listener; children of a holder
    # that also hold it are workers, and all of them are the service.
    return pids


def pids_by_unit(unit: str) -> List[int]:
    """Processes of a systemd unit, from its cgroup (the main PID and its workers)."""
    if not UNIT_NAME.match(unit):
        raise UsageError(f"--unit {unit!r}: not a systemd unit name")
    name = unit if "." in unit else unit + ".service"
    candidates = []
    for base in (os.path.join(procpid.CGROUP_ROOT, "unified"), procpid.CGROUP_ROOT,
                 os.path.join(procpid.CGROUP_ROOT, "systemd")):
        for slice_ in ("system.slice", ""):
            candidates.append(os.path.join(base, slice_, name) if slice_ else os.path.join(base, name))
    for path in candidates:
        if os.path.isdir(path) and not os.path.islink(path):
            try:
                pids = procpid.cgroup_procs(path)
            except OSError:
                continue
            pids = [p for p in pids if os.path.exists(f"/proc/{p}")]
            if pids:
                return sorted(pids)
            raise UsageError(f"unit {name} has no running process (its cgroup {path} is empty): "
                             f"start it, or use --pid")
    raise UsageError(f"no systemd unit {name} is running (no cgroup for it under "
                     f"{procpid.CGROUP_ROOT}): check 'systemctl status {name}'")
