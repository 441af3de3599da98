"""The knob table: every limit that can stop a host short of N TCP connections.

One entry per knob, and everything else is driven from this table: `tuner report`
evaluates each entry's rules, `tuner apply` writes the values the rules ask for in
table order (so fs.nr_open comes before any RLIMIT_NOFILE that needs it), `tuner
revert` undoes in reverse order, and the man pages list the entries with their
"why".  Adding a knob is adding one entry here.  KNOBS are the host's; PROCESS_KNOBS
(threads, pids, mappings) only `tuner diagnose` evaluates, for a running process.

Each entry's rules are small functions of a `Ctx` (a snapshot plus the demand:
target N, role).  `allows` answers "how many connections does the current value
permit?" (None where the knob is not a count limit); `needs` answers "what value
does N need?" (None where the current value already suffices).  Needed values carry
HEADROOM_PERCENT so the target is reached with margin, and only ever raise a setting,
except buffer defaults, which shrink only when the user asks (`shrink_buffers`).

An entry also says how its limit shows itself being hit (`signs`: the errno of which
call, the kernel counters that rise, the kernel log lines, the probe's words for it),
which limit it is the ceiling of, what a running process uses of it, and whether it
caps listen()'s backlog.  The probe's classifier, `tuner diagnose` and its --watch,
and the rlimit setting kind ask the table through the functions at the end
(for_error, for_timeout, counters, backlog_cap, ceiling, ...); this module and
tuner/host/procfs.py are the only ones that name a sysctl (tests/test_one_home.py).
"""
from __future__ import annotations

import errno as E
import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, List, Optional

from .host.conns import FD_HEADROOM, connections_within, port_share

from tuner.host import memory
from tuner.host import procfs
from .readings import Snapshot, source_address_count
from .suggestion import APPLY, ROOT, Placeholder, Suggestion, advice, either, tuner

ROLES = ("loopback", "server", "client")
HEADROOM_PERCENT = 10    # needed values cover N plus 10%
# FD_HEADROOM (tuner.host.conns, 64): descriptors a process keeps besides its connections, one
# reserve for report, apply and the probe's workers.
NR_OPEN_MAX = 2147483584  # kernel's sysctl_nr_open_max on 64-bit (INT_MAX & -BITS_PER_LONG)
MAX_BACKLOG = 65535      # a burst-sized accept queue; beyond this, accept faster instead
PORT_FLOOR = 1024        # never hand privileged ports to the ephemeral range
PORT_CEIL = 65535
# port_share (tuner.host.conns): plans (range widening, aliases) fill only this share of each
# source address's port range: connect() takes even ports first and scans all of them
# before any odd one, so past half a range every connect walks the whole range
# (measured: 11,700/s fell to ~300/s) -- unless the socket carries its own range
# (IP_LOCAL_PORT_RANGE, Linux 6.3+; tuner probe sets it), then 90%.  One rule for the
# probe and the model; `allows` still counts the full range, the hard limit.

# What a knob caps, which decides how its "allows" figure is used.
CAPS_CONNECTIONS = "connections"    # caps concurrent connections on the host: may bind
CAPS_PER_PROCESS = "per-process"    # caps one process: shard, or raise
CAPS_IN_FLIGHT = "in-flight"        # caps connections with data queued at the same moment
CAPS_BURSTS = "bursts"              # caps connects waiting to be accepted
CAPS_TEARDOWN = "teardown"          # caps connections closing at once (orphans, TIME_WAIT)
CAPS_BUFFERS = "buffers"            # sizes memory per connection, not a count


@dataclass(frozen=True)
class Ctx:
    """A snapshot and the question asked of it."""

    snap: Snapshot
    role: str = "loopback"
    target: Optional[int] = None
    destinations: int = 1              # distinct server ip:port the clients connect to
    source_dev: Optional[str] = None   # interface whose addresses outbound sockets use
    source_count: Optional[int] = None  # sources known otherwise (the probe's --source-net)
    epoll: bool = True                 # every socket watched by epoll (servers do this)
    shrink_buffers: bool = False
    # The plan may raise host-wide knobs (fs.nr_open). False for apply --netns, which
    # leaves them alone, so per-process values must fit under the host's as they are.
    host_changes: bool = True
    # User memory per connection of the process that holds them (report --role client
    # --tls: the probe's TLS state per held connection), counted with the slab objects;
    # the TLS version it was measured for, and whether --tls-version asked for it (else
    # the dearer version's).
    user_bytes: int = 0
    user_tls_version: Optional[str] = None
    user_tls_version_asked: bool = False

    # --- derived figures (the slab breakdown and source count are cached per Ctx) ---
    @property
    def sockets_per_conn(self) -> int:
        # Both ends live on this host in the loopback role: two sockets, two fds.
        return 2 if self.role == "loopback" else 1

    @property
    def outbound_per_conn(self) -> int:
        return 0 if self.role == "server" else 1

    def fds(self, n: int) -> int:
        return n * self.sockets_per_conn

    def with_headroom(self, n: int) -> int:
        # Integer arithmetic: 1500 * 1.1 in floats is 1650.0000000000002, one too many.
        return n + -(-n * HEADROOM_PERCENT // 100)

    @cached_property
    def sources(self) -> int:
        """Source addresses outbound sockets can spread over."""
        if self.source_count is not None:
            return self.source_count
        dev = self.source_dev or ("lo" if self.role == "loopback" else None)
        # A client or server reaches other hosts: lo's 127.0.0.0/8 is no source for them,
        # even with --alias-dev lo (it counted 16,777,214 and hid the port range).
        return source_address_count(self.snap, dev, remote=self.role != "loopback")

    @cached_property
    def idle_breakdown(self) -> dict:
        return memory.breakdown(self.snap.slab, self.snap.page_size, self.sockets_per_conn,
                                self.outbound_per_conn, self.epoll)

    @cached_property
    def idle_bytes(self) -> int:
        return sum(self.idle_breakdown.values()) + self.user_bytes

    @property
    def buffer_bytes(self) -> Optional[int]:
        rmem, wmem = self.snap.ints("net.ipv4.tcp_rmem"), self.snap.ints("net.ipv4.tcp_wmem")
        if not rmem or not wmem:
            return None
        return self.sockets_per_conn * (rmem[1] + wmem[1])

    @property
    def worst_bytes(self) -> Optional[int]:
        buf = self.buffer_bytes
        return None if buf is None else self.idle_bytes + buf

    @property
    def nr_open(self) -> Optional[int]:
        return self.snap.int("fs.nr_open")

    @property
    def tcp_mem_high_bytes(self) -> Optional[int]:
        """tcp_mem's high mark in bytes: past it, TCP buffers get no more pages."""
        mem = self.snap.ints("net.ipv4.tcp_mem")
        return mem[2] * self.snap.page_size if mem else None

    @property
    def mem_available(self) -> Optional[int]:
        kb = self.snap.meminfo_kb.get("MemAvailable")
        return None if kb is None else kb * 1024

    @property
    def usable_ports(self) -> Optional[int]:
        rng = self.snap.ints("net.ipv4.ip_local_port_range")
        if not rng:
            return None
        return max(rng[1] - rng[0] + 1 - reserved_port_count(self.snap, rng[0], rng[1]), 0)

    @property
    def conntrack_active(self) -> bool:
        # With no rule asking for conntrack, the kernel registers no hooks and tracks
        # nothing (nf_conntrack_count stays 0 under load, measured here).
        return (self.snap.int("net.netfilter.nf_conntrack_count") or 0) > 0


# Where a sysctl is set under Kubernetes (Knob.k8s_placement, `tuner report --json`'s k8s).
K8S_POD = "pod securityContext"
K8S_UNSAFE = "node (unsafe sysctl, needs allowedUnsafeSysctls)"
K8S_NODE_ONLY = "node only (host-wide)"


@dataclass(frozen=True)
class Signs:
    """How a limit shows itself being hit, so the probe's classifier (probes/classify.py,
    through the data tuner/probing/signs.py writes from here) and `tuner diagnose --watch`
    (tuner/diagnose/watch.py) ask the table instead of keeping lists of their own."""

    # (errno, op) a failing call returns when this limit is hit; op None: any call (an
    # entry naming the op wins over one for any op).
    errors: tuple = ()
    # True where an errno above means this limit only if one of its counters rose
    # (ENOBUFS is tcp_mem's when TCP reported memory pressure, plain memory otherwise).
    only_with_counters: bool = False
    # Kernel counters that rise when it is hit, as (source, name): "TcpExt" for
    # /proc/net/netstat, "conntrack" for /proc/net/stat/nf_conntrack (counter_key names them).
    counters: tuple = ()
    # (in use, limit): keys of the probe's kernel snapshot (probes/kernel.py); the limit
    # is hit when what is in use reaches FULL_SHARE of it.
    full: tuple = ()
    # Kernel log messages (regular expressions) that name it (net/ipv4/tcp.c, nf_conntrack_core.c).
    kernel_log: tuple = ()
    # What the probe calls it when not the knob's name: its workers run at their hard
    # RLIMIT_NOFILE, so EMFILE there is "RLIMIT_NOFILE" and the hard limit's fix.
    probe_name: str = ""
    # A probe stopped by it, in words, as (role, text); role None: any role. "{name}" is
    # the knob's name. The numbers and the command come from `needs` (tuner/probing/run.py).
    hints: tuple = ()


# Share of a limit in use at which a probe that timed out is taken to have hit it.
FULL_SHARE = 0.99


@dataclass(frozen=True)
class Knob:
    name: str
    kind: str            # sysctl | rlimit | capability | addresses | memory
    scope: str           # host | netns | process
    unit: str
    caps: str            # one of CAPS_*
    why: str
    current: Callable[[Ctx], Any]
    allows: Callable[[Ctx], Optional[int]] = lambda ctx: None
    needs: Callable[[Ctx], Any] = lambda ctx: None
    reads: tuple = ()    # extra (sysctl, scope) pairs the rules need, e.g. fs.file-nr
    writable: bool = True  # apply can change it (memory and capabilities cannot)
    # What to do when it binds and tuner cannot change it (tuner.fixes gives it as the
    # row's fix): a value, spelled only by its render (words, or commands to fill in).
    fix: Optional[Suggestion] = None
    # Per-process limits only: True where this process cannot raise it (no
    # CAP_SYS_RESOURCE), so a target beyond one process must be sharded.
    capped: Callable[[Ctx], bool] = lambda ctx: False
    # (in use, limit) in the knob's own unit where the kernel counts what is in use in
    # O(1) (fs.file-nr, sockstat, nf_conntrack_count, the cgroup's usage); None where it
    # does not (ports per source address and epoll watches would need a socket walk).
    usage: Callable[[Ctx], Optional[tuple]] = lambda ctx: None
    # Kubernetes release since which the kubelet lists this (per-namespace) sysctl as
    # safe, so a pod may set it in securityContext.sysctls; "" where it is not listed.
    k8s_safe_since: str = ""
    # True where `allows` is what is left after the host's current use (fs.file-nr,
    # MemAvailable, ...), so a running service can hold its connections plus this many.
    net_of_use: bool = False
    # How it shows itself being hit (errnos, counters, kernel log lines, words).
    signs: Signs = Signs()
    # The knob whose value this one caps (fs.nr_open caps RLIMIT_NOFILE.hard, which caps
    # the soft one): it matters for raising, a running process stops at the one below.
    ceiling_of: str = ""
    # What a diagnosed process (tuner.diagnose.service.Process) uses of it: the attribute counted
    # (its descriptors, its epoll watches), summed over the service's processes.
    service_use: str = ""
    # Words about this host's value, added to `why` (the source addresses: which are
    # plain addresses and which AnyIP prefixes, per IP version).
    explain: Callable[[Ctx], str] = lambda ctx: ""
    # Caps the backlog listen() gets: a listener's accept queue is min(backlog, this).
    caps_backlog: bool = False
    # Of this limit's unit, what each thread of a thread-per-connection server takes.
    per_thread: int = 0

    @property
    def is_sysctl(self) -> bool:
        return self.kind == "sysctl"

    @property
    def binds_running(self) -> bool:
        """A limit a running process stops at by itself (its soft RLIMIT_NOFILE, its
        mappings), as opposed to the ceilings above them, which only matter for raising."""
        return self.caps == CAPS_PER_PROCESS and not self.ceiling_of

    @property
    def each_process(self) -> bool:
        """Evaluated for each process on its own, even where its value is host-wide."""
        return self.binds_running or (self.caps == CAPS_PER_PROCESS and self.scope == "process")

    @property
    def probe_name(self) -> str:
        return self.signs.probe_name or self.name

    @property
    def k8s_placement(self) -> Optional[str]:
        """Where a Kubernetes deployment sets this sysctl (None for other kinds): per
        network namespace ones in the pod when the kubelet calls them safe, otherwise
        only when the node's kubelet allows them (allowedUnsafeSysctls); host-wide ones
        only on the node itself (a privileged DaemonSet running tuner apply)."""
        if not self.is_sysctl:
            return None
        if self.scope != "netns":
            return K8S_NODE_ONLY
        return K8S_POD if self.k8s_safe_since else K8S_UNSAFE


def reserved_port_count(snap: Snapshot, low: int, high: int) -> int:
    """Ports of low..high that ip_local_reserved_ports keeps from connect(); reserved
    ports outside the range cost nothing."""
    return procfs.ports_in(snap.sysctls.get("net.ipv4.ip_local_reserved_ports") or "", low, high)


# ---------------------------------------------------------------- rule helpers

def _sysctl(name):
    return lambda ctx: ctx.snap.ints(name)


def _raise_scalar(name, wanted):
    """needs-rule for a single-integer sysctl: `wanted(ctx)` if the current is lower."""
    def rule(ctx):
        cur = ctx.snap.int(name)
        if ctx.target is None or cur is None:
            return None
        want = wanted(ctx)
        return [want] if want is not None and cur < want else None
    return rule


def _file_max_allows(ctx):
    fmax, nr = ctx.snap.int("fs.file-max"), ctx.snap.ints("fs.file-nr")
    if fmax is None:
        return None
    in_use = nr[0] if nr else 0
    return max(fmax - in_use, 0) // ctx.sockets_per_conn


def _usage(in_use, limit):
    """usage-rule from two readers; None when either is missing on this kernel."""
    def rule(ctx):
        used, lim = in_use(ctx), limit(ctx)
        return None if used is None or not lim else (used, lim)
    return rule


def _sockstat_tcp(key):
    return lambda ctx: ctx.snap.sockstat.get("TCP", {}).get(key)


def _file_max_wanted(ctx):
    nr = ctx.snap.ints("fs.file-nr")
    in_use = nr[0] if nr else 0
    return in_use + ctx.with_headroom(ctx.fds(ctx.target)) + FD_HEADROOM


def _per_process_allows(value):
    def rule(ctx):
        if value(ctx) is None:
            return None
        if ctx.snap.fds_reserved is None:    # a process to be: the common reserve
            return connections_within(value(ctx), ctx.sockets_per_conn)
        # A running process (tuner diagnose): what it already holds for other files.
        return max(value(ctx) - ctx.snap.fds_reserved, 0) // ctx.sockets_per_conn
    return rule


def _one_process_fds(ctx):
    """Descriptors one process needs to hold all N (capped by what the kernel accepts)."""
    return min(ctx.fds(ctx.target) + FD_HEADROOM, NR_OPEN_MAX)


def _soft_needs(ctx):
    if ctx.target is None:
        return None
    # The soft limit can always go up to the hard one without privileges.
    want = min(_one_process_fds(ctx), ctx.snap.nofile_hard)
    return [want] if ctx.snap.nofile_soft < want else None


def _hard_needs(ctx):
    if ctx.target is None or not ctx.snap.cap_sys_resource:
        return None  # without CAP_SYS_RESOURCE the hard limit cannot go up: shard instead
    want = _one_process_fds(ctx)
    nr_open = ctx.snap.int("fs.nr_open")
    if not ctx.host_changes and nr_open is not None:
        # The kernel refuses a hard limit above fs.nr_open (EPERM), and this plan
        # leaves fs.nr_open as it is: go as high as it allows, shard the rest.
        want = min(want, nr_open)
    return [want] if ctx.snap.nofile_hard < want else None


def _port_allows(ctx):
    if ctx.role == "server" or ctx.usable_ports is None:
        return None
    return ctx.usable_ports * max(ctx.sources, 1) * ctx.destinations


def _ports_per_source_needed(ctx):
    per_pair = ctx.with_headroom(ctx.target) / (max(ctx.sources, 1) * ctx.destinations)
    return math.ceil(per_pair / port_share(ctx.snap.own_port_range))


def _port_range_needs(ctx):
    rng = ctx.snap.ints("net.ipv4.ip_local_port_range")
    if ctx.role == "server" or ctx.target is None or not rng:
        return None
    # Reserved ports anywhere a widened range could reach are not usable.
    want = _ports_per_source_needed(ctx) + reserved_port_count(ctx.snap, PORT_FLOOR, PORT_CEIL)
    if rng[1] - rng[0] + 1 >= want:
        return None
    # Widen downwards first (the top stays where admins expect it), then upwards.
    lo = max(PORT_FLOOR, rng[1] - want + 1)
    hi = rng[1] if rng[1] - lo + 1 >= want else min(PORT_CEIL, lo + want - 1)
    return [min(lo, rng[0]), max(hi, rng[1])]


def _addresses_needs(ctx):
    """Source addresses needed once the port range is as wide as tuner will make it."""
    if ctx.role == "server" or ctx.target is None:
        return None
    ports = PORT_CEIL - PORT_FLOOR + 1 - reserved_port_count(ctx.snap, PORT_FLOOR, PORT_CEIL)
    want = math.ceil(ctx.with_headroom(ctx.target) / (ports * port_share(ctx.snap.own_port_range)
                                                      * ctx.destinations))
    return [want] if ctx.sources < want else None


# bind() of an address the kernel does not call local: per IP version, per namespace.
# IPv4's bind() accepts every address a local route covers (AnyIP), IPv6's only those
# configured on an interface unless this is 1 (or the socket sets IP_FREEBIND).
NONLOCAL_BIND = {4: "net.ipv4.ip_nonlocal_bind", 6: "net.ipv6.ip_nonlocal_bind"}


def _sources_explain(ctx):
    """'IPv4: 2 (1 address, AnyIP 10.77.1.0/24); IPv6: ...' -- which sources are which."""
    # Here: localnet loads only when a report explains its source addresses (start-up time).
    from tuner.host.localnet import anyip_prefixes, source_count, source_networks
    from tuner.host.numfmt import number

    if ctx.source_count is not None:
        return ""
    dev = ctx.source_dev or ("lo" if ctx.role == "loopback" else None)
    snap, parts = ctx.snap, []
    anyip = anyip_prefixes(snap.addresses, snap.local_routes)
    for version in (4, 6):
        nets = source_networks(snap.addresses, snap.local_routes, dev, version=version,
                               remote=ctx.role != "loopback")
        prefixes = [n for n in anyip if n.version == version and n in nets]
        if not nets:
            continue
        words = [f"{number(source_count([n for n in nets if n not in prefixes]))} address(es)"]
        words += [f"AnyIP {n} ({number(source_count([n]))})" for n in prefixes]
        if prefixes and version == 6 and snap.int(NONLOCAL_BIND[6]) != 1:
            words.append("bind() needs IP_FREEBIND (tuner probe sets it) or "
                         f"{NONLOCAL_BIND[6]}=1")
        parts.append(f"IPv{version}: " + ", ".join(words))
    return ("Here: " + "; ".join(parts) + ".") if parts else ""


def _tcp_mem_allows(ctx):
    mem = ctx.snap.ints("net.ipv4.tcp_mem")
    return None if not mem else mem[2] // memory.PAGES_IN_FLIGHT_PER_CONN


def _tcp_mem_needs(ctx):
    mem = ctx.snap.ints("net.ipv4.tcp_mem")
    if ctx.target is None or not mem:
        return None
    want = ctx.with_headroom(ctx.target) * memory.PAGES_IN_FLIGHT_PER_CONN
    if mem[2] >= want:
        return None
    # Keep the kernel's low/pressure/high proportions; only the scale changes.
    factor = want / mem[2]
    return [math.ceil(v * factor) for v in mem]


def _buffer_needs(name):
    def rule(ctx):
        vals = ctx.snap.ints(name)
        if not ctx.shrink_buffers or ctx.target is None or not vals:
            return None
        # Autotuning still grows a busy socket up to the max; only the initial size shrinks.
        if vals[1] <= vals[0] or vals[1] <= 4096:
            return None
        return [vals[0], max(vals[0], 4096), vals[2]]
    return rule


def _backlog_wanted(ctx):
    # Only a listener has an accept queue or half-open connections: a load host (the
    # client role) needs neither raised, whatever its target.
    return None if ctx.role == "client" else min(ctx.target, MAX_BACKLOG)


def _conntrack_allows(ctx):
    cmax = ctx.snap.int("net.netfilter.nf_conntrack_max")
    if cmax is None or not ctx.conntrack_active:
        return None
    return max(cmax - (ctx.snap.int("net.netfilter.nf_conntrack_count") or 0), 0)


def _conntrack_wanted(ctx):
    if not ctx.conntrack_active:
        return None
    return (ctx.snap.int("net.netfilter.nf_conntrack_count") or 0) + ctx.with_headroom(ctx.target)


def _epoll_allows(ctx):
    watches = ctx.snap.int("fs.epoll.max_user_watches")
    return None if watches is None or not ctx.epoll else watches // ctx.sockets_per_conn


def _tw_reuse_needs(ctx):
    cur = ctx.snap.int("net.ipv4.tcp_tw_reuse")
    # 2 (the default) reuses TIME_WAIT ports for loopback only; a load generator
    # reconnecting to remote servers needs 1.
    if ctx.role == "client" and ctx.target is not None and cur is not None and cur != 1:
        return [1]
    return None


def _mem_allows(ctx):
    avail = ctx.mem_available
    return None if avail is None else avail // ctx.idle_bytes


def _cgroup_allows(ctx):
    cg = ctx.snap.cgroup_memory or {}
    if cg.get("limit") is None:
        return None
    return max(cg["limit"] - (cg.get("usage") or 0), 0) // ctx.idle_bytes


def _cgroup_usage(ctx):
    cg = ctx.snap.cgroup_memory or {}
    if cg.get("limit") is None or cg.get("usage") is None:
        return None
    return (cg["usage"], cg["limit"])


def _cgroup_current(ctx):
    cg = ctx.snap.cgroup_memory or {}
    return None if cg.get("limit") is None else [cg["limit"]]


# ---------------------------------------------------------------- the table
# Words for a probe that ran out of source ports as a client of another host.
_CLIENT_PORTS_HINT = ("each source address gives one port range of connections to the server: add "
                      "source addresses ({client_aliases} adds them as aliases) and pass them with "
                      "--source-net CIDR")
# The commands hints name ({key} in a hint's words), spelled where the words are
# composed (tuner/probing/signs.py), never written out in them.
DEV, CIDR, PREFIX = Placeholder("DEV"), Placeholder("CIDR"), Placeholder("PREFIX")
HINT_COMMANDS = {
    "client_aliases": tuner(APPLY, ("--role", "client"), ("--alias-dev", DEV), ("--alias-net", CIDR),
                            needs=(ROOT,)),
}
_TASKS_HINT = ("no more worker processes could be forked (EAGAIN): {probe_name} caps the tasks "
               "here: raise it, or run fewer --workers")
# Order is apply order: ceilings before what they cap (nr_open before RLIMIT_NOFILE,
# port range before source addresses), host-wide before per-process.

KNOBS: List[Knob] = [
    Knob("fs.nr_open", "sysctl", "host", "descriptors", CAPS_PER_PROCESS,
         "Ceiling on any process's RLIMIT_NOFILE: no hard limit can be set above it.",
         current=_sysctl("fs.nr_open"),
         allows=_per_process_allows(lambda ctx: ctx.snap.int("fs.nr_open")),
         needs=_raise_scalar("fs.nr_open", _one_process_fds), ceiling_of="RLIMIT_NOFILE.hard"),
    Knob("fs.file-max", "sysctl", "host", "descriptors", CAPS_CONNECTIONS,
         "Open files across the whole host (fs.file-nr counts those in use); past it "
         "unprivileged processes get ENFILE.",
         current=_sysctl("fs.file-max"), allows=_file_max_allows,
         needs=_raise_scalar("fs.file-max", _file_max_wanted), reads=(("fs.file-nr", "host"),),
         usage=_usage(lambda ctx: (ctx.snap.ints("fs.file-nr") or [None])[0],
                      lambda ctx: ctx.snap.int("fs.file-max")),
         net_of_use=True,
         signs=Signs(errors=((E.ENFILE, None),),
                     hints=((None, "the host ran out of open files: raise {name}"),))),
    Knob("RLIMIT_NOFILE.hard", "rlimit", "process", "descriptors", CAPS_PER_PROCESS,
         "Most descriptors one process may raise its soft limit to; raising it needs "
         "CAP_SYS_RESOURCE.",
         current=lambda ctx: [ctx.snap.nofile_hard],
         allows=_per_process_allows(lambda ctx: ctx.snap.nofile_hard), needs=_hard_needs,
         capped=lambda ctx: not ctx.snap.cap_sys_resource,
         fix=advice("LimitNOFILE= in the service's unit, or nofile in /etc/security/limits.d/"),
         ceiling_of="RLIMIT_NOFILE.soft", service_use="fds",
         signs=Signs(errors=((E.EMFILE, None),), probe_name="RLIMIT_NOFILE", hints=(
             ("loopback", "a worker ran out of descriptors (2 per connection): let the probe size "
                          "workers from the limit (--workers auto), or raise the hard nofile limit"),
             (None, "a worker ran out of descriptors: more --workers, or raise the hard nofile limit")))),
    Knob("RLIMIT_NOFILE.soft", "rlimit", "process", "descriptors", CAPS_PER_PROCESS,
         "Descriptors one process may open now; past it socket()/accept() fail with EMFILE.",
         current=lambda ctx: [ctx.snap.nofile_soft],
         allows=_per_process_allows(lambda ctx: ctx.snap.nofile_soft), needs=_soft_needs,
         service_use="fds"),
    Knob("CAP_SYS_RESOURCE", "capability", "process", "yes/no", CAPS_PER_PROCESS,
         "Whether this process may raise its hard RLIMIT_NOFILE; containers and services "
         "often lack it, so one process is capped and the load must be sharded.",
         current=lambda ctx: ["yes" if ctx.snap.cap_sys_resource else "no"], writable=False,
         capped=lambda ctx: not ctx.snap.cap_sys_resource,
         fix=advice("run with CAP_SYS_RESOURCE, or shard across processes"), ceiling_of="RLIMIT_NOFILE.hard"),
    Knob("net.ipv4.ip_local_port_range", "sysctl", "netns", "ports", CAPS_CONNECTIONS,
         "Ephemeral ports per (source address, destination); one source address reaches "
         "one server ip:port at most this many times.",
         current=_sysctl("net.ipv4.ip_local_port_range"), allows=_port_allows,
         needs=_port_range_needs, reads=(("net.ipv4.ip_local_reserved_ports", "netns"),),
         k8s_safe_since="1.11",
         # connect() with no free (source, port) pair left for the destination.
         signs=Signs(errors=((E.EADDRNOTAVAIL, None), (E.EADDRINUSE, None)), hints=(
             ("client", _CLIENT_PORTS_HINT),
             (None, "no free (source address, port) pair was left for the listener: widen {name}, "
                    "or spread over more source addresses (--source-net)")))),
    Knob("source addresses", "addresses", "netns", "addresses", CAPS_CONNECTIONS,
         "Local addresses outbound sockets can bind to; each adds a full port range "
         "(all of 127.0.0.0/8 is local on lo).",
         current=lambda ctx: [ctx.sources], allows=_port_allows, needs=_addresses_needs,
         fix=either(tuner(APPLY, ("--alias-dev", DEV), ("--alias-net", CIDR), needs=(ROOT,)),
                    tuner(APPLY, ("--anyip-net", PREFIX), needs=(ROOT,)), "one AnyIP prefix"),
         reads=((NONLOCAL_BIND[4], "netns"), (NONLOCAL_BIND[6], "netns")), explain=_sources_explain,
         # bind() of a source address that is not local.
         signs=Signs(errors=((E.EADDRNOTAVAIL, "bind"),), hints=(
             ("client", _CLIENT_PORTS_HINT),
             (None, "a source address to bind is not local: add it, or pass a --source-net that is")))),
    Knob("net.ipv4.tcp_mem", "sysctl", "host", "pages", CAPS_IN_FLIGHT,
         "Pages all TCP buffers may use (low, pressure, high); past high, sends stall and "
         "received data is dropped. A message in flight costs a page per connection.",
         current=_sysctl("net.ipv4.tcp_mem"), allows=_tcp_mem_allows, needs=_tcp_mem_needs,
         usage=_usage(_sockstat_tcp("mem"), lambda ctx: (ctx.snap.ints("net.ipv4.tcp_mem") or [0])[-1]),
         # TCPAbortOnMemory also counts sockets reset for too many orphans (tcp_max_orphans).
         signs=Signs(errors=((E.ENOBUFS, None), (E.ENOMEM, None)), only_with_counters=True,
                     counters=(("TcpExt", "TCPMemoryPressures"), ("TcpExt", "TCPAbortOnMemory")),
                     kernel_log=(r"TCP: out of memory",),
                     hints=((None, "TCP hit its memory limit: raise {name}"),))),
    Knob("net.ipv4.tcp_rmem", "sysctl", "netns", "bytes", CAPS_BUFFERS,
         "Receive buffer min/default/max per socket; the default times all sockets is the "
         "worst-case memory if every buffer fills.",
         current=_sysctl("net.ipv4.tcp_rmem"), needs=_buffer_needs("net.ipv4.tcp_rmem"),
         k8s_safe_since="1.32"),
    Knob("net.ipv4.tcp_wmem", "sysctl", "netns", "bytes", CAPS_BUFFERS,
         "Send buffer min/default/max per socket; counts toward the worst case like tcp_rmem.",
         current=_sysctl("net.ipv4.tcp_wmem"), needs=_buffer_needs("net.ipv4.tcp_wmem"),
         k8s_safe_since="1.32"),
    Knob("net.core.somaxconn", "sysctl", "netns", "connections", CAPS_BURSTS,
         "Cap on a listener's accept queue; a burst of connects beyond it is dropped and "
         "retried after a second (ListenOverflows).",
         current=_sysctl("net.core.somaxconn"),
         needs=_raise_scalar("net.core.somaxconn", _backlog_wanted), caps_backlog=True,
         signs=Signs(counters=(("TcpExt", "ListenOverflows"), ("TcpExt", "ListenDrops")), hints=(
             (None, "the accept queue overflowed (ListenOverflows/ListenDrops rose): raise {name} "
                    "and net.ipv4.tcp_max_syn_backlog"),))),
    Knob("net.ipv4.tcp_max_syn_backlog", "sysctl", "netns", "connections", CAPS_BURSTS,
         "Half-open connections remembered per listener during a connect burst.",
         current=_sysctl("net.ipv4.tcp_max_syn_backlog"),
         needs=_raise_scalar("net.ipv4.tcp_max_syn_backlog", _backlog_wanted),
         signs=Signs(counters=(("TcpExt", "TCPReqQFullDrop"),))),
    Knob("net.ipv4.tcp_max_orphans", "sysctl", "host", "sockets", CAPS_TEARDOWN,
         "Closed-but-unfinished sockets; closing N at once beyond it resets them instead "
         "of closing cleanly ('too many orphaned sockets').",
         current=_sysctl("net.ipv4.tcp_max_orphans"),
         allows=lambda ctx: ctx.snap.int("net.ipv4.tcp_max_orphans"),
         needs=_raise_scalar("net.ipv4.tcp_max_orphans", lambda ctx: ctx.with_headroom(ctx.target)),
         usage=_usage(_sockstat_tcp("orphan"), lambda ctx: ctx.snap.int("net.ipv4.tcp_max_orphans")),
         signs=Signs(kernel_log=(r"too many orphaned sockets",))),
    Knob("net.ipv4.tcp_max_tw_buckets", "sysctl", "netns", "sockets", CAPS_TEARDOWN,
         "TIME_WAIT sockets kept; beyond it they are destroyed early ('time wait bucket "
         "table overflow'), so a mass close of N loses that protection.",
         current=_sysctl("net.ipv4.tcp_max_tw_buckets"),
         allows=lambda ctx: ctx.snap.int("net.ipv4.tcp_max_tw_buckets"),
         needs=_raise_scalar("net.ipv4.tcp_max_tw_buckets", lambda ctx: ctx.with_headroom(ctx.target)),
         usage=_usage(_sockstat_tcp("tw"), lambda ctx: ctx.snap.int("net.ipv4.tcp_max_tw_buckets")),
         signs=Signs(counters=(("TcpExt", "TCPTimeWaitOverflow"),),
                     kernel_log=(r"time wait bucket table overflow",))),
    Knob("net.ipv4.tcp_tw_reuse", "sysctl", "netns", "mode", CAPS_TEARDOWN,
         "Whether new outbound connections may reuse ports in TIME_WAIT (2: loopback only); "
         "a load generator that reconnects needs 1.",
         current=_sysctl("net.ipv4.tcp_tw_reuse"), needs=_tw_reuse_needs),
    Knob("net.netfilter.nf_conntrack_max", "sysctl", "host", "entries", CAPS_CONNECTIONS,
         "Connections conntrack can track (one entry each); when full, new connections are "
         "dropped. Binds only while conntrack is tracking (nf_conntrack_count > 0).",
         current=_sysctl("net.netfilter.nf_conntrack_max"), allows=_conntrack_allows,
         needs=_raise_scalar("net.netfilter.nf_conntrack_max", _conntrack_wanted),
         reads=(("net.netfilter.nf_conntrack_count", "netns"),),
         usage=_usage(lambda ctx: ctx.snap.int("net.netfilter.nf_conntrack_count"),
                      lambda ctx: ctx.snap.int("net.netfilter.nf_conntrack_max")),
         net_of_use=True,
         signs=Signs(counters=(("conntrack", "insert_failed"), ("conntrack", "drop")),
                     full=("conntrack_count", "conntrack_max"), kernel_log=(r"nf_conntrack: table full",),
                     hints=((None, "conntrack's table is full: raise {name}"),))),
    Knob("fs.epoll.max_user_watches", "sysctl", "host", "watches", CAPS_CONNECTIONS,
         "Sockets one user may watch with epoll across all its processes; epoll_ctl fails "
         "with ENOSPC beyond it.",
         current=_sysctl("fs.epoll.max_user_watches"), allows=_epoll_allows,
         needs=_raise_scalar("fs.epoll.max_user_watches",
                             lambda ctx: ctx.with_headroom(ctx.fds(ctx.target)) if ctx.epoll else None),
         service_use="epoll_watches"),
    Knob("MemAvailable", "memory", "host", "bytes", CAPS_CONNECTIONS,
         "Memory the kernel can give without swapping; idle connections cost slab "
         "objects (estimated below), so RAM caps them when nothing else does.",
         current=lambda ctx: [ctx.mem_available] if ctx.mem_available is not None else None,
         allows=_mem_allows, writable=False, fix=advice("add memory or use a larger host"),
         net_of_use=True,
         signs=Signs(errors=((E.ENOBUFS, None), (E.ENOMEM, None)), probe_name="memory", hints=(
             (None, "the kernel ran out of memory for sockets: free memory or probe fewer connections"),))),
    Knob("cgroup memory limit", "memory", "process", "bytes", CAPS_CONNECTIONS,
         "Kernel socket memory is charged to the cgroup, so a container's limit caps "
         "connections even on a large host.",
         current=_cgroup_current, allows=_cgroup_allows, writable=False, usage=_cgroup_usage,
         fix=advice("raise the container's memory limit (memory.max / memory.limit_in_bytes)"),
         net_of_use=True),
]

BY_NAME = {k.name: k for k in KNOBS}


def sysctl_names(scope: str) -> List[str]:
    """Every sysctl the table reads in `scope` ('host' or 'netns'), extras included."""
    names: List[str] = []
    for knob in KNOBS:
        if knob.is_sysctl and knob.scope == scope:
            names.append(knob.name)
        names.extend(name for name, where in knob.reads if where == scope)
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------- one process's own limits
# Evaluated by `tuner diagnose` only: they need a running process's figures
# (snap.process: threads, mappings, connections held, its cgroup's pids).  A
# thread-per-connection server spends a task, a pid and a stack (two mappings: the
# stack and its guard page) per connection, so these bind long before descriptors;
# `allows` stays None unless the process looks thread-per-connection (it runs at least
# as many threads as it holds connections).
MAPS_PER_THREAD = 2
THREAD_SYSCTLS = ("kernel.threads-max", "kernel.pid_max", "vm.max_map_count")


def _proc(ctx) -> dict:
    return ctx.snap.process or {}


def _per_conn_threads(ctx) -> Optional[int]:
    return _proc(ctx).get("threads_per_connection")


def _tasks_allows(limit):
    """Connections more that `limit(ctx)` (a task count) leaves room for (net of use)."""
    def rule(ctx):
        tpc, lim = _per_conn_threads(ctx), limit(ctx)
        if not tpc or lim is None:
            return None
        return max(lim[0] - lim[1], 0) // tpc
    return rule


def _tasks_wanted(limit):
    def wanted(ctx):
        tpc, lim = _per_conn_threads(ctx), limit(ctx)
        if not tpc or lim is None:
            return None
        more = max(ctx.target - (_proc(ctx).get("held") or 0), 0)
        return lim[1] + ctx.with_headroom(more) * tpc
    return wanted


def _host_tasks(name):
    # Every thread on the host is a task and takes a pid: (limit, tasks in use).
    return lambda ctx: (None if ctx.snap.int(name) is None or _proc(ctx).get("host_tasks") is None
                        else (ctx.snap.int(name), _proc(ctx)["host_tasks"]))


def _cgroup_tasks(ctx):
    cg = _proc(ctx).get("cgroup_pids") or {}
    return None if cg.get("limit") is None else (cg["limit"], cg.get("current") or 0)


def _maps_allows(ctx):
    tpc, cur, maps = _per_conn_threads(ctx), ctx.snap.int("vm.max_map_count"), _proc(ctx).get("maps")
    if not tpc or cur is None or maps is None:
        return None
    return (_proc(ctx).get("held") or 0) + max(cur - maps, 0) // (tpc * MAPS_PER_THREAD)


def _maps_wanted(ctx):
    tpc, maps = _per_conn_threads(ctx), _proc(ctx).get("maps")
    if not tpc or maps is None:
        return None
    more = max(ctx.target - (_proc(ctx).get("held") or 0), 0)
    return maps + ctx.with_headroom(more) * tpc * MAPS_PER_THREAD


PROCESS_KNOBS: List[Knob] = [
    Knob("kernel.threads-max", "sysctl", "host", "threads", CAPS_CONNECTIONS,
         "Threads on the whole host; a thread-per-connection server gets EAGAIN from "
         "clone() (Java: 'unable to create native thread') past it.",
         current=_sysctl("kernel.threads-max"), allows=_tasks_allows(_host_tasks("kernel.threads-max")),
         usage=_usage(lambda ctx: _proc(ctx).get("host_tasks"), lambda ctx: ctx.snap.int("kernel.threads-max")),
         needs=_raise_scalar("kernel.threads-max", _tasks_wanted(_host_tasks("kernel.threads-max"))),
         net_of_use=True, per_thread=1, signs=Signs(hints=((None, _TASKS_HINT),))),
    Knob("kernel.pid_max", "sysctl", "host", "pids", CAPS_CONNECTIONS,
         "Every thread takes a pid; past pid_max (at most 4,194,304) no thread can start.",
         current=_sysctl("kernel.pid_max"), allows=_tasks_allows(_host_tasks("kernel.pid_max")),
         usage=_usage(lambda ctx: _proc(ctx).get("host_tasks"), lambda ctx: ctx.snap.int("kernel.pid_max")),
         needs=_raise_scalar("kernel.pid_max", _tasks_wanted(_host_tasks("kernel.pid_max"))),
         net_of_use=True, per_thread=1),
    Knob("cgroup pids.max", "cgroup", "cgroup", "tasks", CAPS_CONNECTIONS,
         "Tasks (threads) the process's cgroup may hold; a container or a unit's TasksMax= "
         "stops a thread-per-connection server here.",
         current=lambda ctx: None if _cgroup_tasks(ctx) is None else [_cgroup_tasks(ctx)[0]],
         allows=_tasks_allows(_cgroup_tasks), writable=False, net_of_use=True,
         usage=lambda ctx: None if _cgroup_tasks(ctx) is None else (_cgroup_tasks(ctx)[1], _cgroup_tasks(ctx)[0]),
         needs=lambda ctx: (None if ctx.target is None or _cgroup_tasks(ctx) is None
                            or _tasks_wanted(_cgroup_tasks)(ctx) is None
                            or _tasks_wanted(_cgroup_tasks)(ctx) <= _cgroup_tasks(ctx)[0]
                            else [_tasks_wanted(_cgroup_tasks)(ctx)]),
         fix=advice("raise pids.max of the process's cgroup (systemd: TasksMax= in the unit)"),
         per_thread=1, signs=Signs(probe_name="pids.max", hints=((None, _TASKS_HINT),))),
    Knob("vm.max_map_count", "sysctl", "host", "mappings", CAPS_PER_PROCESS,
         "Memory mappings one process may have; each thread's stack takes two, so a "
         "thread-per-connection server stops near half of it.",
         current=_sysctl("vm.max_map_count"), allows=_maps_allows,
         usage=_usage(lambda ctx: _proc(ctx).get("maps"), lambda ctx: ctx.snap.int("vm.max_map_count")),
         needs=_raise_scalar("vm.max_map_count", _maps_wanted), per_thread=MAPS_PER_THREAD),
]

# Every knob, the host's and a running process's own.
ALL: List[Knob] = KNOBS + PROCESS_KNOBS
BY_NAME_ALL = {k.name: k for k in ALL}


# ---------------------------------------------------------------- asking the table
# How a limit shows itself being hit (Knob.signs), for `tuner diagnose --watch` and,
# written out as data by tuner/probing/signs.py (probes/signs.json), the probe's classifier.

def for_probe_limit(limit: Optional[str]) -> Optional[Knob]:
    """The knob a probe's stopped_by/errors[].limit names (its probe_name)."""
    return next((k for k in ALL if k.probe_name == limit), None)


def counter_key(source: str, name: str) -> str:
    """How a counter is keyed in samples and in the probe's snapshot: TcpExt counters by
    their own name, conntrack's statistics as conntrack_<name>."""
    return name if source == "TcpExt" else f"{source}_{name}"


def counters(source: Optional[str] = None) -> dict:
    """{counter key: knob} for every counter the table names (of `source` only, if given)."""
    return {counter_key(src, name): k for k in ALL for src, name in k.signs.counters
            if source in (None, src)}


# A connect that timed out was dropped at a queue first (the accept queue, the SYN
# queue), else by a full table (conntrack), else for want of buffer memory.
TIMEOUT_CAUSES = (CAPS_BURSTS, CAPS_CONNECTIONS, CAPS_IN_FLIGHT)


def kernel_log_patterns() -> List[tuple]:
    """(compiled pattern, knob) for every kernel log message the table names."""
    return [(re.compile(p), k) for k in ALL for p in k.signs.kernel_log]


def backlog_cap() -> Knob:
    """The knob that caps every listener's accept queue (listen()'s backlog)."""
    return next(k for k in ALL if k.caps_backlog)


def ceiling(name: str, kind: str = "sysctl") -> Optional[Knob]:
    """The knob of `kind` that caps knob `name` (ceiling_of)."""
    return next((k for k in ALL if k.ceiling_of == name and k.kind == kind), None)
