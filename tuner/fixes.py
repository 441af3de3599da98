"""The one home that builds every fix (issue 25): the model's rows (`row_fix`) and its
next step, the probe's, `tuner diagnose`'s (one small function per kind of limit, each
deciding whether its limit needs a fix and which command gives it) and its --watch's.

A fix is a `tuner.suggestion.Suggestion`, built here from facts: `tuner apply` (the knob
table's sizing), the setting kinds (a sysctl's own command), the knob table's own fix
(Knob.fix, a Suggestion the table declares), the application's adapter (tuner/apps/:
the config line, the descriptor limit with it, reload or restart).  Nothing here decides
what binds (the capacity model judges every row); nothing elsewhere builds a fix
(tests/test_suggestion.py holds tuner/ to it).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

from tuner import knobs
from tuner.knobs import Knob
from tuner.suggestion import (APPLY, DIAGNOSE, HOST, NETNS, PIDS, PROBE, REPORT, RESTART, ROOT, UNIT, Count,
                              Placeholder, Suggestion, advice, config, setting, tuner, write)

SOFT, HARD = "RLIMIT_NOFILE.soft", "RLIMIT_NOFILE.hard"
LISTEN_BACKLOG = "listen backlog"      # the application's own limit, named as in the table
APP_LIMIT_HINT = "tell tuner the cap with --app-limit N"
# A number of connections the user chooses: a command holding it does not run as written.
N = Placeholder("N")

# ---------------------------------------------------------------- the model's rows (report)

def row_fix(knob: Knob, needed, netns: Optional[str], target: Optional[int],
            shrink: bool = False) -> Optional[Suggestion]:
    """What lifts a row the model rated as asking for something (capacity.ACTION), the
    same step apply would take: the setting kind's own command for the value the target
    needs (as apply's plan prints it), the knob table's fix where tuner cannot change it,
    else the apply that plans the value from a target (`shrink`: with --shrink-buffers,
    for worst-case buffers that do not fit memory). None where nothing tuner knows does."""
    # Here, not at the top: only a report with a sysctl to fix imports the settings package.
    from .settings.sysctl import KIND as writer, text

    if knob.writable and knob.is_sysctl and needed is not None:
        return setting(writer, netns if knob.scope == "netns" else None, knob.name, text(needed))
    if knob.fix:
        return knob.fix
    if not knob.writable:
        return None
    wanted = [("--target", Count(target) if target else N)]
    if shrink:
        wanted.append(("--shrink-buffers", None))
    return tuner(APPLY, *wanted, needs=(ROOT,))


def sizing_report() -> Suggestion:
    """The report that sizes a host for N connections (report's next step without a target)."""
    return tuner(REPORT, ("--target", N))


def planned_apply(target: Optional[int], role: str, netns: Optional[str]) -> Suggestion:
    """apply's plan for what a report was about (its next step when a limit needs changing)."""
    args = [("--target", Count(target))] if target else []
    args += [("--role", role)] if role != "loopback" else []
    args += [("--netns", netns)] if netns else []
    return tuner(APPLY, *args, ("--dry-run", None))


def serving_probe() -> Suggestion:
    """The probe's server side, which with --connect on a load host proves a target
    between two hosts (report's next step for the server and client roles)."""
    return tuner(PROBE, ("--serve", None))


def proving_probe(target: int, netns: Optional[str]) -> Suggestion:
    """The probe that proves a loopback target with real connections."""
    return tuner(PROBE, ("-n", Count(target)), *([("--netns", netns)] if netns else []))


# ---------------------------------------------------------------- the probe

def probe_apply(connections: int, netns: Optional[str], source_net: str, destinations: int) -> Suggestion:
    """`tuner apply` planning for a probe's configuration, so its plan changes the knobs
    that probe needs (a narrow --source-net needs a wider port range)."""
    args = [("--target", connections)]
    args += [("--netns", netns)] if netns else []
    args += [("--source-net", source_net)]
    args += [("--destinations", destinations)] if destinations != 1 else []
    return tuner(APPLY, *args, needs=(ROOT,))


def port_diagnose(port: int, netns: Optional[str]) -> Suggestion:
    """`tuner diagnose` of the local server a probe stalled against."""
    return tuner(DIAGNOSE, ("--port", port), *([("--netns", netns)] if netns else []))


# ---------------------------------------------------------------- tuner diagnose



def apply_command(d, n: int, pids: Sequence[int] = (), why: str = "", kind: str = "tuner") -> Suggestion:
    """`tuner apply` sizing the service's limits for `n` connections (its processes' own
    descriptor limits too, given `pids`), in the service's network namespace."""
    netns = d.netns if d.netns and d.netns != "?" else None
    args = [("--pid", pid) for pid in pids] + [("--target", n), ("--role", "server")]
    args += [("--netns", netns)] if netns else []
    return tuner(APPLY, *args, why=why, kind=kind, needs=(ROOT,),
                 scope=PIDS if pids else NETNS if netns else HOST, at=tuple(pids) or netns)


def raises_descriptors(s: Suggestion) -> bool:
    """An apply that raises running processes' RLIMIT_NOFILE (it names them with --pid)."""
    return s.verb == APPLY and bool(s.option("--pid"))


# ---------------------------------------------------------------- the application

def app_want(d) -> Optional[int]:
    """How many connections the application's fix sizes for, when its cap binds or
    falls short of the target: the target, else what the next limit allows."""
    cap = d.application
    if cap is None or cap["allows"] is None:
        return None
    if d.target is not None:
        return d.target if cap["allows"] < d.target else None
    return _next_limit(d, cap["label"]) if d.binding_limit == cap["label"] else None


def app_fix(d) -> List[Suggestion]:
    """The application's own setting (as its adapter sized it in application.fix): the
    config lines, where, then the reload or restart that takes them."""
    cap = d.application
    if cap is None or app_want(d) is None:
        return []
    f = cap.get("fix")
    if f is None:
        return [advice(f"raise {cap['label']}", f"{cap['app']}'s own cap binds: {cap['why']}", "application")]
    held = f"{cap['app']} holds {f['allows']:,} with it" if f["allows"] is not None else ""
    nofile = f"each of its processes needs RLIMIT_NOFILE {f['nofile']:,}" if f["nofile"] else ""
    return [config(f["lines"], f["file"], f["command"], f["action"],
                   "; ".join(w for w in (held, nofile, f["why"]) if w))]


def memory_fix(d) -> List[Suggestion]:
    """The application's own memory cap that binds (Redis maxmemory-clients): its setting,
    as its adapter sized it (service_cost.memory_limit.fix)."""
    f = ((d.service_cost or {}).get("memory_limit") or {}).get("fix")
    if f is None:
        return []
    return [config(f["lines"], f["file"], f["command"], f["action"],
                   f"{d.service_cost['binding']} binds: with it, {f['why']}")]


def _next_limit(d, app_label: str) -> Optional[int]:
    """What the service holds once the application's cap is out of the way: the tightest
    of the other limits (the per-process ones summed over the processes)."""
    per_pid: Dict[int, int] = {}
    for r in d.limits:
        if r.pid is not None and r.name == SOFT and r.allows is not None:
            per_pid[r.pid] = r.allows
    others = [r.allows for r in d.limits if r.pid is None and r.allows is not None
              and r.caps == knobs.CAPS_CONNECTIONS and r.name != app_label]
    if per_pid:
        others.append(sum(per_pid.values()))
    return min(others) if others else None


# ---------------------------------------------------------------- descriptors

def _soft_raise(d, soft_rows, hard_rows, ceiling: int) -> List[Suggestion]:
    raisable = [r.pid for r in soft_rows if r.current[0] < hard_rows[r.pid].current[0]]
    want = d.target if d.target is not None else ceiling
    out = []
    if raisable and want:
        out.append(apply_command(d, want, raisable,
                                 f"raises RLIMIT_NOFILE.soft of the running process"
                                 f"{'es' if len(raisable) > 1 else ''} (prlimit, no restart), up to the "
                                 f"hard limit; with it the service holds up to {min(want, ceiling):,}"))
    if d.target is not None and ceiling < d.target or not raisable:
        first = next((r for r in hard_rows.values() if r.fix), None)
        if first is not None:
            out.append(first.fix.but(kind="unit", scope=PIDS, at=(first.pid,),
                               why=f"the hard limit {first.current[0]:,} of pid {first.pid} holds "
                                   f"{first.allows:,}: raising it needs CAP_SYS_RESOURCE or a "
                                   f"restart with a higher limit; or shard across processes"))
    return out


def _persist(d, procs, want: Optional[int]) -> List[Suggestion]:
    """LimitNOFILE= for each systemd unit, so a restart keeps the raised limit."""
    return [tuner(APPLY, ("--persist", None), ("--unit", unit), ("--target", want), ("--role", "server"),
                  why=f"LimitNOFILE= in a drop-in of {unit}, so a restart keeps the limit", kind="unit",
                  needs=(ROOT, RESTART), scope=UNIT, at=unit)
            for unit in sorted({p.unit for p in procs if p.unit})]


def fd_fixes(d, procs) -> List[Suggestion]:
    """The descriptor limits, when the soft one binds or the target needs more."""
    soft_rows = [r for r in d.limits if r.name == SOFT]
    hard_rows = {r.pid: r for r in d.limits if r.name == HARD}
    if not (d.binding_limit == SOFT or any(r.needed for r in soft_rows)):
        return []
    # What the hard limits allow when every soft limit is raised to them.
    ceiling = sum(hard_rows[r.pid].allows or 0 for r in soft_rows)
    want = d.target if d.target is not None else ceiling
    return _soft_raise(d, soft_rows, hard_rows, ceiling) + _persist(d, procs, want or ceiling)


# ---------------------------------------------------------------- sysctls and the rest

def sysctl_fix(d, earlier: List[Suggestion]) -> List[Suggestion]:
    """Host and namespace sysctls the target needs: one tuner apply writes them all
    (unless an apply --pid above does already)."""
    sysctls = [r for r in d.limits if r.kind == "sysctl" and r.needed is not None
               and r.name in knobs.BY_NAME and knobs.BY_NAME[r.name].writable]
    if d.target is None or not sysctls or any(raises_descriptors(f) for f in earlier):
        return []
    return [apply_command(d, d.target, why="raises " + ", ".join(dict.fromkeys(r.name for r in sysctls))
                          + f" to what {d.target:,} connections need")]


def _cgroup_pids_fix(d, r, procs) -> List[Suggestion]:
    if not (r.needed or r.name == d.binding_limit):
        return []
    wanted = r.needed[0] if r.needed else None
    path = (procs[0].cgroup_pids or {}).get("path")
    if path and wanted:
        return [write(os.path.join(path, "pids.max"), wanted, r.fix.render() if r.fix else "")]
    return [r.fix.but(why=f"{r.name} binds", kind="cgroup")] if r.fix else []


def _thread_sysctl_fix(d, r) -> List[Suggestion]:
    if r.kind != "sysctl":
        return []
    if r.needed and r.fix:
        # The row's own fix (capacity.row_fix: the sysctl's command for what it needs).
        return [r.fix.but(why=f"{r.name} for {d.target:,} thread-per-connection connections",
                        kind="sysctl")]
    if r.name == d.binding_limit:
        return [tuner(DIAGNOSE, *[("--pid", pid) for pid in d.pids], ("--target", N),
                      why=f"{r.name} binds; --target N prints the value N connections need", kind="sysctl")]
    return []


def process_knob_fixes(d, procs) -> List[Suggestion]:
    """Process-only limits (threads, mappings, the pids cgroup): the knob's own fix."""
    names = {k.name for k in knobs.PROCESS_KNOBS}
    out: List[Suggestion] = []
    for r in d.limits:
        if r.name not in names:
            continue
        if r.name == "cgroup pids.max":
            out += _cgroup_pids_fix(d, r, procs)
        else:
            out += _thread_sysctl_fix(d, r)
    return out


def host_fix(d) -> List[Suggestion]:
    """A binding limit tuner cannot change (memory): the knob table's words for it."""
    out = []
    for r in d.limits:
        knob = knobs.BY_NAME.get(r.name)
        if knob and not knob.writable and knob.fix and r.name == d.binding_limit and knob.scope != "process":
            out.append(knob.fix.but(why=f"{r.name} binds", kind="host"))
    return out


# ---------------------------------------------------------------- the accept queue

def listener_row_fix(backlog: int, somaxconn: Optional[int], cap: Knob) -> Suggestion:
    """The fix of a listener's accept-queue row (`cap`: the knob that caps listen()'s
    backlog, `somaxconn` its value): the application's own backlog while below it, else
    the knob, then a new listen()."""
    if somaxconn and backlog < somaxconn:
        return advice("raise the backlog the application passes to listen()")
    return advice(f"raise {cap.name} ({tuner(APPLY).render()}), then the application must listen() again")


def _backlog_needs_fix(d, l) -> bool:
    small = d.target is not None and l["backlog"] < min(d.target, knobs.MAX_BACKLOG)
    full = l["queued"] >= l["backlog"] > 0
    return small or full or d.binding_limit == LISTEN_BACKLOG


def _capped_backlog_fix(d, l, cap, somaxconn: int, earlier: List[Suggestion]) -> Suggestion:
    """The backlog is somaxconn as it was at listen(): raise it, then listen() again."""
    if any(f.verb == APPLY and f.option("--target") for f in earlier):
        return advice(f"restart the application once {cap.name} is raised",
                      f"the backlog of {l['address']}:{l['port']} ({l['backlog']:,}) is "
                      f"{cap.name} as it was at listen(); only a new listen() "
                      f"gets the larger queue", "application")
    return apply_command(d, d.target or 2 * somaxconn,
                         why=f"the backlog of {l['address']}:{l['port']} ({l['backlog']:,}) is "
                             f"{cap.name}; raise it, then the application must call "
                             f"listen() again (restart it) to get the larger queue")


def backlog_fixes(d, snap, earlier: List[Suggestion]) -> List[Suggestion]:
    """The accept queue: the application's own setting (or the knob that caps it first)."""
    cap = knobs.backlog_cap()
    somaxconn = snap.int(cap.name)
    out: List[Suggestion] = []
    for l in d.listeners:
        if not _backlog_needs_fix(d, l):
            continue
        if somaxconn is not None and l["backlog"] >= somaxconn:
            out.append(_capped_backlog_fix(d, l, cap, somaxconn, earlier + out))
        else:
            out.append(backlog_fix(d, l, somaxconn))
    return out


def backlog_fix(d, listener: Dict[str, Any], somaxconn: Optional[int]) -> Suggestion:
    """The application's own setting: only it can pass a larger backlog to listen()
    (`somaxconn`: the value of the knob that caps it); how, from its runtime's adapter."""
    # Here, not at the top: report's model builds its fixes here too and reads no adapter.
    from tuner import apps

    adapter = apps.ADAPTERS.get((d.application or {}).get("app", ""))
    how, fixed = getattr(adapter, "backlog_setting", None), getattr(adapter, "backlog_fixed", None)
    where = (f"{listener['address']}:{listener['port']} (now {listener['backlog']:,}; "
             f"{knobs.backlog_cap().name} {'?' if somaxconn is None else f'{somaxconn:,}'} allows up to that)")
    # The application's own setting when its adapter knows it (issue 28: nginx, Redis,
    # HAProxy were told 'listen(fd, N)'), or that it has none.
    if fixed:
        text = f"the listen backlog of {where} is the application's own: {fixed}"
    elif how:
        text = f"{how}: raises the listen backlog of {where}"
    else:
        text = f"listen(fd, N): raise the backlog the application passes for {where}"
    return advice(text, "only the application sets its listen backlog (a burst beyond it waits a second "
                        "for the retransmitted SYN)", "application")


# ---------------------------------------------------------------- a limit hit now (--watch)

def limit_fix(d, limit: str, n: int, somaxconn: Optional[int]) -> Optional[Suggestion]:
    """The fix for a limit `tuner diagnose --watch` saw being hit: the listener's backlog
    (`somaxconn`: the value of the knob that caps it), the descriptors' apply --pid among
    the diagnosis's fixes, a sysctl's apply sized for `n`, the knob table's words."""
    if limit == LISTEN_BACKLOG and d.listeners:
        return backlog_fix(d, min(d.listeners, key=lambda l: l["backlog"]), somaxconn)
    if limit == SOFT:
        return next((f for f in d.fix if raises_descriptors(f)), advice(knobs.BY_NAME[limit].why))
    knob = knobs.BY_NAME.get(limit)
    if knob is None:
        return None
    if knob.writable and knob.is_sysctl:
        return apply_command(d, n, why=f"raises {knob.name} to what {n:,} connections need")
    return knob.fix or advice(knob.why)


# ---------------------------------------------------------------- all of them

def fixes(d, procs, snap) -> List[Suggestion]:
    """Every fix the diagnosis asks for, the application's own first, each command once."""
    out = app_fix(d) + memory_fix(d) + fd_fixes(d, procs)
    out += sysctl_fix(d, out)
    out += process_knob_fixes(d, procs) + host_fix(d)
    out += backlog_fixes(d, snap, out)
    # Each once: two limits may ask for the same step (the first one's why is kept).
    unique: Dict[tuple, Suggestion] = {}
    for f in out:
        unique.setdefault(f.step, f)
    return list(unique.values())
