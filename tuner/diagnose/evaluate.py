"""`tuner diagnose`: why does this running service stall at N connections?

The same knob table and capacity model as `tuner report`, evaluated for the server
role with the process's own numbers instead of tuner's: its RLIMIT_NOFILE, its
descriptors in use, its cgroup, its network namespace's sysctls, its threads; and the
application's own cap, from the adapter in tuner/apps/ that recognises the process
(or --app-limit).  The result is one verdict (the stall point: the minimum over kernel,
process and application, and the limit that sets it), the table of every limit with
what is used of it, and fixes as commands (from the knob table, `tuner apply` and the
application's adapter: tuner/fixes.py, never restated here).  The model
measures each process's rows (capacity.measure), this module puts them together for the
service (what it uses of each, where it stops: capacity.tightest) and the model judges
every row once, for the service as a whole (capacity.judge, capacity.judge_other):
nothing here decides a status.

Library entry point (tuner metrics uses it too):

    from tuner.diagnose.evaluate import diagnose
    d = diagnose(pids=[4242], target=5000)     # or port=8080, or unit="gateway"
    d.max_connections, d.binding_limit, d.to_dict()   # schema tuner.diagnose/3
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence

from tuner import apps, capacity, knobs, readings
from tuner.host import netns
from tuner.host import procfs
from tuner.host.numfmt import values
from tuner.diagnose import service
from tuner.apps.base import AppCap, AppFix
from tuner.capacity import APPLICATION_ROW, LISTENER_ROW, MEMORY_ROW, Row, limit_value
from tuner.fixes import APP_LIMIT_HINT, LISTEN_BACKLOG, app_want, fixes, listener_row_fix
from tuner.host.errors import TunerError, UsageError
from tuner.knobs import CAPS_CONNECTIONS, Ctx
from tuner.suggestion import Suggestion

SCHEMA = "tuner.diagnose/3"
# A process running at least this many connections, each with a thread of its own
# (threads >= connections), is taken for thread-per-connection: its thread limits bind.
THREAD_PER_CONNECTION_MIN = 32
PEER_NOTE_MIN = 1000        # below this, one client address decides nothing
# From this many CLOSE_WAIT sockets the verdict names them: a few are a moment's lag
# between the peer's FIN and the service's close(); more is a service that never closes.
PEER_CLOSED_MIN = 16
# Limits that cap a running process now (the ceilings above them only matter for raising).
PROCESS_BINDING = tuple(k.name for k in knobs.ALL if k.binds_running)


def limit_dict(row: Row) -> dict:
    """A row of the table as diagnose's JSON has it (tuner.diagnose/3's limits[])."""
    return {"name": row.name, "scope": row.scope, "kind": row.kind, "unit": row.unit, "caps": row.caps,
            "current": copy.deepcopy(row.current), "used": row.in_use, "headroom": row.headroom,
            "allows": row.allows, "needed": copy.deepcopy(row.needed), "status": row.status, "why": row.why,
            "fix": row.fix.render() if row.fix else "", "pid": row.pid}


def _data(value):
    """A field as asdict() gives it (a copy; lists of dataclasses as lists of dicts)."""
    if isinstance(value, list):
        return [asdict(v) if is_dataclass(v) else copy.deepcopy(v) for v in value]
    return asdict(value) if is_dataclass(value) else copy.deepcopy(value)


@dataclass
class Diagnosis:
    pids: List[int]
    processes: List[Dict[str, Any]]
    target: Optional[int]
    netns: Optional[str]                 # ip netns name of the process's namespace, if any
    own_netns: bool                      # the process shares tuner's network namespace
    max_connections: Optional[int]
    binding_limit: Optional[str]
    binding_pids: List[int]
    reachable: Optional[bool]
    verdict: str
    connections: Dict[str, Any]
    listeners: List[Dict[str, Any]]
    limits: List[Row]          # capacity's rows: scope host | netns | process | cgroup | pid N | listener | application
    fix: List[Suggestion]
    notes: List[str]
    thread_per_connection: bool
    memory: Dict[str, Any]
    unreadable: List[str] = field(default_factory=list)
    # The application's own cap (an adapter's AppCap as a dict, its fix sized by
    # diagnose), None when no adapter knows the process and --app-limit was not given.
    application: Optional[Dict[str, Any]] = None
    # With --cost: what a connection costs the service and where its memory stops it
    # (tuner.cost.project over a step run's rows, its limits read now), else None.
    service_cost: Optional[Dict[str, Any]] = None
    # When the application's cap binds and it closes idle keep-alive connections before
    # it (nginx): {low, high} of the idle ones it keeps; max_connections stays the ceiling
    # for busy connections.
    max_idle_connections: Optional[Dict[str, int]] = None

    def to_dict(self) -> dict:
        out = {"schema": SCHEMA}
        for f in fields(self):
            value = getattr(self, f.name)
            # The fixes are spelled by their own to_dict (tuner.suggestion), the rest as data.
            out[f.name] = ([s.to_dict() for s in value] if f.name == "fix" else
                           [limit_dict(r) for r in value] if f.name == "limits" else _data(value))
        return out

    def limit(self, name: str, pid: Optional[int] = None) -> Row:
        return next(r for r in self.limits if r.name == name and (pid is None or r.pid == pid))


# ---------------------------------------------------------------- reading

def resolve(pids: Sequence[int] = (), port: Optional[int] = None, unit: Optional[str] = None,
            netns: Optional[str] = None) -> List[int]:
    """The service's processes from exactly one of --pid (repeatable), --port, --unit."""
    given = sum(bool(x) for x in (pids, port is not None, unit))
    if given != 1:
        raise UsageError("name the service with one of --pid PID, --port PORT or --unit NAME")
    if netns is not None and port is None:
        raise UsageError("--netns only chooses where --port is looked up; a --pid or --unit "
                         "is read in its own network namespace")
    if pids:
        for pid in pids:
            service.check_pid(pid)
        return sorted(set(pids))
    if port is not None:
        return service.pids_by_port(port, netns)
    return service.pids_by_unit(unit)


def diagnose(pids: Sequence[int] = (), port: Optional[int] = None, unit: Optional[str] = None,
             netns: Optional[str] = None, target: Optional[int] = None,
             app_limit: Optional[int] = None, cost_rows: Optional[List[dict]] = None) -> "Diagnosis":
    """Read the service and evaluate every limit for it (see the module docstring)."""
    procs = [service.read_process(pid) for pid in resolve(pids, port, unit, netns)]
    if len({p.netns_inode for p in procs}) > 1:
        raise UsageError("these processes live in different network namespaces: diagnose one "
                         "namespace's processes at a time")
    first = procs[0].pid
    own = _own_listeners(procs)
    procs, supervisors = _without_supervisors(procs, own)
    with service.in_netns_of(first):
        conns = service.counted([l.port for l in own], own)
    snap = readings.take_snapshot(knobs.sysctl_names("host") + list(knobs.THREAD_SYSCTLS),
                                  knobs.sysctl_names("netns"), enter=service.in_netns_of(first))
    app = read_app(procs + supervisors, own, app_limit)
    # Here: only --cost fits a slope and reads the memory limits (tuner.cost).
    from tuner import cost

    spent = None if cost_rows is None else cost.project(cost_rows, [p.pid for p in procs], held=conns.held,
                                                       own=_own_caps(app))
    diag = evaluate(procs, own, conns, snap, target, _task_count(), app, spent)
    for p in supervisors:
        diag.notes.append(f"pid {p.pid} ({p.name}) holds the listeners its children accept on "
                          f"(a pre-fork master): it is not counted in the service's capacity")
    return diag


def _own_caps(app: Optional[App]) -> Optional[List[dict]]:
    """The application's own-counted memory caps read now (Redis maxmemory-clients), in the
    shape of a step row's service_own; None when its adapter was not asked."""
    from tuner import cost   # only with --cost
    caps = app.memory_caps() if app is not None else None
    return None if caps is None else [cost.own_reading(c) for c in caps if c.used is not None]


def _own_listeners(procs) -> List[Any]:
    """The listening sockets these processes hold (sock_diag's listeners matched to the
    socket inodes of their low descriptors), each with the pids that hold it."""
    with service.in_netns_of(procs[0].pid):
        found = service.listeners()
    listening_inodes = {l.inode for l in found}
    for p in procs:
        if not listening_inodes & set(p.socket_inodes):
            service.scan_further(p)
    inode_to_pids: Dict[int, List[int]] = {}
    for p in procs:
        for ino in p.socket_inodes:
            inode_to_pids.setdefault(ino, []).append(p.pid)
    own = [l for l in found if l.inode in inode_to_pids]
    for l in own:
        l.pids = sorted(inode_to_pids[l.inode])
    return own


def _without_supervisors(procs, own):
    """(the processes that hold connections, the pre-fork masters set aside)."""
    if len(procs) < 2 or not own:
        return procs, []
    # A unit's helper processes (a shell wrapper, a log shipper) hold no listener.
    listening = {pid for l in own for pid in l.pids}
    procs = [p for p in procs if p.pid in listening]
    # A pre-fork master (nginx, gunicorn) holds the listeners its children accept
    # on; its own descriptors hold no connections, so it is not part of the sum.
    holders = {p.pid: set(p.socket_inodes) for p in procs}
    supervisors = [p for p in procs if any(q.ppid == p.pid and holders[p.pid] & holders[q.pid]
                                           for q in procs)]
    if supervisors and len(supervisors) < len(procs):
        return [p for p in procs if p not in supervisors], supervisors
    return procs, []


def _service_root(procs, own) -> int:
    """The pid the application's adapter reads: the service's process whose parent is not
    of the service (a pre-fork master, or the one process), or that parent when it holds
    the same listeners (workers named by --pid: their master reads the config)."""
    pids = {p.pid for p in procs}
    root = next((p for p in procs if p.ppid not in pids), procs[0])
    if root.ppid <= 1:
        return root.pid
    try:
        parent = service.read_process(root.ppid)
    except (TunerError, OSError):
        return root.pid
    return parent.pid if set(parent.socket_inodes) & {l.inode for l in own} else root.pid


def read_app(procs, own, app_limit: Optional[int] = None) -> Optional[App]:
    """The application's own cap: its adapter's reading, or what --app-limit says."""
    root = _service_root(procs, own)
    unit = next((p.unit for p in procs if p.unit), None)
    view = apps.base.view(root, [(l.address, l.port) for l in own], unit=unit)
    adapter = apps.find(view)
    if app_limit is not None:
        name = adapter.name if adapter else "application"
        return App(AppCap(name, f"cap {app_limit:,}", app_limit, "--app-limit", apps.base.GIVEN,
                          "the cap given with --app-limit (tuner does not read it)"))
    if adapter is None:
        return None
    try:
        cap = adapter.read(view)
    except (OSError, ValueError, apps.Untrusted) as e:
        cap = apps.base.unknown(adapter.name, "cap", "?", f"reading it failed: {e}")
    return App(cap, lambda want: adapter.fix(view, cap, want), lambda: adapter.memory_caps(view),
               lambda kind, want, per: adapter.memory_fix(view, kind, want, per))


def _task_count() -> Optional[int]:
    try:
        return procfs.task_count()
    except (OSError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------- the model

def _shares(total: int, weights: List[int]) -> List[int]:
    """Split `total` over processes in proportion to `weights`, summing exactly to it.

    sock_diag says which port a connection is on, not which process of a pre-fork or
    SO_REUSEPORT group holds it; descriptors in use are the best weight we have (a
    worker with more descriptors holds more connections), and the sum is exact."""
    if len(weights) == 1:
        return [total]
    wsum = sum(weights) or len(weights)
    raw = [total * (w or 1) / wsum for w in weights]
    out = [math.floor(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - out[i], reverse=True)[:total - sum(out)]:
        out[i] += 1
    return out


def _process_snapshot(snap, proc, held: int, tpc: Optional[int], host_tasks,
                      accept_fds: int = 0) -> readings.Snapshot:
    cg = proc.cgroup_memory or {}
    return replace(snap, nofile_soft=proc.nofile_soft, nofile_hard=proc.nofile_hard,
                   cap_sys_resource=proc.cap_sys_resource,
                   cgroup_memory={"version": cg.get("version"), "limit": cg.get("limit"),
                                  "usage": cg.get("usage")},
                   # Descriptors not spent on connections: the listener, logs, jars, epoll.
                   # and what the application opens for a moment on each accept.
                   fds_reserved=max(proc.fds - held, 0) + accept_fds,
                   process={"pid": proc.pid, "held": held, "threads": proc.threads,
                            "maps": proc.maps, "host_tasks": host_tasks,
                            "threads_per_connection": tpc, "cgroup_pids": proc.cgroup_pids})


def _used(knob, row, procs, proc=None) -> Optional[int]:
    """What is in use of a limit now: for a per-process row, what the process uses of it
    (knob.service_use: its descriptors); else the knob table's own usage rule where it
    has one (open files, sockstat, conntrack, cgroups, tasks, mappings); else what the
    service's processes use of it together (their epoll watches: this service's share of
    the user's)."""
    if proc is not None and knob.service_use:
        return getattr(proc, knob.service_use)
    if row.in_use is not None:
        return row.in_use
    if knob.service_use and any(getattr(p, knob.service_use) is not None for p in procs):
        return sum(getattr(p, knob.service_use) or 0 for p in procs)
    return None


@dataclass
class App:
    """The application's own cap as its adapter read it (or --app-limit said), and how to
    size its fix: `fix_for(want)` asks the adapter for the change that holds `want`."""

    cap: AppCap
    fix_for: Callable[[int], Optional[AppFix]] = lambda want: None
    # Its own memory caps read now (None: not read, a step run's readings stand), and the
    # setting that lets one of a kind hold `want` at `per_connection` bytes each.
    memory_caps: Callable[[], Optional[list]] = lambda: None
    memory_fix: Callable[[str, int, float], Optional[AppFix]] = lambda kind, want, per: None


@dataclass
class Stop(capacity.Stop):
    """Where the service stops and why (capacity.Stop: the figure, the limit that sets
    it, the processes it binds), and a full accept queue that stops it first."""

    stalled_accepting: bool = False
    full: List[Any] = field(default_factory=list)


def _thread_per_connection(procs, shares: List[int], held_total: int):
    """Per process, and for the service as a whole: 1 where each connection has a thread
    of its own (threads >= connections held, above THREAD_PER_CONNECTION_MIN)."""
    each = [1 if held >= THREAD_PER_CONNECTION_MIN and p.threads >= held else None
            for p, held in zip(procs, shares)]
    service_tpc = 1 if (held_total >= THREAD_PER_CONNECTION_MIN
                        and sum(p.threads for p in procs) >= held_total) else None
    return each, service_tpc


def _reports(procs, shares, held_total, snap, target, host_tasks, accept_fds: int = 0):
    """The capacity model's rows for each process, measured with that process's own
    figures (judged later, for the service as a whole): (process, ctx, rows, memory)."""
    tpcs, service_tpc = _thread_per_connection(procs, shares, held_total)
    out = []
    for p, held, tpc in zip(procs, shares, tpcs):
        ctx = Ctx(_process_snapshot(snap, p, held, tpc or service_tpc, host_tasks, accept_fds),
                  role="server", target=target)
        rows, stop = capacity.measure(ctx, knobs.ALL)
        out.append((p, ctx, rows, capacity.memory_for(ctx, stop)))
    return out, any(tpcs) or bool(service_tpc)


def _as_used(row: Row, used: Optional[int], **changes) -> Row:
    """A model's row with what the service uses of it (and how full that keeps it)."""
    limit = limit_value(row.current)
    return replace(row, in_use=used, utilization=None if used is None or not limit else used / limit, **changes)


def _knob_rows(reports, procs, held_total: int) -> List[tuple]:
    """(row, ctx, memory) per knob: a per-process knob one row for each of the service's
    processes; a knob they share (the host's, the namespace's, the cgroup's) one row,
    read through the first process."""
    out: List[tuple] = []
    for i, knob in enumerate(knobs.ALL):
        if knob.each_process:
            out += [(_as_used(rows[i], _used(knob, rows[i], procs, p), scope=f"pid {p.pid}", pid=p.pid), ctx, mem)
                    for p, ctx, rows, mem in reports]
            continue
        _, ctx, rows, mem = reports[0]
        r = rows[i]
        allows = r.allows
        if allows is not None and knob.net_of_use:
            allows += held_total    # left for anyone, plus what the service holds
        out.append((_as_used(r, _used(knob, r, procs), allows=allows), ctx, mem))
    return out


def _listener_full(l) -> bool:
    return l.backlog > 0 and l.queued >= l.backlog


def _backlog_rows(own_listeners, snap) -> List[Row]:
    """One row per listener: its accept queue, the application's own listen() backlog."""
    cap = knobs.backlog_cap()
    somaxconn = snap.int(cap.name)
    return [_as_used(Row(
        LISTEN_BACKLOG, "application", LISTENER_ROW, "connections", "bursts", [l.backlog], None, None, "",
        f"Accept queue of {l.address}:{l.port} (ss Send-Q): min(the backlog the application "
        f"passed to listen(), {cap.name} {somaxconn if somaxconn is not None else '?'} "
        f"when it called listen()); connects completed beyond it while the server does not "
        f"accept are dropped and retried a second later (ListenOverflows).",
        listener_row_fix(l.backlog, somaxconn, cap)), l.queued)
        for l in own_listeners]


def _app_row(app: Optional[App], held_total: int, target: Optional[int]) -> Optional[Row]:
    """The application's own cap as a row of the table (scope "application")."""
    if app is None or app.cap.capless:
        return None
    c = app.cap
    why = c.why + "".join(f"; {u}" for u in c.unread) + (
        f" ({APP_LIMIT_HINT})" if not c.known else "")
    return _as_used(Row(c.label, "application", APPLICATION_ROW, "connections", CAPS_CONNECTIONS,
                        [c.allows] if c.known else None,
                        [target] if c.known and target is not None and c.allows < target else None,
                        c.allows, "", why), held_total)


def _process_stops(rows: List[Row]) -> Dict[int, tuple]:
    """Each process stops at its own tightest PROCESS_BINDING limit: {pid: (allows, name)}."""
    stops: Dict[int, tuple] = {}
    for name in PROCESS_BINDING:
        for row in rows:
            if row.name == name and row.pid is not None and row.allows is not None:
                stops[row.pid] = capacity.tightest([stops.get(row.pid), (row.allows, name)])
    return stops


def _candidates(rows: List[Row], shared: List[Row], app_row: Optional[Row]) -> List[tuple]:
    """(connections, limit, pids) for every way the service can stop: its application's
    own cap first (it wins a tie: it is the one the service names), then its processes
    together (the service holds the sum of each one's stop), then each shared limit."""
    out = []
    if app_row is not None and app_row.allows is not None:
        out.append((app_row.allows, app_row.name, []))
    stops = _process_stops(rows)
    if stops:
        names = [v[1] for v in stops.values()]
        out.append((sum(v[0] for v in stops.values()), max(set(names), key=names.count), sorted(stops)))
    out += [(r.allows, r.name, []) for r in shared if r.allows is not None]
    return out


def _accept_stall(stop: Stop, own_listeners, snap, held_total: int) -> Stop:
    """A full accept queue while descriptors and the rest still have room: the process
    has stopped accepting (or accepts slower than clients arrive); its backlog is what
    callers hit now."""
    full = [l for l in own_listeners if _listener_full(l)]
    if not full or stop.at is None or stop.at <= held_total:
        return stop
    cap = knobs.backlog_cap()
    somaxconn = snap.int(cap.name)
    limit = LISTEN_BACKLOG if somaxconn is None or full[0].backlog < somaxconn else cap.name
    return Stop(stop.at, limit, sorted({pid for l in full for pid in l.pids}), stop.target,
                stalled_accepting=True, full=full)


def _idle(app: Optional[App], app_row: Optional[Row], stop: Stop) -> Optional[Dict[str, int]]:
    """The idle keep-alive range when the application's cap is what binds (AppCap.idle)."""
    if app is None or app.cap.idle is None or app_row is None or stop.limit != app_row.name:
        return None
    return {"low": app.cap.idle[0], "high": app.cap.idle[1]}


def _memory_row(spent: Optional[dict], held_total: int) -> Optional[Row]:
    """Where the service's memory stops it (tuner.cost.project's `service` object) as a
    row: the limit that binds first, with its bytes and the connections it allows; with
    no measured slope a row of unknown allowance, not of zero."""
    if spent is None:
        return None
    limit = spent["memory_limit"]
    name = f"memory ({spent['binding']})" if spent["binding"] else "memory"
    return _as_used(Row(name, "memory", MEMORY_ROW, "bytes", CAPS_CONNECTIONS,
                        [limit["bytes"]] if limit else None, None, spent["projected_max"], "",
                        spent["sentence"] + "."), held_total)


def evaluate(procs, own_listeners, conns, snap, target: Optional[int],
             host_tasks: Optional[int] = None, app: Optional[App] = None,
             spent: Optional[dict] = None) -> Diagnosis:
    """The model over what was read: pure, so recorded figures test it as well."""
    held_total = conns.held
    shares = _shares(held_total, [p.fds for p in procs])
    reports, tpc_any = _reports(procs, shares, held_total, snap, target, host_tasks,
                                app.cap.accept_fds if app is not None else 0)
    judged = _knob_rows(reports, procs, held_total)
    rows = [r for r, _, _ in judged]
    shared = [r for r in rows if r.pid is None and r.caps == CAPS_CONNECTIONS]
    others = _backlog_rows(own_listeners, snap)
    app_row = _app_row(app, held_total, target)
    others += [app_row] if app_row else []
    memory_row = _memory_row(spent, held_total)
    others += [memory_row] if memory_row else []
    best = capacity.tightest(_candidates(rows + others, shared + ([memory_row] if memory_row else []), app_row))
    stop = _accept_stall(Stop(*best, target=target) if best else Stop(None, None, [], target),
                         own_listeners, snap, held_total)
    reachable = None if target is None or stop.at is None else stop.at >= target
    # The model judges every row once, for the service as a whole (capacity.judge).
    for row, ctx, mem in judged:
        capacity.judge(ctx, knobs.BY_NAME_ALL[row.name], row, stop, mem.get("worst_fits_memory"), running=True)
    for row in others:
        capacity.judge_other(row, stop)
    rows += others
    netns_name = netns.name_of(procs[0].netns_inode)
    diag = Diagnosis(
        pids=[p.pid for p in procs], processes=[p.to_dict() for p in procs], target=target,
        netns=netns_name, own_netns=netns_name is None,
        max_connections=stop.at, binding_limit=stop.limit, binding_pids=stop.pids,
        reachable=reachable, verdict="",
        connections={**conns.to_dict(), "shares": dict(zip([p.pid for p in procs], shares))},
        listeners=[l.to_dict() for l in own_listeners], limits=rows, fix=[], notes=[],
        thread_per_connection=tpc_any,
        memory={k: reports[0][3][k] for k in ("source", "idle_bytes_per_connection",
                                               "worst_bytes_per_connection")},
        unreadable=list(snap.unreadable),
        application=None if app is None else app.cap.to_dict(), service_cost=spent,
        max_idle_connections=_idle(app, app_row, stop))
    diag.verdict = _verdict(diag, procs, stop)
    _finish(diag, procs, snap, app)
    return diag


def _client_notes(d: Diagnosis) -> List[str]:
    """Where the clients' side decides: one peer address reaches one server ip:port at
    most once per port of its ip_local_port_range."""
    c = d.connections
    if c["peers"] == 1 and c["held"] >= PEER_NOTE_MIN:
        return [f"all {c['held']:,} connections come from one peer address: one client "
                f"address reaches one server ip:port at most once per port of its "
                f"ip_local_port_range (28,232 by default), whatever this server allows; more "
                f"client addresses go further ('tuner report --role client' on the client)"]
    return []


# ---------------------------------------------------------------- words

def _who(procs, pids: List[int]) -> str:
    chosen = [p for p in procs if p.pid in pids] or procs
    if len(chosen) == 1:
        return f"process {chosen[0].pid} ({chosen[0].name})"
    names = sorted({p.name for p in chosen})
    return f"{len(chosen)} processes ({', '.join(names)}: {', '.join(str(p.pid) for p in chosen)})"


def _accept_stall_words(d: Diagnosis, stop: Stop) -> str:
    l = stop.full[0]
    return (f"{d.binding_limit}: the accept queue of {l.address}:{l.port} is full ({l.queued:,} of "
            f"{l.backlog:,}) while its descriptors and the other limits still have room, so the "
            f"application is not accepting (or accepts slower than clients arrive); it holds "
            f"{d.connections['held']:,} now")


def _descriptor_words(d: Diagnosis, procs) -> str:
    b = d.binding_limit
    rows = [d.limit(b, pid) for pid in d.binding_pids]
    values = sorted({r.current[0] for r in rows})
    other = sum(r.in_use for r in rows) - sum(d.connections["shares"][pid] for pid in d.binding_pids)
    value = f"{values[0]:,}" if len(values) == 1 else "/".join(f"{v:,}" for v in values)
    spare = (d.application or {}).get("accept_fds", 0)
    return (f"{b} {value} of {_who(procs, d.binding_pids)}, {other:,} descriptor"
            f"{'' if other == 1 else 's'} already used for other files"
            + (f", {spare} kept free for what it opens on each accept" if spare else ""))


def _thread_words(d: Diagnosis, procs) -> str:
    b = d.binding_limit
    knob, r = knobs.BY_NAME_ALL[b], d.limit(b, d.binding_pids[0])
    return (f"{b} {r.current[0]:,} of {_who(procs, d.binding_pids)}: one thread per "
            f"connection, {knob.per_thread} {knob.unit} each, {r.in_use:,} {knob.unit} in use")


def _limit_words(d: Diagnosis) -> str:
    r = next(r for r in d.limits if r.name == d.binding_limit)
    if r.scope == "application":
        return f"{r.name}, {d.connections['held']:,} in use"
    if r.scope == MEMORY_ROW:
        return d.service_cost["sentence"]
    used = "" if r.in_use is None else f", {r.in_use:,} in use"
    per_thread = " (one thread per connection)" if r.unit in ("threads", "pids", "tasks") else ""
    what = f"{r.name} {_value(r.current)}{per_thread}{used}"
    if r.scope == "netns" and not d.own_netns:
        what += f" in the process's network namespace{' ' + d.netns if d.netns and d.netns != '?' else ''}"
    return what


def _what_binds(d: Diagnosis, procs, stop: Stop) -> str:
    """The binding limit in words, each kind of limit its own way."""
    b = d.binding_limit
    knob = knobs.BY_NAME_ALL.get(b)
    if stop.stalled_accepting:
        return _accept_stall_words(d, stop)
    if b == "RLIMIT_NOFILE.soft":
        return _descriptor_words(d, procs)
    if knob is not None and knob.per_thread and knob.each_process:
        return _thread_words(d, procs)
    return _limit_words(d)


def _unknown_app_words(d: Diagnosis) -> str:
    """An application cap that could not be read: the figure is an upper bound."""
    a = d.application
    if a is None or a["allows"] is not None or a["sureness"] != apps.base.UNKNOWN:
        return ""
    return (f"; at most: {a['app']}'s own cap was not read ({'; '.join(a['unread'])}): "
            f"{APP_LIMIT_HINT}")


def peer_closed_words(n: int) -> str:
    """The dead connections' sentence (verdict, notes, metrics' help say it alike)."""
    return (f"{n:,} descriptor{'s are sockets' if n != 1 else ' is a socket'} the peer closed: "
            f"the service does not close {'them' if n != 1 else 'it'}")


def _dead_words(d: Diagnosis) -> str:
    n = d.connections.get("peer_closed", 0)
    return f"; {peer_closed_words(n)}" if n >= PEER_CLOSED_MIN else ""


def _verdict(d: Diagnosis, procs, stop: Stop) -> str:
    if d.max_connections is None:
        return "no limit could be evaluated (see the table)"
    head = (f"stalls now at {d.connections['held']:,} connections" if stop.stalled_accepting
            else f"stalls at {d.max_connections:,} connections")
    idle = d.max_idle_connections
    if idle and not stop.stalled_accepting:
        # Which figure the verdict gives: busy connections reach the cap; idle keep-alive
        # ones are closed to make room before it (issue 28: 932 held, 1,020 predicted).
        head = (f"stalls at {d.max_connections:,} busy connections (idle keep-alive ones: "
                f"{idle['low']:,}-{idle['high']:,}, closed to make room)")
    dead = d.connections.get("peer_closed", 0)
    if dead >= PEER_CLOSED_MIN and not stop.stalled_accepting:
        # What the operator needs first: the room left now, and that the dead ones are the
        # service's own leak (the limit is not what to raise; closing them gives them back).
        more = max(d.max_connections - d.connections["held"], 0)
        head = f"can take {more:,} more now (its own leak holds {dead:,}), {head}"
    text = f"{head}: {_what_binds(d, procs, stop)}{_dead_words(d)}{_unknown_app_words(d)}"
    if d.target is not None:
        text += (f"; can take {d.target:,}" if d.reachable else f"; cannot take {d.target:,}")
    return text


def _finish(d: Diagnosis, procs, snap, app: Optional[App]) -> None:
    """The words: the application's fix sized for what it should hold, the verdict,
    every fix, the notes."""
    want = app_want(d)
    if app is not None and want is not None:
        f = app.fix_for(want)
        d.application["fix"] = None if f is None else f.to_dict()
    _memory_fix(d, app)
    d.fix = fixes(d, procs, snap)
    d.notes = (_client_notes(d) + (list(app.cap.notes) if app is not None else [])
               + _backlog_note(d))


def _memory_fix(d: Diagnosis, app: Optional[App]) -> None:
    """When the application's own memory cap binds (Redis maxmemory-clients), its adapter's
    setting for the target, else for the application's connection cap, at the bytes per
    connection it counts: service_cost.memory_limit.fix."""
    spent = d.service_cost
    if app is None or spent is None or spent.get("memory_limit") is None or d.binding_limit is None \
            or not d.binding_limit.startswith("memory ("):
        return
    limit = next((l for l in spent["limits"] if l["name"] == spent["binding"]), None)
    want = d.target or app.cap.allows
    if limit is None or not limit.get("kind") or not want or want <= (limit["allows"] or 0):
        return
    f = app.memory_fix(limit["kind"], want, limit["per_connection"])
    spent["memory_limit"]["fix"] = None if f is None else f.to_dict()


def _value(current) -> str:
    if current is None:
        return "-"
    return values(current)


def _backlog_note(d: Diagnosis) -> List[str]:
    """A listener at its runtime's default backlog (its adapter knows it): how to pass more."""
    adapter = apps.ADAPTERS.get((d.application or {}).get("app", ""))
    default = getattr(adapter, "backlog_default", None)
    if default is None or not (default in {l["backlog"] for l in d.listeners}
                               or d.binding_limit == LISTEN_BACKLOG):
        return []
    return [f"{adapter.name} listens with backlog {default:,} unless the program passes one: "
            f"{adapter.backlog_setting}"]
