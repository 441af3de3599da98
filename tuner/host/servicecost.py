"""What a service spends holding its connections, sampled: its memory, its sockets'
kernel memory, its CPU (issue 26, the cost ledger).

`Sampler(port)` finds the service once (the processes holding the listening sockets of
`port` in the current network namespace, and their descendants) and `sample()` returns
one `Sample`.  A step ramp (the probe's `--step`) samples once per step and `tuner
diagnose --watch` twice; tuner/cost.py fits the slope and projects where memory binds.

What one sample reads, and why it stays cheap at 100,000 held connections:
- memory: `Pss` of /proc/PID/smaps_rollup of every process of the service, summed: a
  page shared by nginx's or a Node cluster's workers is counted once across them (RSS
  would count it in each).  The kernel walks the process's page tables for it, O(its
  mapped memory), not O(its descriptors); /proc/PID/fd is never listed.
- kernel: while the service holds fewer than SAMPLE_FROM descriptors, every held socket
  (established, close-wait) whose local port is `port`: one sock_diag dump, filtered in
  the kernel, for both address families in one walk of the socket table, each answer
  carrying INET_DIAG_SKMEMINFO: buffers queued (rmem_alloc, wmem_queued), memory
  reserved for them (fwd_alloc) and socket options (optmem), summed in C over each
  recv().  Past it, a walk alone costs more than the goal (every socket of the host,
  the load generator's too: ~150 ms a sample at 100,000 held on this host), so the held
  sockets are counted and their buffers summed from a bounded random sample of the
  service's own descriptors (tuner.host.fdsample: ~20 ms at 100,000), and the sample
  says how many it read (`sampled`).  Plus the slab objects each socket pins
  (tuner/host/memory.py's per-socket objects, the knob table's idle estimate, epoll's
  watch included), counted, not read per socket.
- CPU: utime + stime of /proc/PID/stat of every process (clock ticks -> seconds).
- heap: the V8 heap's committed pages, from /proc/PID/maps (one line per mapping, no
  page walk): what Node's --max-old-space-size is checked against (see v8_heap_bytes).

A process of the service that exits between two samples simply stops counting; one that
the tree grows (a new worker) counts from the next sample.
"""
from __future__ import annotations

import errno
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

from tuner.host import fdsample, memory, netns, procfs, procpid, sockdiag

# The SKMEMINFO figures that are memory the sockets hold (rcvbuf and sndbuf are limits).
BUFFER_FIELDS = ("rmem_alloc", "wmem_queued", "fwd_alloc", "optmem")
# Past this many open descriptors of the service, its held sockets are sampled through
# its descriptors (tuner.host.fdsample) rather than each read through sock_diag: below,
# a dump costs ~25 ms here (20,000 held, both ends on this host); at 100,000, ~150 ms.
SAMPLE_FROM = 20_000
# Open descriptors drawn per sample, over all processes: each read costs ~10 us, most of
# it pidfd_getfd's own (1,024 took 21-32 ms a sample at 100,000 held, 50 ms inside a busy
# ramp); 512 keep a buffer mean's standard error near 4% of the sockets' spread.
SAMPLE_BUDGET = 512
_SMAPS_KEYS = {"Pss:": "pss", "Rss:": "rss", "Pss_Anon:": "pss_anon"}


@dataclass
class Sample:
    """One reading of the service.  Every memory figure is in bytes.

    at                  time.monotonic() when the sample began (subtract two for seconds)
    wall                time.time() at the same moment (for a log's timestamp)
    pids                the processes read (the listeners' holders and their descendants)
    memory_bytes        the service's memory: PSS summed over `pids`
    rss_bytes           RSS summed (shared pages counted in each process: information)
    anon_bytes          Pss_Anon summed: the heap and stacks part of memory_bytes
    cpu_seconds         utime + stime of `pids`, cumulative since each started
    sockets             held sockets (established, close-wait) on the port
    socket_buffer_bytes SKMEMINFO summed: rmem_alloc + wmem_queued + fwd_alloc + optmem
    socket_slab_bytes   sockets * slab_bytes_per_socket (objects the sockets pin)
    kernel_bytes        socket_buffer_bytes + socket_slab_bytes: the sockets' kernel memory
    slab_bytes_per_socket  the per-socket slab estimate used, and its source
    slab_source         "slabinfo" or the fallback figures' words
    heap_bytes          V8 heap pages committed, summed (v8_heap_bytes; 0 without V8)
    took_ms             what taking this sample cost, wall time
    took_cpu_ms         ... and the CPU time of the thread that took it (wall above it is
                        time spent waiting for a CPU on a busy host, not the sampler's work)
    skmem               the BUFFER_FIELDS sums apart, bytes
    sampled             0: every held socket was read (sock_diag); else how many held
                        sockets were read through the service's descriptors, `sockets`
                        and the buffer figures estimated from them (tuner.host.fdsample)
    """

    at: float
    wall: float
    pids: List[int]
    memory_bytes: int
    rss_bytes: int
    anon_bytes: int
    cpu_seconds: float
    sockets: int
    socket_buffer_bytes: int
    socket_slab_bytes: int
    kernel_bytes: int
    slab_bytes_per_socket: int
    slab_source: str
    took_ms: float = 0.0
    took_cpu_ms: float = 0.0
    heap_bytes: int = 0
    skmem: Dict[str, int] = field(default_factory=dict)
    sampled: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def smaps_rollup(pid: int) -> Dict[str, int]:
    """{"pss", "rss", "pss_anon"} of one process in bytes (procpid.smaps_rollup, kernel
    4.14+).  A kernel thread or a process with no memory left gives zeros."""
    return procpid.smaps_rollup(pid, _SMAPS_KEYS)


# V8 (Node 20's 11.3 here) takes its heap from mmap in pages of 256 KiB, each aligned to
# its size (V8 finds an object's page header by masking its address) and each its own
# mapping here (V8 asks for random addresses, so neighbours rarely merge); a large object
# gets a chunk of its own, aligned the same, of any size past 256 KiB.  glibc's malloc
# arenas (threads other than the main one; the main one is [heap]) are 64 MiB-aligned
# with the unused rest of their 64 MiB reserved PROT_NONE right behind: left out.
V8_PAGE, ARENA = 256 << 10, 64 << 20
# /proc/PID/maps holds one line per mapping (~100 B), bounded by the kernel's map count
# (65,530 by default): read at most this much.
MAPS_MAX = 16 << 20


def v8_heap_bytes(pid: int) -> int:
    """What one process's V8 heap has committed (old and young generation, large
    objects), from /proc/PID/maps: the private, anonymous, read-write mappings of at
    least a V8 page that start on a V8 page boundary, less glibc's arenas.  Their size,
    not their resident pages, is what --max-old-space-size is checked against: V8
    counts a page it committed whole (a page of three 64 KiB arrays leaves its last
    quarter untouched and still full).  Measured against v8.getHeapSpaceStatistics() on
    a `ws` server under --max-old-space-size=512: this sum stayed within 1.2 MiB of
    the spaces' total from 0 to 6,000 connections; the rest of the process (libuv,
    sockets' native parts, malloc) grew by 1.3-3.7 KiB per connection against the
    heap's 87 KiB.  A process without V8 gives 0 or a small constant (a chance-aligned
    mapping), which no slope sees."""
    lines = procpid.maps(pid, MAPS_MAX).split(b"\n")
    total = 0
    for i, line in enumerate(lines):
        parts = line.split()
        if len(parts) != 5 or parts[1] != b"rw-p" or parts[4] != b"0":
            continue   # a file, [heap], [stack], shared or not writable
        lo, _, hi = parts[0].partition(b"-")
        start, end = int(lo, 16), int(hi, 16)
        if start % V8_PAGE or end - start < V8_PAGE or (start % ARENA == 0 and _reserved_after(lines, i)):
            continue
        total += end - start
    return total


def _reserved_after(lines: List[bytes], i: int) -> bool:
    """The mapping after line i is anonymous PROT_NONE: a malloc arena's reserved rest."""
    nxt = lines[i + 1].split() if i + 1 < len(lines) else []
    return len(nxt) == 5 and nxt[1] == b"---p" and nxt[4] == b"0"


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds (procfs.cpu_seconds);
    ProcessLookupError once it is gone."""
    spent = procfs.cpu_seconds(pid)
    if spent is None:
        raise ProcessLookupError(pid)
    return spent


def children(pid: int) -> List[int]:
    """Direct children of a process (procpid.children)."""
    return procpid.children(pid)


def tree(roots: Sequence[int]) -> List[int]:
    """`roots` and all their descendants that are alive now, sorted."""
    seen: set = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        try:
            kids = children(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue   # gone
        seen.add(pid)
        todo.extend(kids)
    return sorted(seen)


def listening_pids(port: int) -> List[int]:
    """The processes holding a listening socket of TCP `port` in the current network
    namespace (a pre-fork master and its workers all hold it); [] when none is seen."""
    inodes = {l.inode for l in sockdiag.listening() if l.port == port}
    if not inodes:
        return []
    return sorted(procpid.pids_holding(inodes, netns.own_inode()))


def slab_per_socket() -> tuple:
    """(bytes, source): the slab objects one server-side socket pins, epoll's watch
    included, from /proc/slabinfo's geometry or the fallback figures without root."""
    try:
        slab = procfs.slabinfo()
    except procfs.Unreadable:
        slab = None
    geometry = {k: [v.objsize, v.objperslab, v.pagesperslab] for k, v in (slab or {}).items()}
    parts = memory.breakdown(geometry or None, os.sysconf("SC_PAGE_SIZE"), 1, 0, epoll=True)
    return sum(parts.values()), memory.source(geometry or None)


class Sampler:
    """Samples one service: the processes behind TCP `port` (or the given `pids`, roots
    of the tree) and its held sockets on `port`, in the current network namespace.

    Construct it where the service's network namespace is current; finding the
    listeners' holders walks /proc once, here, not per sample."""

    def __init__(self, port: int, pids: Optional[Sequence[int]] = None,
                 families: Sequence[int] = (socket.AF_INET, socket.AF_INET6)):
        self.port = port
        self.roots = sorted(pids) if pids else listening_pids(port)
        self.families = tuple(families)
        self.bytecode = sockdiag.port_filter([port])
        self.slab_bytes, self.slab_source = slab_per_socket()
        self.descriptors = True      # False once fdsample could not read them here
        self.unspec = True           # False once the kernel refused the v1 dump
        self.child_cpu = 0.0         # CPU of this sample's descriptor-reading child

    def sample(self) -> Sample:
        t0, wall, cpu0 = time.monotonic(), time.time(), time.thread_time()
        pids = tree(self.roots)
        mem = {"pss": 0, "rss": 0, "pss_anon": 0}
        cpu, heap = 0.0, 0
        alive = []
        for pid in pids:
            try:
                for key, value in smaps_rollup(pid).items():
                    mem[key] += value
                cpu += cpu_seconds(pid)
                heap += v8_heap_bytes(pid)
                alive.append(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue   # exited between the listing and the read
        self.child_cpu = 0.0
        count, skmem, sampled = self.sockets(alive)
        buffers = sum(skmem[k] for k in BUFFER_FIELDS)
        slab = count * self.slab_bytes
        return Sample(at=t0, wall=wall, pids=alive, memory_bytes=mem["pss"], rss_bytes=mem["rss"],
                      anon_bytes=mem["pss_anon"], cpu_seconds=round(cpu, 2), sockets=count,
                      socket_buffer_bytes=buffers, socket_slab_bytes=slab,
                      kernel_bytes=buffers + slab, slab_bytes_per_socket=self.slab_bytes,
                      slab_source=self.slab_source, heap_bytes=heap,
                      took_ms=round((time.monotonic() - t0) * 1000, 2),
                      took_cpu_ms=round((time.thread_time() - cpu0 + self.child_cpu) * 1000, 2),
                      skmem=skmem, sampled=sampled)

    def sockets(self, pids: Sequence[int]):
        """(held sockets on the port, {BUFFER_FIELDS: bytes}, sampled): every socket
        through sock_diag while the service holds fewer than SAMPLE_FROM descriptors,
        a sample of its descriptors past that (fdsample), sock_diag again wherever the
        descriptors cannot be read."""
        opened = fdsample.open_descriptors(pids) if self.descriptors else None
        if opened is not None and opened >= SAMPLE_FROM:
            try:
                # In a child: a descriptor's close may wait on what the service chose.
                est = fdsample.isolated(pids, self.port, sockdiag.HELD_STATES, SAMPLE_BUDGET)
                self.child_cpu = est.cpu_seconds
                index = [sockdiag.SKMEM_FIELDS.index(k) for k in BUFFER_FIELDS]
                return (round(est.sockets), {k: round(est.sums[i]) for k, i in zip(BUFFER_FIELDS, index)},
                        est.held_read)
            except fdsample.Unsupported:
                self.descriptors = False     # not on this host: every socket from now on
        count, sums = self.dump()
        return count, dict(zip(BUFFER_FIELDS, sums)), 0

    def dump(self):
        """(held sockets on the port, their BUFFER_FIELDS sums), every one read: one walk
        of the socket table for both families (the v1 request), one per family on a
        kernel that refuses it."""
        if set(self.families) == {socket.AF_INET, socket.AF_INET6} and self.unspec:
            try:
                return sockdiag.dump_skmem(socket.AF_UNSPEC, sockdiag.HELD_STATES, self.bytecode, BUFFER_FIELDS)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOENT, errno.EOPNOTSUPP):
                    raise
                self.unspec = False
        count, sums = 0, [0] * len(BUFFER_FIELDS)
        for family in self.families:
            n, part = sockdiag.dump_skmem(family, sockdiag.HELD_STATES, self.bytecode, BUFFER_FIELDS)
            count += n
            sums = [a + b for a, b in zip(sums, part)]
        return count, sums
