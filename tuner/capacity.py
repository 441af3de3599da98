"""The capacity model: evaluate the knob table over a snapshot for a target and role.

Pure functions of a `Ctx`: no reads, no writes, so fixed snapshots (a 64 GB host, the
seed's 8 GB box) test it as well as this machine does.  The result is plain data that
`render` turns into a table or JSON and that `plan` turns into changes.  The figures
every command shares are computed here once: the processes a target needs
(processes_needed) and the worst-case memory (worst_case_bytes).
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Dict, List, Optional

from .host.conns import FD_HEADROOM, connections_within

from tuner.host import memory
from . import fixes
from .suggestion import Suggestion
from .knobs import (BY_NAME, BY_NAME_ALL, CAPS_BUFFERS, CAPS_CONNECTIONS, CAPS_PER_PROCESS, KNOBS,
                    Ctx, Knob)

# Row statuses, in the words the table prints.
OK, RAISE, SHRINK, BINDS, SHORT, CAPPED, WARN, NEAR, FULL, NA, UNREADABLE = (
    "ok", "raise", "shrink", "binds", "short", "capped", "warn", "near", "full", "n/a", "unreadable")
# Statuses that ask for something to be done; a row with one of them carries its fix.
ACTION = (BINDS, SHORT, FULL, CAPPED, RAISE, SHRINK, NEAR, WARN)
# How urgent each is, as colour shows it (tuner.style): stopping connections now or
# for the target, and needing a change first.
ALARM, CAUTION = (BINDS, SHORT, FULL), (RAISE, NEAR)

# The share of a limit in use from which its row says `near` (and at 1, `full`): the
# shipped alert TunerLimitUtilizationHigh (contrib/prometheus/tuner-alerts.yml) fires
# over the same share, so the table and the pager agree.
NEAR_SHARE = 0.8

SCHEMA = "tuner.report/3"


@dataclass
class Row:
    name: str
    kind: str
    scope: str
    unit: str
    caps: str
    current: Optional[List[Any]]
    needed: Optional[List[Any]]
    allows: Optional[int]
    status: str
    why: str
    fix: Optional[Suggestion] = None
    # What is in use of this limit now, in its own unit, and in_use / the limit; None
    # where the kernel keeps no O(1) count (knobs.Knob.usage).
    in_use: Optional[int] = None
    utilization: Optional[float] = None
    # The process a per-process row is of (a running service's, tuner diagnose), else None.
    pid: Optional[int] = None

    @property
    def headroom(self) -> Optional[int]:
        """What is left of the limit beyond what is in use, in its own unit."""
        limit = limit_value(self.current)
        return None if self.in_use is None or limit is None else limit - self.in_use


def limit_value(current) -> Optional[int]:
    """The figure a row's value caps at: its last number (tcp_mem's high), or its only one."""
    if not current or not isinstance(current[-1], int):
        return None
    return current[-1] if len(current) > 1 else current[0]


@dataclass
class Stop:
    """Where what is rated stops: the connections (`at`), the limit that sets it and,
    for a running service, the processes it binds; a row is `binds` only as that limit,
    and only when the target (if any) is beyond it."""

    at: Optional[int]
    limit: Optional[str]
    pids: List[int] = field(default_factory=list)
    target: Optional[int] = None

    def binds(self, row: "Row") -> bool:
        return (row.name == self.limit and (not self.pids or row.pid is None or row.pid in self.pids)
                and (self.target is None or (self.at is not None and self.at < self.target)))


@dataclass
class Report:
    role: str
    target: Optional[int]
    netns: Optional[str]
    rows: List[Row]
    max_connections: Optional[int]
    binding: Optional[str]
    reachable: Optional[bool]
    processes: Dict[str, Any]
    memory: Dict[str, Any]
    sockets_now: Dict[str, int]
    unreadable: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = {"schema": SCHEMA}
        for f in fields(self):
            d[f.name] = [row_dict(r) for r in self.rows] if f.name == "rows" else copy.deepcopy(getattr(self, f.name))
        d["next"] = next_step(self)
        d["k8s"] = k8s_section(self.rows)
        return d

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)


def row_dict(row: Row) -> Dict[str, Any]:
    """A row as the JSON has it: its fix spelled (tuner.suggestion), the rest as data."""
    d = asdict(replace(row, fix=None))
    d["fix"] = row.fix.render() if row.fix else ""
    del d["pid"]      # report's rows are the host's; a process's are diagnose's
    return d


def changes_wanted(report: "Report") -> List[Row]:
    """Rows a `tuner apply` for the target would change (what next_step's apply is for):
    every limit below what the target wants, not the ones apply cannot change (capped) or
    only warns of."""
    return [r for r in report.rows if r.status in ACTION and r.status not in (CAPPED, WARN)]


def next_step(report: "Report") -> str:
    """The one thing to do next, as report's first screen and JSON give it: the fix of a
    limit full now, or of one that stops the target where apply cannot change it (the
    knob table's); else apply's plan for the target when a limit needs
    changing; else the probe that proves the target (without one, the report sizing it)."""
    for row in report.rows:
        # A limit apply cannot change that stops the target stays after any apply.
        stops = row.status in (BINDS, SHORT) and report.target is not None
        if row.fix and (row.status == FULL or stops) and (report.target is None or not BY_NAME[row.name].writable):
            return f"{row.name} ({row.status}): {row.fix.render()}"
    if report.target is None:
        return f"{fixes.sizing_report().render()} (what N connections need)"
    if changes_wanted(report):
        return fixes.planned_apply(report.target, report.role, report.netns).render()
    if report.role != "loopback":
        return f"nothing to change: {fixes.serving_probe().render()} and --connect prove it between the two hosts"
    return f"{fixes.proving_probe(report.target, report.netns).render()} (proves it with real connections)"


def k8s_section(rows: List[Row]) -> List[Dict[str, Any]]:
    """Where each sysctl of the report is set under Kubernetes (Knob.k8s_placement), with
    the value the target needs, so a pod spec or a node's DaemonSet can be written."""
    out = []
    for r in rows:
        knob = BY_NAME[r.name]
        if knob.k8s_placement is not None:
            out.append({"knob": r.name, "scope": r.scope, "placement": knob.k8s_placement,
                        "kubelet_safe_since": knob.k8s_safe_since or None,
                        "current": r.current, "needed": r.needed})
    return out


def _unreadable(ctx: Ctx, knob: Knob) -> bool:
    return knob.name in ctx.snap.unreadable


def processes_needed(ctx: Ctx, connections: int) -> Dict[str, Any]:
    """How many processes hold `connections` when each is capped by its descriptors.

    Without CAP_SYS_RESOURCE the hard RLIMIT_NOFILE is the ceiling; with it, the sysctl
    that caps every hard limit (the knob table's ceiling of RLIMIT_NOFILE.hard).
    Each process keeps FD_HEADROOM descriptors for itself (probes.connections_within, the
    probe's own formula).  A ceiling at or below that leaves none: "processes" is then
    None (no number of such processes holds a connection) and the report says to raise
    the limit, instead of dividing by zero.
    """
    nr_open = ctx.nr_open or ctx.snap.nofile_hard
    ceiling = nr_open if ctx.snap.cap_sys_resource else ctx.snap.nofile_hard
    per_process = connections_within(ceiling, ctx.sockets_per_conn)
    if not connections:
        processes: Optional[int] = 0
    else:
        processes = math.ceil(connections / per_process) if per_process else None
    return {
        "fd_ceiling": ceiling,
        "hard_limit_raisable": ctx.snap.cap_sys_resource,
        "reserved_per_process": FD_HEADROOM,
        "connections_per_process": per_process,
        "for_connections": connections,
        "processes": processes,
    }


def worst_case_bytes(ctx: Ctx, connections: int) -> Optional[int]:
    """The one worst-case memory figure (memory.WORST_CASE): what `connections` take if
    every socket's default buffers fill at once, the idle slab objects included (per
    connection: ctx.worst_bytes). Report, apply's plan, metrics and diagnose show this."""
    per = ctx.worst_bytes
    return None if per is None else per * connections


def memory_estimates(ctx: Ctx, connections: int) -> Dict[str, Any]:
    """Idle (slab objects only) and worst case (worst_case_bytes) for `connections`."""
    tcp_mem_bytes = ctx.tcp_mem_high_bytes
    avail = ctx.mem_available
    out: Dict[str, Any] = {
        "source": memory.source(ctx.snap.slab),
        "for_connections": connections,
        "idle_bytes_per_connection": ctx.idle_bytes,
        "idle_breakdown": ctx.idle_breakdown,
        "user_bytes_per_connection": ctx.user_bytes,
        "user_bytes_tls_version": ctx.user_tls_version,
        "user_bytes_tls_version_asked": ctx.user_tls_version_asked,
        "worst_bytes_per_connection": ctx.worst_bytes,
        "mem_available_bytes": avail,
        "tcp_mem_high_bytes": tcp_mem_bytes,
    }
    out["idle_total_bytes"] = ctx.idle_bytes * connections
    out["idle_fits_memory"] = None if avail is None else out["idle_total_bytes"] <= avail
    if ctx.worst_bytes is not None:
        out["worst_total_bytes"] = worst_case_bytes(ctx, connections)
        out["worst_fits_memory"] = None if avail is None else out["worst_total_bytes"] <= avail
        # tcp_mem counts buffer pages only; slab objects are not charged to it.
        buffers = ctx.buffer_bytes * connections
        out["worst_buffers_fit_tcp_mem"] = None if tcp_mem_bytes is None else buffers <= tcp_mem_bytes
    return out


def usage_status(utilization: Optional[float]) -> Optional[str]:
    """The one rule for how full a limit is: `full` at 100% in use, `near` from
    NEAR_SHARE, None below it or where nothing counts its use. Report, diagnose and
    metrics all take a limit's fill from here."""
    if utilization is None:
        return None
    if utilization >= 1:
        return FULL
    return NEAR if utilization >= NEAR_SHARE else None


def status(planned: str, utilization: Optional[float]) -> str:
    """A row's status: what the target asks of the limit (`planned`), with how full it
    is now. A full limit fails now, whatever the target, so `full` outranks every
    other word; `near` only replaces `ok` (a row that must be raised says so)."""
    fill = usage_status(utilization)
    if planned in (NA, UNREADABLE) or fill is None:
        return planned
    if fill == FULL:
        return FULL
    return fill if planned == OK else planned


def _status(ctx: Ctx, knob: Knob, row: Row, stop: Stop, worst_fits: Optional[bool], running: bool) -> str:
    """What the target (or, without one, the host's capacity) asks of this limit.
    `running`: the row is of a running service (tuner diagnose), whose processes are
    what they are: a limit each stops at by itself (Knob.binds_running) is short of a
    target beyond it, where for a plan more processes would share the load."""
    if row.current is None:
        return UNREADABLE if _unreadable(ctx, knob) else NA
    if stop.binds(row):
        return BINDS
    if row.needed is not None:
        return SHRINK if knob.caps == CAPS_BUFFERS else RAISE
    short = ctx.target is not None and row.allows is not None and row.allows < ctx.target
    if knob.caps == CAPS_PER_PROCESS:
        needed = processes_needed(ctx, ctx.target or 0)["processes"]
        one_process = needed is not None and needed <= 1
        if knob.capped(ctx) and not one_process:
            return CAPPED
        return SHORT if running and knob.binds_running and short else OK
    if knob.caps == CAPS_BUFFERS:
        return WARN if worst_fits is False else OK
    if short:
        return SHORT
    return OK


def judge(ctx: Ctx, knob: Knob, row: Row, stop: Stop, worst_fits: Optional[bool] = None,
          running: bool = False) -> None:
    """The one judge of a knob's row: its status (what the target asks of it, then how
    full it is: `status`) and, from that status, its fix (tuner.fixes.row_fix). Report's rows and
    a running service's (diagnose's, each with its own process's ctx) are judged here."""
    row.status = status(_status(ctx, knob, row, stop, worst_fits, running), row.utilization)
    # A running process's own limit that stops it is lifted by diagnose's fixes, which
    # name the process (apply --pid, its unit's LimitNOFILE=); its row keeps the plan's
    # fix, raising it for the target, where the target needs more.
    own = running and row.pid is not None and row.status in (BINDS, SHORT)
    state = (RAISE if row.needed is not None else OK) if own else row.status
    row.fix = (fixes.row_fix(knob, row.needed, ctx.snap.netns, ctx.target, shrink=state == WARN)
               if state in ACTION else None)


def judge_other(row: Row, stop: Stop) -> None:
    """A row no knob has (tuner diagnose's): the application's own cap (scope
    APPLICATION_ROW: unreadable, ok or binds) or a listener's accept queue (scope
    LISTENER_ROW: how full it is, whether or not it is what stops the service). A new
    kind of row adds its rule to OTHER_ROWS."""
    row.status = status(OTHER_ROWS[row.scope](row, stop), row.utilization)


APPLICATION_ROW, LISTENER_ROW, MEMORY_ROW = "application", "listener", "memory"
OTHER_ROWS = {
    APPLICATION_ROW: lambda row, stop: UNREADABLE if row.current is None else BINDS if stop.binds(row) else OK,
    LISTENER_ROW: lambda row, stop: OK,
    # Where the service's memory stops it, from a measured cost per connection (tuner.cost):
    # unknown (not zero) without a slope.
    MEMORY_ROW: lambda row, stop: UNREADABLE if row.allows is None else BINDS if stop.binds(row) else OK,
}


def tightest(limits):
    """The one rule for which limit binds: of (connections, name, ...) tuples, the one
    that allows the fewest connections, the first listed on a tie; None when none is
    given (None entries are skipped). Report and diagnose both decide with it."""
    given = [l for l in limits if l is not None]
    return min(given, key=lambda l: l[0]) if given else None


def measure(ctx: Ctx, knobs: Optional[List[Knob]] = None) -> tuple:
    """Every knob's row as read and computed, not yet judged (status ""), and where
    they stop: (rows, Stop). `knobs`: the table (default KNOBS; diagnose: knobs.ALL)."""
    rows = []
    for knob in KNOBS if knobs is None else knobs:
        current = knob.current(ctx)
        allows = knob.allows(ctx) if current is not None else None
        needed = knob.needs(ctx) if current is not None else None
        usage = knob.usage(ctx) if current is not None else None
        rows.append(Row(knob.name, knob.kind, knob.scope, knob.unit, knob.caps, current, needed, allows, "",
                        " ".join(filter(None, (knob.why, knob.explain(ctx) if current is not None else ""))),
                        in_use=None if usage is None else usage[0],
                        utilization=None if usage is None else usage[0] / usage[1]))
    limits = [(r.allows, r.name) for r in rows if r.caps == CAPS_CONNECTIONS and r.allows is not None]
    max_now, binding = tightest(limits) or (None, None)
    return rows, Stop(max_now, binding, target=ctx.target)


def memory_for(ctx: Ctx, stop: Stop) -> Dict[str, Any]:
    """The memory estimates for the target, or without one for what the limits allow."""
    return memory_estimates(ctx, ctx.target if ctx.target is not None else (stop.at or 0))


def evaluate(ctx: Ctx, knobs: Optional[List[Knob]] = None) -> Report:
    """`knobs`: the table to evaluate (default KNOBS; diagnose adds PROCESS_KNOBS)."""
    rows, stop = measure(ctx, knobs)
    max_now, binding = stop.at, stop.limit
    sized_for = ctx.target if ctx.target is not None else (max_now or 0)
    mem = memory_for(ctx, stop)
    for row in rows:
        judge(ctx, BY_NAME_ALL[row.name], row, stop, mem.get("worst_fits_memory"))
    sockstat = ctx.snap.sockstat
    return Report(
        role=ctx.role, target=ctx.target, netns=ctx.snap.netns, rows=rows,
        max_connections=max_now, binding=binding,
        reachable=None if ctx.target is None or max_now is None else max_now >= ctx.target,
        processes=processes_needed(ctx, sized_for),
        memory=mem,
        sockets_now={
            "sockets_used": sockstat.get("sockets", {}).get("used", 0),
            "tcp_inuse": sockstat.get("TCP", {}).get("inuse", 0),
            "tcp_orphan": sockstat.get("TCP", {}).get("orphan", 0),
            "tcp_tw": sockstat.get("TCP", {}).get("tw", 0),
            "tcp_mem_pages": sockstat.get("TCP", {}).get("mem", 0),
            # Connections open now as the role counts them (loopback: two sockets each).
            "connections": sockstat.get("TCP", {}).get("inuse", 0) // ctx.sockets_per_conn,
        },
        unreadable=list(ctx.snap.unreadable),
    )
