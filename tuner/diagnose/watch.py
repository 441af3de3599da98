"""`tuner diagnose --watch`: the service live, and the counters that say a limit bites now.

Every --interval it samples, in the service's network namespace: connections held and
descriptors in use per process, the accept queues, sockstat's orphans and TIME_WAIT,
conntrack's count, and the deltas of the kernel counters the knob table says rise when
a limit is hit (each knob's `signs`: TcpExt ListenOverflows, TCPMemoryPressures, ...,
conntrack's insert_failed and drop) plus new kernel log lines the table names.  When
one moves, the line names the limit it means and the fix (from the knob table).
Ctrl-C (or the --watch duration) ends it with a summary of what moved.
Output: rich on a terminal, one JSON line per sample with --json, plain lines otherwise;
a service's words (the verdict's, a fix's, a kernel log line naming its comm) pass
trust.safe_text on the way out, and reach rich as Text, never as markup.
"""
from __future__ import annotations

import json
import os
from types import SimpleNamespace
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from tuner import knobs, readings
from tuner.host import procfs, procpid
from tuner.host.trust import safe_text
from tuner.diagnose import service
from tuner.diagnose.evaluate import diagnose
from tuner.fixes import LISTEN_BACKLOG, limit_fix
from tuner.suggestion import APPLY

SCHEMA = "tuner.diagnose.watch/1"

# Counters and kernel log lines that mean a limit is hit: the knob table's (Knob.signs).
COUNTERS = knobs.counters()            # counter key -> knob
KMSG = knobs.kernel_log_patterns()     # (pattern, knob)


# What a descriptor walker pins per descriptor it looks at (issue 10: with one walking
# the probe's processes, proc_inode_cache +1,425 B and dentry +778 B per connection).
WALK_CACHES = ("proc_inode_cache", "dentry")
WALK_MIN_CONNECTIONS = 1000     # growth below this says nothing either way

WAITING_FDS = "accept queue waiting, descriptors at RLIMIT_NOFILE.soft"
WAITING_ACCEPT = "accept queue not draining"


@dataclass
class Sample:
    t: float
    connections: int
    accept_queue: int
    backlog: int
    fds: Dict[int, int]
    nofile_soft: Dict[int, int]
    threads: int
    counters: Dict[str, int]
    orphans: int
    time_wait: int
    conntrack_count: Optional[int]
    kernel_log: List[str] = field(default_factory=list)
    walk_slab: Dict[str, tuple] = field(default_factory=dict)   # cache -> (active, size)


class KernelLog:
    """New lines of /dev/kmsg since the watch started, where readable (root, or an
    unrestricted dmesg); nothing is created or changed by reading it."""

    def __init__(self) -> None:
        self.fd: Optional[int] = None
        try:
            self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            self.close()

    @property
    def readable(self) -> bool:
        return self.fd is not None

    def new_lines(self) -> List[str]:
        out = []
        while self.fd is not None:
            try:
                record = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == 32:   # EPIPE: overwritten while we read; go on from here
                    continue
                break
            if not record:
                break
            text = record.decode(errors="replace").split(";", 1)[-1].strip()
            if any(p.search(text) for p, _ in KMSG):
                out.append(text)
        return out

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def take_sample(pids: Sequence[int], ports: Sequence[int], klog: KernelLog) -> Sample:
    fds, soft, threads = {}, {}, 0
    for pid in pids:
        with service._reading(pid):
            fds[pid] = procpid.fd_count(pid)
            soft[pid] = procpid.proc_limits(pid).get("Max open files", (0, 0))[0] or 0
            threads += int(procpid.proc_status(pid).get("Threads", "1"))
    with service.in_netns_of(pids[0]):
        own = [l for l in service.listeners() if l.port in ports]
        conns = service.counted(ports, own)
        queued = conns.accept_queue
        netstat = procfs.net_counters("TcpExt")
        sock = procfs.sockstat().get("TCP", {})
        count = procfs.conntrack_count()
        ct = procfs.conntrack_stats(tuple(name for k in knobs.ALL for src, name in k.signs.counters
                                          if src == "conntrack"))
    counters = {key: netstat.get(key, 0) for key in knobs.counters("TcpExt")}
    counters.update({knobs.counter_key("conntrack", k): v for k, v in ct.items()})
    try:
        slab = procfs.slab_active(WALK_CACHES)
    except OSError:
        slab = {}   # /proc/slabinfo needs root
    return Sample(time.time(), conns.held, queued, sum(l.backlog for l in own), fds, soft, threads,
                  counters, sock.get("orphan", 0), sock.get("tw", 0),
                  count, klog.new_lines(), slab)


@dataclass
class Event:
    counter: str
    delta: int
    limit: str
    fix: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class CostReadings:
    """What holding costs the service, read while it is watched (issue 26): a sample of its
    memory and its sockets' kernel memory (tuner.host.servicecost) at the start and again
    whenever it holds MIN_SPAN more connections than at the last one, at most every
    COST_EVERY seconds (~20 ms a sample at 100,000, tuner.host.servicecost); two or more give
    tuner.cost's slope and where memory stops it."""

    COST_EVERY = 2.0

    def __init__(self, diag, ports: Sequence[int]) -> None:
        # Here: only a watched listener's cost is sampled (tuner.cost, its sampler).
        from tuner import cost
        from tuner.host import servicecost

        self.cost, self.diag, self.rows, self.last = cost, diag, [], 0.0
        self.sampler = None
        if ports:
            with service.in_netns_of(diag.pids[0]):
                self.sampler = servicecost.Sampler(ports[0], diag.pids)
        self.own = own_counter(diag)

    def take(self, held: int) -> None:
        now = time.monotonic()
        if self.sampler is None or (self.rows and (held < self.rows[-1]["connections"] + self.cost.MIN_SPAN
                                                   or now - self.last < self.COST_EVERY)):
            return
        with service.in_netns_of(self.diag.pids[0]):
            s = self.sampler.sample()
        self.last = now
        self.rows.append({"connections": s.sockets, "service_memory_bytes": s.memory_bytes,
                          "service_kernel_bytes": s.kernel_bytes, "service_buffer_bytes": s.socket_buffer_bytes,
                          "service_heap_bytes": s.heap_bytes, "service_own": self.own()})

    def projection(self) -> Optional[dict]:
        """tuner.cost.project over the samples (None before a second one)."""
        return self.cost.project(self.rows, self.diag.pids) if len(self.rows) >= 2 else None


def own_counter(diag):
    """A reader of what the application counts itself against its own memory caps (its
    adapter's memory_caps: Redis's mem_clients_normal against maxmemory-clients), in a
    step row's service_own shape; one that reads nothing for an application without."""
    # Here: only a watched service with an adapter is asked (tuner.apps, tuner.cost).
    from tuner import apps, cost

    view = apps.base.view(diag.pids[0], [(l["address"], l["port"]) for l in diag.listeners], depth=0)
    adapter = apps.find(view)
    if adapter is None:
        return list
    def read() -> list:
        try:
            return [cost.own_reading(c) for c in adapter.memory_caps(view) if c.used is not None]
        except (OSError, ValueError, apps.Untrusted):
            return []            # a service gone or unreadable mid-watch: this sample says nothing
    return read


class Watch:
    """Turns samples into events (which limit, which fix) and keeps the totals."""

    def __init__(self, diag, target: Optional[int], procs=()) -> None:
        self.diag = diag
        self.procs = list(procs)   # service.Process, for the runtime's backlog setting
        self.target = target
        self.first: Optional[Sample] = None
        self.prev: Optional[Sample] = None
        self.moved: Dict[str, int] = {}
        self.limits_hit: Dict[str, str] = {}
        self.peak_connections = 0
        self.peak_sample: Optional[Sample] = None
        self.peak_queue = 0
        self.kernel_lines: List[str] = []
        self.samples = 0
        self.costs: Optional[CostReadings] = None   # run() sets it for a service that listens

    def _fix_for(self, limit: str) -> str:
        """The fix a limit hit now asks for (tuner.fixes.limit_fix), as the line says it."""
        n = self.target or max(2 * (self.diag.connections["held"] or 1), 1000)
        fix = limit_fix(self.diag, limit, n, self.backlog_cap())
        if fix is None:
            return ""
        # A sysctl's apply (not the descriptors' apply --pid) names the knob after the command.
        return f"{fix.render()}  ({limit})" if fix.verb == APPLY and not fix.option("--pid") else fix.render()

    def backlog_cap(self) -> Optional[int]:
        """The value of the knob that caps listen()'s backlog, as diagnose read it."""
        name = knobs.backlog_cap().name
        return next((r.current[0] for r in self.diag.limits if r.name == name and r.current), None)

    def accept_limit(self) -> str:
        """Which limit a full accept queue means: the application's backlog when it asked
        for less than the knob that caps it, that knob otherwise."""
        cap = self.backlog_cap()
        backlogs = [l["backlog"] for l in self.diag.listeners]
        if cap is not None and backlogs and min(backlogs) < cap:
            return LISTEN_BACKLOG
        return knobs.backlog_cap().name

    def step(self, s: Sample) -> List[Event]:
        self.samples += 1
        self.peak_connections = max(self.peak_connections, s.connections)
        if s.connections * 10 >= self.peak_connections * 9:
            self.peak_sample = s    # the latest sample still near the peak
        self.peak_queue = max(self.peak_queue, s.accept_queue)
        events: List[Event] = []
        if self.first is None:
            self.first = s
        prev = self.prev or s
        for name, value in s.counters.items():
            delta = value - prev.counters.get(name, value)
            if delta <= 0:
                continue
            knob = COUNTERS.get(name)
            limit = "" if knob is None else self.accept_limit() if knob.caps_backlog else knob.name
            events.append(Event(name, delta, limit, self._fix_for(limit)))
        # Connections the kernel completed into the backlog that the server does not take:
        # the gauge is the queue itself, so its peak (not a sum) is kept.
        gauges = []
        if s.accept_queue and s.fds and all(s.fds[p] >= s.nofile_soft[p] > 0 for p in s.fds):
            gauges.append(Event(WAITING_FDS, s.accept_queue, "RLIMIT_NOFILE.soft",
                                self._fix_for("RLIMIT_NOFILE.soft")))
        elif s.accept_queue and self.prev is not None and prev.accept_queue and \
                s.connections <= prev.connections:
            gauges.append(Event(WAITING_ACCEPT, s.accept_queue, "accept loop",
                                "the application is not calling accept() (a blocked event loop, a "
                                "busy or dead acceptor thread); its descriptors still have room"))
        for line in s.kernel_log:
            limit = next(k.name for p, k in KMSG if p.search(line))
            events.append(Event("kernel log", 1, limit, self._fix_for(limit)))
            self.kernel_lines.append(line)
        for e in events:
            self.moved[e.counter] = self.moved.get(e.counter, 0) + e.delta
            self.limits_hit[e.limit] = e.fix
        for e in gauges:
            self.moved[e.counter] = max(self.moved.get(e.counter, 0), e.delta)
            self.limits_hit[e.limit] = e.fix
        events += gauges
        self.prev = s
        return events

    def sample_dict(self, s: Sample, events: List[Event]) -> dict:
        prev_conns = (self.first.connections if self.samples == 1 else None)
        return {"schema": SCHEMA, "time": round(s.t, 3), "pids": list(s.fds),
                "connections": s.connections, "fds": s.fds, "nofile_soft": s.nofile_soft,
                "threads": s.threads, "accept_queue": s.accept_queue, "backlog": s.backlog,
                "orphans": s.orphans, "time_wait": s.time_wait, "conntrack_count": s.conntrack_count,
                "counters": s.counters, "events": [e.to_dict() for e in events],
                "kernel_log": s.kernel_log, **({"first": True} if prev_conns is not None else {})}

    def fd_walker(self) -> Optional[dict]:
        """proc inodes and dentries that grew with the connections: something on the host
        lists /proc/PID/fd of the service, and each connection costs that much more."""
        if not self.first or not self.prev or not self.first.walk_slab or not self.prev.walk_slab:
            return None
        grew = self.peak_connections - self.first.connections
        if grew < WALK_MIN_CONNECTIONS:
            return None
        at_peak = self.peak_sample or self.prev
        per = {}
        for cache in WALK_CACHES:
            a, b = self.first.walk_slab.get(cache), at_peak.walk_slab.get(cache)
            if a and b:
                per[cache] = round((b[0] - a[0]) * b[1] / grew)
                if cache == "dentry":
                    # Every socket has a dentry of its own (the report's estimate counts
                    # it); only what grew beyond that is the walker's.
                    per[cache] = max(per[cache] - b[1], 0)
        proc_objects = (at_peak.walk_slab.get("proc_inode_cache", (0, 0))[0]
                        - self.first.walk_slab.get("proc_inode_cache", (0, 0))[0])
        return {"connections_grown": grew, "bytes_per_connection": per,
                "walked": proc_objects >= grew // 2}

    def summary(self, reason: str) -> dict:
        return {"fd_walker": self.fd_walker(),"schema": SCHEMA, "summary": True, "ended_by": reason, "samples": self.samples,
                "seconds": round((self.prev.t - self.first.t) if self.first and self.prev else 0, 3),
                "peak_connections": self.peak_connections, "peak_accept_queue": self.peak_queue,
                "moved": self.moved, "limits_hit": self.limits_hit,
                "kernel_log": self.kernel_lines,
                "service_cost": self.costs.projection() if self.costs else None}


def line_text(s: Sample, events: List[Event]) -> str:
    fds = sum(s.fds.values())
    soft = sum(s.nofile_soft.values())
    text = (f"{time.strftime('%H:%M:%S', time.localtime(s.t))} conns {s.connections:,} "
            f"fds {fds:,}/{soft:,} queue {s.accept_queue:,}/{s.backlog:,} threads {s.threads:,} "
            f"orphans {s.orphans:,} tw {s.time_wait:,}"
            + (f" conntrack {s.conntrack_count:,}" if s.conntrack_count is not None else ""))
    for e in events:
        amount = f" {e.delta:,}" if e.counter in (WAITING_FDS, WAITING_ACCEPT) else f" +{e.delta:,}"
        text += f"\n  {e.counter}{amount}: {safe_text(e.limit)}" + (f"; fix: {_t(e.fix)}" if e.fix else "")
    return text


def summary_text(summary: dict) -> str:
    lines = [f"watched {summary['samples']} sample(s) over {summary['seconds']:,.1f} s, ended by "
             f"{summary['ended_by']}; peak {summary['peak_connections']:,} connections, accept "
             f"queue peak {summary['peak_accept_queue']:,}"]
    if not summary["moved"]:
        lines.append("no limit counter moved")
    for name, delta in summary["moved"].items():
        gauge = name in (WAITING_FDS, WAITING_ACCEPT)
        lines.append(f"  {name}: " + (f"peak {delta:,} connections completed, never accepted"
                                      if gauge else f"+{delta:,}"))
    for limit, fix in summary["limits_hit"].items():
        lines.append(f"limit hit: {safe_text(limit)}" + (f"; fix: {_t(fix)}" if fix else ""))
    for line in summary["kernel_log"]:
        lines.append(f"kernel: {safe_text(line)}")
    spent = summary.get("service_cost")
    lines.append(f"memory: {spent['sentence']}" if spent else
                 "memory per connection: not measured (its connections did not grow while watched)")
    walk = summary.get("fd_walker")
    if walk and walk["walked"]:
        per = walk["bytes_per_connection"]
        lines.append(f"descriptor walker: proc inodes and dentries grew with the "
                     f"{walk['connections_grown']:,} new connections (" + ", ".join(
                         f"{k} +{v:,} B" for k, v in per.items()) + " per connection): something "
                     f"lists /proc/PID/fd of this service (lsof, ss -p, a monitoring agent); on "
                     f"this host each connection costs that much more kernel memory")
    return "\n".join(lines)


def _t(text: str) -> str:
    """A fix or verdict: tuner's sentence around a service's words, safe for a terminal."""
    return safe_text(text, 1000)


def _rich_table(diag, s: Sample, w: Watch, events: List[Event]):
    # Here: rich loads only for the live table on a terminal (start-up time).
    from rich.table import Table
    from rich.text import Text

    # Text, not str: rich would read a service's '[bold]' or ':smile:' as its markup.
    t = Table(title=Text(_t(diag.verdict)), title_justify="left")
    for col in ("connections", "descriptors", "accept queue", "threads", "orphans", "TIME_WAIT"):
        t.add_column(col, justify="right")
    t.add_row(f"{s.connections:,}", f"{sum(s.fds.values()):,}/{sum(s.nofile_soft.values()):,}",
              f"{s.accept_queue:,}/{s.backlog:,}", f"{s.threads:,}", f"{s.orphans:,}", f"{s.time_wait:,}")
    t.caption = Text("\n".join([f"{k} +{v:,} since start" for k, v in w.moved.items()]
                               + [f"{e.counter} +{e.delta:,}: {safe_text(e.limit)}; fix: {_t(e.fix)}"
                                  for e in events]) or "no limit counter moved (Ctrl-C ends with a summary)")
    return t


def run(pids: Sequence[int], target: Optional[int], duration: Optional[float], interval: float,
        json_out: bool, emit: Callable[[str], None]) -> int:
    diag = diagnose(pids=pids, target=target)
    ports = sorted({l["port"] for l in diag.listeners})
    w = Watch(diag, target, [SimpleNamespace(**p) for p in diag.processes])
    w.costs = CostReadings(diag, ports)
    klog = KernelLog()
    rich_live = None
    if not json_out and sys.stdout.isatty():
        # Here: rich loads only for the live table on a terminal (start-up time).
        from rich.console import Console
        from rich.live import Live

        rich_live = Live(console=Console(), auto_refresh=False)
        rich_live.start()
    elif not json_out:
        emit(_t(diag.verdict))
        emit(f"watching pid {', '.join(map(str, diag.pids))}: ports {', '.join(map(str, ports)) or '-'}, "
             f"every {interval:g} s" + ("" if klog.readable else "; kernel log unreadable (needs root)"))
    reason = "duration"
    start = time.monotonic()
    try:
        while True:
            s = take_sample(diag.pids, ports, klog)
            events = w.step(s)
            w.costs.take(s.connections)
            if json_out:
                emit(json.dumps(w.sample_dict(s, events)))
            elif rich_live is not None:
                rich_live.update(_rich_table(diag, s, w, events), refresh=True)
            else:
                emit(line_text(s, events))
            if duration is not None and time.monotonic() - start >= duration:
                break
            time.sleep(max(0.0, interval - (time.monotonic() - start) % interval))
    except KeyboardInterrupt:
        reason = "Ctrl-C"
    except service.ProcessGone as e:
        reason = f"process exit ({e})"
    finally:
        if rich_live is not None:
            rich_live.stop()
        klog.close()
    summary = w.summary(reason)
    emit(json.dumps(summary) if json_out else summary_text(summary))
    return 0
