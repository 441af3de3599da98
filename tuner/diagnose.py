"""`tuner diagnose`: why does this running service stall at N connections?

The same knob table and capacity model as `tuner report`, evaluated for the server
role with the process's own numbers instead of tuner's: its RLIMIT_NOFILE, its
descriptors in use, its cgroup, its network namespace's sysctls, its threads.  The
result is one verdict (the stall point and the limit that sets it), the table of every
limit with what is used of it, and fixes as commands (from the knob table and
`tuner apply`, never restated here).

Library entry point (tuner metrics uses it too):

    from tuner.diagnose import diagnose
    d = diagnose(pids=[4242], target=5000)     # or port=8080, or unit="gateway"
    d.max_connections, d.binding_limit, d.to_dict()   # schema tuner.diagnose/1
"""
from __future__ import annotations

import math
import os
import shlex
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence

from . import capacity, knobs, netns, readings, service
from .errors import UsageError
from .knobs import CAPS_CONNECTIONS, CAPS_PER_PROCESS, Ctx

SCHEMA = "tuner.diagnose/1"
LISTEN_BACKLOG = "listen backlog"      # the application's own limit, named as in the table
# A process running at least this many connections, each with a thread of its own
# (threads >= connections), is taken for thread-per-connection: its thread limits bind.
THREAD_PER_CONNECTION_MIN = 32
PEER_NOTE_MIN = 1000        # below this, one client address decides nothing
# Limits that cap a running process now (the ceilings above them only matter for raising).
PROCESS_BINDING = tuple(k.name for k in knobs.ALL if k.binds_running)


@dataclass
class Limit:
    """One row of the table: a knob as it applies to this service."""

    name: str
    scope: str                 # host | netns | process | cgroup | pid N | listener
    kind: str
    unit: str
    caps: str
    current: Optional[List[Any]]
    used: Optional[int]
    headroom: Optional[int]
    allows: Optional[int]      # connections this service can hold under this limit alone
    needed: Optional[List[Any]]
    status: str
    why: str
    fix: str = ""
    pid: Optional[int] = None


@dataclass
class Fix:
    command: str               # a command to run, or the setting to change in the application
    why: str
    kind: str = "tuner"        # tuner | sysctl | cgroup | application | unit


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
    limits: List[Limit]
    fix: List[Fix]
    notes: List[str]
    thread_per_connection: bool
    memory: Dict[str, Any]
    unreadable: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **asdict(self)}

    def limit(self, name: str, pid: Optional[int] = None) -> Limit:
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
             netns: Optional[str] = None, target: Optional[int] = None) -> "Diagnosis":
    """Read the service and evaluate every limit for it (see the module docstring)."""
    procs = [service.read_process(pid) for pid in resolve(pids, port, unit, netns)]
    inodes = {p.netns_inode for p in procs}
    if len(inodes) > 1:
        raise UsageError("these processes live in different network namespaces: diagnose one "
                         "namespace's processes at a time")
    first = procs[0].pid
    with service.in_netns_of(first):
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
    supervisors: List[Any] = []
    if len(procs) > 1 and own:
        # A unit's helper processes (a shell wrapper, a log shipper) hold no listener.
        listening = {pid for l in own for pid in l.pids}
        procs = [p for p in procs if p.pid in listening]
        # A pre-fork master (nginx, gunicorn) holds the listeners its children accept
        # on; its own descriptors hold no connections, so it is not part of the sum.
        holders = {p.pid: set(p.socket_inodes) for p in procs}
        supervisors = [p for p in procs if any(q.ppid == p.pid and holders[p.pid] & holders[q.pid]
                                               for q in procs)]
        if supervisors and len(supervisors) < len(procs):
            procs = [p for p in procs if p not in supervisors]
        else:
            supervisors = []
    with service.in_netns_of(first):
        conns = service.counted([l.port for l in own], own)
    snap = readings.take_snapshot(knobs.sysctl_names("host") + list(knobs.THREAD_SYSCTLS),
                                  knobs.sysctl_names("netns"), enter=service.in_netns_of(first))
    host_tasks = _task_count()
    diag = evaluate(procs, own, conns, snap, target, host_tasks)
    for p in supervisors:
        diag.notes.append(f"pid {p.pid} ({p.name}) holds the listeners its children accept on "
                          f"(a pre-fork master): it is not counted in the service's capacity")
    return diag


def _task_count() -> Optional[int]:
    from . import procfs

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


def _process_snapshot(snap, proc, held: int, tpc: Optional[int], host_tasks) -> readings.Snapshot:
    cg = proc.cgroup_memory or {}
    return replace(snap, nofile_soft=proc.nofile_soft, nofile_hard=proc.nofile_hard,
                   cap_sys_resource=proc.cap_sys_resource,
                   cgroup_memory={"version": cg.get("version"), "limit": cg.get("limit"),
                                  "usage": cg.get("usage")},
                   # Descriptors not spent on connections: the listener, logs, jars, epoll.
                   fds_reserved=max(proc.fds - held, 0),
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


def _limit_value(current) -> Optional[int]:
    if not current or not isinstance(current[-1], int):
        return None
    return current[-1] if len(current) > 1 else current[0]


def evaluate(procs, own_listeners, conns, snap, target: Optional[int],
             host_tasks: Optional[int] = None) -> Diagnosis:
    """The model over what was read: pure, so recorded figures test it as well."""
    held_total = conns.held
    shares = _shares(held_total, [p.fds for p in procs])
    tpcs = [1 if held >= THREAD_PER_CONNECTION_MIN and p.threads >= held else None
            for p, held in zip(procs, shares)]
    # One thread per connection when the service as a whole looks that way.
    service_tpc = 1 if (held_total >= THREAD_PER_CONNECTION_MIN
                        and sum(p.threads for p in procs) >= held_total) else None
    table = knobs.ALL
    reports = []
    for p, held, tpc in zip(procs, shares, tpcs):
        psnap = _process_snapshot(snap, p, held, tpc or service_tpc, host_tasks)
        reports.append((p, held, psnap, capacity.evaluate(Ctx(psnap, role="server", target=target), table)))

    rows: List[Limit] = []
    per_process: Dict[str, List[Limit]] = {}
    shared: List[Limit] = []
    for i, knob in enumerate(table):
        # The cgroup's memory limit is one row: one cgroup for the service's processes.
        if knob.each_process:
            for p, held, psnap, rep in reports:
                r = rep.rows[i]
                used = _used(knob, r, procs, p)
                lim = _limit_value(r.current)
                row = Limit(r.name, f"pid {p.pid}", r.kind, r.unit, r.caps, r.current, used,
                            None if used is None or lim is None else lim - used, r.allows,
                            r.needed, r.status, r.why, r.fix, p.pid)
                per_process.setdefault(knob.name, []).append(row)
                rows.append(row)
        else:
            p, held, psnap, rep = reports[0]
            r = rep.rows[i]
            used = _used(knob, r, procs)
            lim = _limit_value(r.current)
            allows = r.allows
            if allows is not None and knob.net_of_use:
                allows += held_total    # left for anyone, plus what the service holds
            row = Limit(r.name, r.scope, r.kind, r.unit, r.caps, r.current, used,
                        None if used is None or lim is None else lim - used, allows,
                        r.needed, r.status, r.why, r.fix)
            rows.append(row)
            if knob.caps == CAPS_CONNECTIONS:
                shared.append(row)

    cap = knobs.backlog_cap()
    somaxconn = snap.int(cap.name)
    for l in own_listeners:
        full = l.backlog > 0 and l.queued >= l.backlog
        rows.append(Limit(
            LISTEN_BACKLOG, "listener", "application", "connections", "bursts", [l.backlog],
            l.queued, l.backlog - l.queued, None, None, "full" if full else "ok",
            f"Accept queue of {l.address}:{l.port} (ss Send-Q): min(the backlog the application "
            f"passed to listen(), {cap.name} {somaxconn if somaxconn is not None else '?'} "
            f"when it called listen()); connects completed beyond it while the server does not "
            f"accept are dropped and retried a second later (ListenOverflows).",
            "raise the backlog the application passes to listen()" if somaxconn and l.backlog < somaxconn
            else f"raise {cap.name} (tuner apply), then the application must listen() again"))

    # Each process stops at its own tightest limit; the service holds their sum.
    per_pid_stop: Dict[int, tuple] = {}
    for name in PROCESS_BINDING:
        for row in per_process.get(name, []):
            if row.allows is not None and (row.pid not in per_pid_stop or row.allows < per_pid_stop[row.pid][0]):
                per_pid_stop[row.pid] = (row.allows, name)
    candidates = []
    if per_pid_stop:
        total = sum(v[0] for v in per_pid_stop.values())
        names = [v[1] for v in per_pid_stop.values()]
        candidates.append((total, max(set(names), key=names.count), sorted(per_pid_stop)))
    for row in shared:
        if row.allows is not None:
            candidates.append((row.allows, row.name, []))
    max_now, binding, binding_pids = min(candidates, key=lambda c: c[0]) if candidates else (None, None, [])

    # A full accept queue while descriptors and the rest still have room: the process
    # has stopped accepting (or accepts slower than clients arrive); its backlog is what
    # callers hit now.
    full = [l for l in own_listeners if l.backlog > 0 and l.queued >= l.backlog]
    stalled_accepting = bool(full) and max_now is not None and max_now > held_total
    if stalled_accepting:
        binding = (LISTEN_BACKLOG if somaxconn is None or full[0].backlog < somaxconn
                   else cap.name)
        binding_pids = sorted({pid for l in full for pid in l.pids})

    reachable = None if target is None or max_now is None else max_now >= target
    for row in rows:
        if row.name == binding and (not binding_pids or row.pid in binding_pids or row.pid is None) \
                and row.status not in ("n/a", "unreadable") and (target is None or not reachable):
            row.status = "binds" if row.name != LISTEN_BACKLOG else row.status
        elif row.status == "binds":
            row.status = "ok" if row.needed is None else "raise"
        if target is not None and row.allows is not None and row.allows < target and row.status == "ok" \
                and row.caps in (CAPS_CONNECTIONS, CAPS_PER_PROCESS) and row.name in \
                (PROCESS_BINDING + tuple(r.name for r in shared)):
            row.status = "short"

    tpc_any = any(tpcs) or bool(service_tpc)
    netns_name = netns.name_of(procs[0].netns_inode)
    diag = Diagnosis(
        pids=[p.pid for p in procs], processes=[p.to_dict() for p in procs], target=target,
        netns=netns_name, own_netns=netns_name is None,
        max_connections=max_now, binding_limit=binding, binding_pids=binding_pids,
        reachable=reachable, verdict="",
        connections={**conns.to_dict(), "shares": dict(zip([p.pid for p in procs], shares))},
        listeners=[l.to_dict() for l in own_listeners], limits=rows, fix=[], notes=[],
        thread_per_connection=tpc_any,
        memory={k: reports[0][3].memory[k] for k in ("source", "idle_bytes_per_connection",
                                                      "worst_bytes_per_connection")},
        unreadable=list(snap.unreadable))
    diag.verdict = _verdict(diag, procs, stalled_accepting, full)
    diag.fix = _fixes(diag, procs, snap)
    diag.notes = _runtime_notes(diag, procs) + _client_notes(diag)
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


def _verdict(d: Diagnosis, procs, stalled_accepting: bool, full) -> str:
    if d.max_connections is None:
        return "no limit could be evaluated (see the table)"
    head = f"stalls at {d.max_connections:,} connections"
    b = d.binding_limit
    if stalled_accepting:
        l = full[0]
        what = (f"{b}: the accept queue of {l.address}:{l.port} is full ({l.queued:,} of {l.backlog:,}) while its descriptors and "
                f"the other limits still have room, so the application is not accepting "
                f"(or accepts slower than clients arrive); it holds {d.connections['held']:,} now")
        head = f"stalls now at {d.connections['held']:,} connections"
    elif b in ("RLIMIT_NOFILE.soft",):
        rows = [d.limit(b, pid) for pid in d.binding_pids]
        values = sorted({r.current[0] for r in rows})
        other = sum(r.used for r in rows) - sum(d.connections["shares"][pid] for pid in d.binding_pids)
        value = f"{values[0]:,}" if len(values) == 1 else "/".join(f"{v:,}" for v in values)
        what = (f"{b} {value} of {_who(procs, d.binding_pids)}, {other:,} descriptor"
                f"{'' if other == 1 else 's'} already used for other files")
    elif b in knobs.BY_NAME_ALL and knobs.BY_NAME_ALL[b].per_thread and knobs.BY_NAME_ALL[b].each_process:
        knob, r = knobs.BY_NAME_ALL[b], d.limit(b, d.binding_pids[0])
        what = (f"{b} {r.current[0]:,} of {_who(procs, d.binding_pids)}: one thread per "
                f"connection, {knob.per_thread} {knob.unit} each, {r.used:,} {knob.unit} in use")
    else:
        r = next(r for r in d.limits if r.name == b)
        used = "" if r.used is None else f", {r.used:,} in use"
        per_thread = " (one thread per connection)" if r.unit in ("threads", "pids", "tasks") else ""
        what = f"{b} {_value(r.current)}{per_thread}{used}"
        if r.scope == "netns" and not d.own_netns:
            what += f" in the process's network namespace{' ' + d.netns if d.netns and d.netns != '?' else ''}"
    text = f"{head}: {what}"
    if d.target is not None:
        text += (f"; can take {d.target:,}" if d.reachable else f"; cannot take {d.target:,}")
    return text


def _value(current) -> str:
    if current is None:
        return "-"
    from .numfmt import values

    return values(current)


def _apply_command(d: Diagnosis, n: int, pids: Sequence[int] = ()) -> str:
    parts = ["tuner", "apply"] + [x for pid in pids for x in ("--pid", str(pid))]
    parts += ["--target", str(n), "--role", "server"]
    if d.netns and d.netns != "?":
        parts += ["--netns", d.netns]
    return " ".join(shlex.quote(p) for p in parts)


def _fixes(d: Diagnosis, procs, snap) -> List[Fix]:
    from .settings import kind

    def sysctl_command(name: str, value: str, netns) -> str:
        return kind("sysctl").command(netns, {"name": name}, value)

    out: List[Fix] = []
    target = d.target
    soft_rows = [r for r in d.limits if r.name == "RLIMIT_NOFILE.soft"]
    hard_rows = {r.pid: r for r in d.limits if r.name == "RLIMIT_NOFILE.hard"}
    # What the hard limits allow when every soft limit is raised to them.
    ceiling = sum(hard_rows[r.pid].allows or 0 for r in soft_rows)
    fd_binds = d.binding_limit == "RLIMIT_NOFILE.soft" or any(r.needed for r in soft_rows)
    if fd_binds:
        raisable = [r.pid for r in soft_rows if r.current[0] < hard_rows[r.pid].current[0]]
        want = target if target is not None else ceiling
        if raisable and want:
            out.append(Fix(_apply_command(d, want, raisable),
                           f"raises RLIMIT_NOFILE.soft of the running process"
                           f"{'es' if len(raisable) > 1 else ''} (prlimit, no restart), up to the "
                           f"hard limit; with it the service holds up to {min(want, ceiling):,}"))
        if target is not None and ceiling < target or not raisable:
            for r in hard_rows.values():
                if r.fix:
                    out.append(Fix(r.fix, f"the hard limit {r.current[0]:,} of pid {r.pid} holds "
                                          f"{r.allows:,}: raising it needs CAP_SYS_RESOURCE or a "
                                          f"restart with a higher limit; or shard across processes",
                                   "unit"))
                    break
        units = sorted({p.unit for p in procs if p.unit})
        for unit in units:
            out.append(Fix(" ".join(["tuner", "apply", "--persist", "--unit", shlex.quote(unit),
                                     "--target", str(want or ceiling), "--role", "server"]),
                           f"LimitNOFILE= in a drop-in of {unit}, so a restart keeps the limit", "unit"))
    # Host and namespace sysctls the target needs: one tuner apply writes them all.
    sysctls = [r for r in d.limits if r.kind == "sysctl" and r.needed is not None
               and r.name in knobs.BY_NAME and knobs.BY_NAME[r.name].writable]
    if target is not None and sysctls and not any(f.command.startswith("tuner apply --pid") for f in out):
        out.append(Fix(_apply_command(d, target),
                       "raises " + ", ".join(dict.fromkeys(r.name for r in sysctls))
                       + f" to what {target:,} connections need"))
    # Process-only limits (threads, mappings, pids cgroup): the knob's own fix.
    for r in d.limits:
        if r.name not in {k.name for k in knobs.PROCESS_KNOBS}:
            continue
        wanted = r.needed[0] if r.needed else None
        if wanted is None and r.name == d.binding_limit:
            wanted = None  # nothing to size without a target: say what binds
        if r.name == "cgroup pids.max" and (r.needed or r.name == d.binding_limit):
            path = (procs[0].cgroup_pids or {}).get("path")
            if path and wanted:
                out.append(Fix(f"echo {wanted} > {shlex.quote(os.path.join(path, 'pids.max'))}",
                               r.fix, "cgroup"))
            else:
                out.append(Fix(r.fix, f"{r.name} binds", "cgroup"))
        elif r.kind == "sysctl" and wanted:
            out.append(Fix(sysctl_command(r.name, str(wanted), None),
                           f"{r.name} for {target:,} thread-per-connection connections", "sysctl"))
        elif r.name == d.binding_limit and r.kind == "sysctl":
            out.append(Fix(f"tuner diagnose --pid {' --pid '.join(map(str, d.pids))} --target N",
                           f"{r.name} binds; --target N prints the value N connections need",
                           "sysctl"))
    # Memory and other limits tuner cannot change.
    for r in d.limits:
        knob = knobs.BY_NAME.get(r.name)
        if knob and not knob.writable and knob.fix and r.name == d.binding_limit and knob.scope != "process":
            out.append(Fix(knob.fix, f"{r.name} binds", "host"))
    # The accept queue: the application's own setting (or the knob that caps it first).
    cap = knobs.backlog_cap()
    somaxconn = snap.int(cap.name)
    for l in d.listeners:
        small = target is not None and l["backlog"] < min(target, knobs.MAX_BACKLOG)
        full = l["queued"] >= l["backlog"] > 0
        if not (small or full or d.binding_limit == LISTEN_BACKLOG):
            continue
        if somaxconn is not None and l["backlog"] >= somaxconn:
            if any(f.command.startswith("tuner apply") and "--target" in f.command for f in out):
                out.append(Fix(f"restart the application once {cap.name} is raised",
                               f"the backlog of {l['address']}:{l['port']} ({l['backlog']:,}) is "
                               f"{cap.name} as it was at listen(); only a new listen() "
                               f"gets the larger queue", "application"))
                continue
            out.append(Fix(_apply_command(d, target or 2 * somaxconn),
                           f"the backlog of {l['address']}:{l['port']} ({l['backlog']:,}) is "
                           f"{cap.name}; raise it, then the application must call "
                           f"listen() again (restart it) to get the larger queue"))
        else:
            out.append(backlog_fix(l, somaxconn, procs))
    seen, unique = set(), []
    for f in out:
        if f.command not in seen:
            seen.add(f.command)
            unique.append(f)
    return unique


RUNTIME_BACKLOG = {
    "python": "asyncio: start_server(..., backlog=N) / loop.create_server(..., backlog=N), default 100",
    "node": "Node: server.listen({port, backlog: N}), default 511",
    "java": "Java: ServerSocket(port, N) / ServerSocketChannel.bind(addr, N), default 50",
    "erlang": "Erlang: gen_tcp:listen(Port, [{backlog, N}]), default 5",
}


def backlog_fix(listener: Dict[str, Any], somaxconn: Optional[int], procs) -> Fix:
    """The application's own setting: only it can pass a larger backlog to listen()
    (`somaxconn`: the value of the knob that caps it)."""
    how = [RUNTIME_BACKLOG[rt] for rt in dict.fromkeys(runtime_of(p) for p in procs) if rt in RUNTIME_BACKLOG]
    return Fix(f"listen(fd, N): raise the backlog the application passes for "
               f"{listener['address']}:{listener['port']} (now {listener['backlog']:,}; "
               f"{knobs.backlog_cap().name} {'?' if somaxconn is None else f'{somaxconn:,}'} allows up to that)"
               + (f"; {'; '.join(how)}" if how else ""),
               "only the application sets its listen backlog (a burst beyond it waits a second "
               "for the retransmitted SYN)", "application")


def runtime_of(proc) -> Optional[str]:
    """java | python | node | erlang from the executable or the command line: decoration
    on top of what the kernel shows, never a replacement for it."""
    names = [os.path.basename(proc.exe or "")] + [os.path.basename(a) for a in proc.cmdline[:1]]
    for n in names:
        if n == "java" or n.startswith("java"):
            return "java"
        if n.startswith("python") or n.startswith("pypy"):
            return "python"
        if n in ("node", "nodejs"):
            return "node"
        if n in ("beam.smp", "beam", "erl"):
            return "erlang"
    return None


def _runtime_notes(d: Diagnosis, procs) -> List[str]:
    notes = []
    fd_binds = d.binding_limit == "RLIMIT_NOFILE.soft"
    backlogs = {l["backlog"] for l in d.listeners}
    for p in procs:
        rt = runtime_of(p)
        if rt == "java":
            if "-XX:-MaxFDLimit" in p.cmdline:
                notes.append(f"pid {p.pid} (java) runs with -XX:-MaxFDLimit: the JVM keeps the soft "
                             f"RLIMIT_NOFILE the shell gave it ({p.nofile_soft:,}) instead of raising "
                             f"it to the hard limit ({p.nofile_hard:,}) at start; drop the flag, or "
                             f"raise the limit (the fix above)")
            elif fd_binds:
                notes.append(f"pid {p.pid} (java): the JVM raises its soft RLIMIT_NOFILE to the "
                             f"hard one at start (MaxFDLimit); the hard limit {p.nofile_hard:,} is "
                             f"what binds a restart")
            if 50 in backlogs:
                notes.append("java: ServerSocket/ServerSocketChannel.bind default backlog is 50; "
                             "pass a larger one to bind(addr, backlog)")
        elif rt == "python" and (100 in backlogs or d.binding_limit == LISTEN_BACKLOG):
            notes.append(f"pid {p.pid} (python): asyncio's create_server()/start_server() listen "
                         f"with backlog=100 unless told otherwise: pass backlog=N")
        elif rt == "node" and (511 in backlogs or d.binding_limit == LISTEN_BACKLOG):
            notes.append(f"pid {p.pid} (node): server.listen() uses backlog 511 by default: "
                         f"server.listen({{port, backlog: N}})")
        elif rt == "erlang":
            notes.append(f"pid {p.pid} (erlang): the VM caps its own ports (sockets) with +Q "
                         f"(default 65,536), below RLIMIT_NOFILE if that is higher; "
                         f"gen_tcp:listen takes {{backlog, N}} (default 5)")
    return list(dict.fromkeys(notes))
