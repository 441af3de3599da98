"""`tuner apply`: validate, plan, show, confirm, then write through the journal.

Each change: read the original right before writing, record it with the new value in
the journal (state "pending", saved atomically), write and verify, mark it "done".  A
refused write rolls back every change this run made, in reverse order, and the journal
goes back to what it held before the run; the error names the knob and the reason.
"""
from __future__ import annotations

import copy
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from tuner import capacity, hostlog, settings
from tuner.diagnose import evaluate as diagnose
from . import assess
from tuner.host.errors import EXIT_FAILED, PermissionNeeded, TunerError, UsageError
from .inputs import check_alias_net, check_positive, check_role
from .journal import Journal, JournalWriteError, locked, now, resolve_path
from .knobs import Ctx
from .plan import Plan, Request, build_plan, check_unit, check_user
from tuner.host.netns import check_name, in_netns

SCHEMA = "tuner.apply/2"
# Test hook: SIGKILL this process right after its k-th write (before the journal marks
# it done), to prove a crash at any point can be reverted. Unset in normal runs.
KILL_AFTER_ENV = "TUNER_TEST_KILL_AFTER"


@dataclass
class Outcome:
    plan: Plan
    dry_run: bool
    applied: List[Dict[str, Any]] = field(default_factory=list)
    journal: Optional[str] = None
    after: Optional[Dict[str, Any]] = None
    # With --pid: the application's own cap below the target (application_short), and why
    # the role was the server's when --role was not given.
    application: Optional[Dict[str, Any]] = None
    role_chosen: Optional[str] = None

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "dry_run": self.dry_run, "journal": self.journal,
                "plan": self.plan.to_dict(), "applied": self.applied, "after": self.after,
                "application": self.application, "role_chosen": self.role_chosen}


# ---------------------------------------------------------------- validation

def check_root(what: str) -> None:
    if os.geteuid() != 0:
        raise PermissionNeeded(f"tuner {what} changes kernel settings and needs root: "
                               f"run it with sudo (nothing was changed)")


def validate(req: Request) -> None:
    """Input errors: one line, exit 2, before anything else (the root check included, so
    bad input is exit 2 whoever runs it)."""
    check_role(req.role)
    check_positive("--destinations", req.destinations)
    check_unit(req.unit)
    if (req.alias_dev is None) != (req.alias_net is None):
        raise UsageError("--alias-dev and --alias-net go together: the device to add "
                         "addresses on and the network to take them from")
    if req.alias_net is not None:
        net = check_alias_net(req.alias_net, req.alias_dev, req.allow_public_aliases)
        if net.version != 4:
            raise UsageError(f"--alias-net {req.alias_net}: source addresses are counted "
                             f"for IPv4 only; use an IPv4 network")
    _check_anyip(req)
    if req.persist and req.netns is not None:
        raise UsageError("--persist writes boot-time settings of the host; a namespace does "
                         "not survive a reboot, so it cannot be combined with --netns")
    if req.unit is not None and not req.persist:
        raise UsageError("--unit NAME writes a systemd drop-in and needs --persist")
    if req.user is not None and not req.persist:
        raise UsageError("--user NAME scopes the limits.d file --persist writes; add --persist")
    if req.raise_soft and not req.persist:
        raise UsageError("--raise-soft sets the soft limit --persist writes; add --persist")
    check_user(req.user)
    if not os.path.isdir(req.root_dir):
        raise UsageError(f"--root-dir {req.root_dir}: no such directory")
    if req.netns is not None:
        check_name(req.netns)
    for pid in req.pids:
        _check_pid(pid)
    # Last: without root the device can only be looked for in the initial namespace;
    # inside another one, entering it needs root, and that is exit 4 (needs root).
    _check_device(req)


def _check_anyip(req: Request) -> None:
    """--anyip-net: a prefix (never one address, nor loopback: lo has all of 127.0.0.0/8
    already) an operator plausibly owns, by the aliases' rules; for clients only."""
    if req.anyip_net is None:
        if req.anyip_dev is not None:
            raise UsageError("--anyip-dev DEV names where the --anyip-net route goes; add --anyip-net")
        return
    # Here, not at the top: only --anyip-net needs ipaddress (start-up time).
    import ipaddress

    try:
        loopback = ipaddress.ip_network(req.anyip_net.strip(), strict=False).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        raise UsageError(f"--anyip-net {req.anyip_net} is loopback, all local on lo already; "
                         f"take the prefix from a private network such as fd00::/8 or 10.0.0.0/8")
    net = check_alias_net(req.anyip_net, req.anyip_dev or "lo", req.allow_public_aliases,
                          option="--anyip-net")
    if net.num_addresses < 2:
        raise UsageError(f"--anyip-net {net} is one address; add it with --alias-net, or give a prefix")
    if req.role == "server":
        raise UsageError("--anyip-net gives a client source addresses; on the server, route the "
                         "clients' prefix back to them instead (docs/anyip.md)")
    if req.alias_net is not None:
        raise UsageError("--anyip-net and --alias-net both add source addresses: pick one")
    if req.anyip_dev is not None:
        from .inputs import check_netns_syntax  # noqa: F401  (device names: IFNAMSIZ, no '/')
        if len(req.anyip_dev) >= 16 or "/" in req.anyip_dev or not req.anyip_dev.isprintable():
            raise UsageError(f"--anyip-dev {req.anyip_dev!r} is not a device name")


def _check_pid(pid: int) -> None:
    """That the process exists, which anyone may ask; its limits are read after the
    root check."""
    # Here: psutil loads only for --pid (start-up time).
    import psutil

    if pid < 1 or not psutil.pid_exists(pid):
        raise UsageError(f"--pid {pid}: no such process")


def read_processes(pids: Sequence[int]) -> Dict[int, Dict[str, Any]]:
    # Here: psutil loads only for --pid (start-up time).
    import psutil

    out = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            soft, hard = proc.rlimit(psutil.RLIMIT_NOFILE)
            out[pid] = {"soft": soft, "hard": hard, "create_time": proc.create_time()}
        except psutil.NoSuchProcess:
            raise UsageError(f"--pid {pid}: no such process") from None
        except psutil.AccessDenied:
            raise PermissionNeeded(f"--pid {pid}: reading its limits needs root") from None
    return out


def _check_device(req: Request) -> None:
    for option, dev in (("--alias-dev", req.alias_dev), ("--anyip-dev", req.anyip_dev)):
        if dev is None:
            continue
        # Here: pyroute2's netlink loads only for --alias-dev (start-up time).
        from pyroute2 import IPRoute

        with in_netns(req.netns), IPRoute() as ipr:
            if not ipr.link_lookup(ifname=dev):
                where = f" in namespace {req.netns!r}" if req.netns else ""
                raise UsageError(f"{option} {dev}: no such device{where} "
                                 f"(list them with 'ip link')")


# ---------------------------------------------------------------- the command

def prepare(req: Request, journal_path: str) -> Plan:
    procs = read_processes(req.pids)
    journal = Journal.load(journal_path)
    snap = assess.snapshot(req.netns)
    plan = build_plan(snap, req, procs, journal.entries if journal else ())
    if req.role_chosen:
        plan.notes.insert(0, req.role_chosen)
    return plan


def run(req: Request, journal_path: Optional[str] = None, dry_run: bool = False,
        show: Callable[[Plan], None] = lambda plan: None,
        confirm: Callable[[Plan], None] = lambda plan: None,
        argv: Sequence[str] = ()) -> Outcome:
    """Plan and (unless dry_run) apply. `show` sees the plan first; `confirm` may raise
    to stop before anything changes."""
    validate(req)
    path = resolve_path(journal_path)
    if dry_run:
        plan = prepare(req, path)
        show(plan)
        return Outcome(plan, True, journal=path, application=application_short(req), role_chosen=req.role_chosen)
    check_root("apply")
    with locked(path):
        plan = prepare(req, path)
        show(plan)
        outcome = Outcome(plan, False, journal=path)
        if plan.changes:
            confirm(plan)
            outcome.applied = execute(plan, path, req, argv)
        outcome.after = after_report(req)
        outcome.application, outcome.role_chosen = outcome.after["application"], req.role_chosen
    return outcome


def _entry_for(change) -> Dict[str, Any]:
    return {"key": change.key, "knob": change.knob, "kind": change.kind, "scope": change.scope,
            "netns": change.netns, "detail": settings.kind(change.kind).record(change.detail),
            "why": change.why}


def execute(plan: Plan, path: str, req: Request, argv: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """Write `plan` through the journal at `path` (the lock held by the caller); returns
    one {knob, kind, where, before, new} per change, values as JSON gives them. Any failure (a refused write, a
    journal that cannot be saved) rolls back this run's writes and raises TunerError."""
    journal = Journal.load(path) or Journal(path)
    journal.data["applies"].append({"at": now(), "argv": list(argv), "target": req.target,
                                    "role": req.role, "netns": req.netns})
    # A full or read-only filesystem is found before the first change, not after it.
    journal.check_room([{**_entry_for(c), "original": c.current, "before": c.current,
                         "new": c.new, "state": "pending", "command": c.command}
                        for c in plan.changes if journal.find(c.key) is None])
    kill_after = int(os.environ.get(KILL_AFTER_ENV) or 0)
    # (entry, what the entry held before this run or None if this run created it)
    done: List[tuple] = []
    applied = []
    for n, change in enumerate(plan.changes, 1):
        kind = settings.kind(change.kind)
        try:
            before = kind.read(change.netns, change.detail)
            entry = journal.find(change.key)
            previous = copy.deepcopy(entry)
            if entry is None:
                entry = {**_entry_for(change), "original": before}
                journal.entries.append(entry)
            entry.update(before=before, new=change.new, state="pending", command=change.command)
            journal.save()  # write-ahead: the original is on disk before the setting changes
        except settings.Gone as e:
            raise _rolled_back(journal, done, f"{change.knob}: {e}") from None
        except (settings.WriteError, JournalWriteError) as e:
            raise _rolled_back(journal, done, f"{change.knob} ({change.where}): {e}; undoing "
                                              f"from memory") from None
        except BaseException:
            # Nothing of this change is written yet; the earlier ones must not stay half-done.
            _rollback(journal, done)
            raise
        done.append((entry, previous))
        try:
            kind.write(change.netns, entry["detail"], change.new)
            if n == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            entry["state"] = "done"
            journal.save()
        except (settings.WriteError, settings.Gone) as e:
            raise _rolled_back(journal, done, f"{change.knob} ({change.where}): writing "
                                              f"{change.new!r} failed: {e}") from None
        except JournalWriteError as e:
            raise _rolled_back(journal, done, f"{change.knob} ({change.where}) was written, "
                                              f"then {e}; undoing from memory") from None
        except BaseException:
            _rollback(journal, done)
            raise
        applied.append({"knob": change.knob, "kind": change.kind, "where": change.where,
                        "before": kind.to_json(before), "new": kind.to_json(change.new)})
        hostlog.change("apply", change.knob, change.where, kind.describe(before, change.knob),
                       kind.describe(change.new, change.knob), change.why)
    return applied


def _rolled_back(journal: Journal, done: List[tuple], what: str) -> TunerError:
    """Roll back, and the one-line error that says what failed and what was undone."""
    undone, failed, unrecorded = _rollback(journal, done)
    tail = (f"; could not undo: {'; '.join(failed)} (still in the journal: run 'tuner "
            f"revert')" if failed else "; nothing is left changed")
    if unrecorded:
        tail += f" ({unrecorded})"
    return TunerError(f"{what}; rolled back {undone} earlier change(s){tail}", EXIT_FAILED)


def _rollback(journal: Journal, done: List[tuple]):
    """Undo this run's writes in reverse, from what this process remembers; the journal
    returns to its state before the run. Returns (undone count, failures, a note when the
    journal could not be rewritten to say so, else None)."""
    undone, failed = 0, []
    for entry, previous in reversed(done):
        kind = settings.kind(entry["kind"])
        try:
            if kind.undo(entry["netns"], entry["detail"], entry["before"]):
                undone += 1
                hostlog.change("rollback", entry["knob"],
                               kind.where(entry["netns"], entry["detail"]),
                               kind.describe(entry["new"], entry["knob"]), kind.describe(entry["before"], entry["knob"]),
                               "a later change of the same apply failed")
        except settings.Gone:
            pass  # what it belonged to is gone, and the setting with it
        except settings.WriteError as e:
            failed.append(f"{entry['knob']} ({e})")
            continue  # keep the entry: revert can try again
        if previous is None:
            journal.entries.remove(entry)
        else:
            entry.clear()
            entry.update(previous)
    journal.data["applies"].pop()
    try:
        if journal.entries:
            journal.save()
        else:
            journal.delete()
    except (OSError, JournalWriteError) as e:
        # What is on disk still names this run's settings with their originals; they now
        # read as original, so 'tuner revert' drops them without writing.
        return undone, failed, f"the journal still lists them: {e}"
    return undone, failed, None


def role_for(role: Optional[str], pids: Sequence[int]) -> Tuple[str, Optional[str]]:
    """The role to plan with, and why when the user did not give one: a --pid that
    listens is a server (its accepted sockets, one descriptor each), else loopback
    (issue 28: a listening Redis was planned as both ends of every connection)."""
    if role is not None or not pids:
        return role or "loopback", None
    for pid in pids:
        _check_pid(pid)
    try:
        d = diagnose.diagnose(pids=list(pids))
    except TunerError:
        return "loopback", None      # unreadable or gone: validate names it
    if not d.listeners:
        return "loopback", None
    ports = sorted({l["port"] for l in d.listeners})
    return "server", (f"role server: pid {', '.join(map(str, d.pids))} listens on port "
                      f"{', '.join(map(str, ports))} (--role chooses another)")


def application_short(req: Request) -> Optional[Dict[str, Any]]:
    """With --pid: the service's own application cap (tuner/apps/, as diagnose reads it)
    when it holds fewer than the target; apply cannot change it, so the target is not
    reachable whatever the kernel allows, and the cap's own fix is what to do."""
    if not req.pids or req.target is None:
        return None
    try:
        d = diagnose.diagnose(pids=req.pids, target=req.target)
    except TunerError:
        return None        # the process went away: the host's verdict stands alone
    a = d.application
    if a is None or a["allows"] is None or a["allows"] >= req.target:
        return None
    fix = next((f.render() for f in d.fix if f.kind == "application"), "")
    return {"knob": a["label"], "current": [a["allows"]], "allows": a["allows"], "fix": fix}


def after_report(req: Request) -> Dict[str, Any]:
    """What the capacity model says now: reachable, or what still binds.

    Source addresses are counted on --alias-dev as the plan counted them.  Not through
    assess.build, which refuses a device with no addresses as a mistyped --source-dev:
    here the device was checked before planning, and no addresses on it (a server
    role needs none added) is a count of 0, not bad input after changes were made.
    """
    snap = assess.snapshot(req.netns)
    ctx = Ctx(snap, role=req.role, target=req.target, destinations=req.destinations,
              source_dev=req.alias_dev, source_count=req.source_count)
    rep = capacity.evaluate(ctx)
    capped = [{"knob": r.name, "current": r.current, "allows": r.allows,
                "fix": r.fix.render() if r.fix else ""}
              for r in rep.rows if r.status in (capacity.BINDS, capacity.SHORT, capacity.CAPPED)]
    app = application_short(req)
    reachable, binding = rep.reachable, rep.binding
    if app is not None:
        capped.insert(0, app)
        reachable, binding = False, app["knob"]
    return {"reachable": reachable, "max_connections": rep.max_connections,
            "binding": binding, "processes": rep.processes, "still_binding": capped,
            "application": app,
            "source_addresses": {
                "dev": req.alias_dev or ("lo" if req.role == "loopback" else None),
                "count": ctx.sources},
            "memory": {k: rep.memory.get(k) for k in ("idle_fits_memory", "worst_fits_memory",
                                                      "worst_total_bytes", "mem_available_bytes")}}
