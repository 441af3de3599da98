"""Target -> the ordered changes `tuner apply` would make, each with its why.

Everything comes from the knob table: a knob is in the plan when its `needs` rule
returns a value, and the plan's order is the table's order.  After each change the
plan writes the new value into a copy of the snapshot and re-evaluates, so later rules
see earlier changes (the host's descriptor ceiling raised before the hard RLIMIT_NOFILE
that needs it; the port range widened before source addresses are counted).  Which setting kind plans a
knob, and how, is the kind's (tuner/settings/): sysctl -> /proc/sys, rlimit -> prlimit
on each --pid, addresses -> /32 aliases on --alias-dev; `--persist` adds files at the
end that set the same values at boot.

Planning reads (process limits, existing files) but never writes.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Iterable, List, Optional, Tuple

from probes.config import source_count

from . import settings
from .capacity import worst_case_bytes
from .knobs import KNOBS, Ctx
from .readings import Snapshot
from .settings import Change
# apply validates --unit with check_unit; the man pages name the persisted files.
from .settings.file import (DROPIN_NAME, LIMITS_FILE, SYSCTL_FILE, UNIT_DIR, check_unit,  # noqa: F401
                            check_user)
from .settings.sysctl import text as sysctl_text

SCHEMA = "tuner.plan/2"


@dataclass
class Plan:
    target: int
    role: str
    netns: Optional[str]
    changes: List[Change]
    notes: List[str]
    memory: Dict[str, Any]
    skipped: List[Dict[str, Any]]   # knobs that need a change tuner will not make here

    def to_dict(self) -> dict:
        """JSON (tuner.plan/2): each change's values as lists, as the report gives them."""
        out = {"schema": SCHEMA, **asdict(self)}
        out["changes"] = [change_json(c) for c in self.changes]
        return out


def change_json(change: Change) -> Dict[str, Any]:
    kind = settings.kind(change.kind)
    return {**asdict(change), "current": kind.to_json(change.current),
            "new": kind.to_json(change.new)}


@dataclass
class Request:
    """What the user asked apply for (validated by apply.validate before planning).

    The library entry point: tuner.apply.prepare(Request, journal) plans without
    changing anything (a check mode), tuner.apply.run applies, tuner.revert.run undoes.
    """

    target: int
    role: str = "loopback"
    netns: Optional[str] = None
    destinations: int = 1
    pids: Tuple[int, ...] = ()
    alias_dev: Optional[str] = None
    alias_net: Optional[str] = None
    shrink_buffers: bool = False
    persist: bool = False
    root_dir: str = "/"
    unit: Optional[str] = None
    # Plan for clients bound to this network's addresses (as `tuner probe --source-net`
    # binds them) instead of the local addresses counted; 'none': the one kernel-chosen.
    source_net: Optional[str] = None
    allow_public_aliases: bool = False   # --alias-net/--anyip-net outside the private ranges (inputs.py)
    # One local route for this prefix (settings/route.py) on anyip_dev (None: lo).
    anyip_net: Optional[str] = None
    anyip_dev: Optional[str] = None
    # --persist's limits.d lines for this user only (else every user and root), and the
    # persisted soft RLIMIT_NOFILE raised to the hard one too (else left at its default).
    user: Optional[str] = None
    raise_soft: bool = False
    # Why `role` is what it is when the user gave none (apply.role_for), said with the plan.
    role_chosen: Optional[str] = None

    @property
    def source_count(self) -> Optional[int]:
        return None if self.source_net is None else source_count(self.source_net)


def _ctx(snap: Snapshot, req: Request, **over) -> Ctx:
    return Ctx(snap, role=req.role, target=req.target, destinations=req.destinations,
               source_dev=req.alias_dev, shrink_buffers=over.get("shrink", req.shrink_buffers),
               host_changes=req.netns is None, source_count=req.source_count)


@dataclass
class Planning:
    """The state a setting kind plans in: the request, the host as read (`snap`) and as
    it will be after the changes planned so far (`sim`), each --pid's limits, and what
    the plan has gathered."""

    req: Request
    snap: Snapshot
    sim: Snapshot
    procs: Dict[int, Dict[str, Any]]
    pid_snaps: Dict[int, Snapshot]
    journal_entries: List[Dict[str, Any]]
    changes: List[Change] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    skipped: List[Dict[str, Any]] = field(default_factory=list)

    def ctx(self, snap: Optional[Snapshot] = None, **over) -> Ctx:
        return _ctx(self.sim if snap is None else snap, self.req, **over)

    def needed(self, knob) -> Optional[tuple]:
        """(ctx, the value `knob` needs) on the host as planned so far; None where this
        kernel lacks the knob (or it is unreadable): nothing to plan from."""
        ctx = self.ctx()
        if knob.current(ctx) is None:
            return None
        return ctx, knob.needs(ctx)


def _buffer_memory(snap: Snapshot, req: Request) -> Optional[int]:
    """The buffers' part of the worst case (the plan's worst_case_buffer_bytes_*)."""
    ctx = _ctx(snap, req)
    return None if ctx.buffer_bytes is None else ctx.buffer_bytes * req.target


def _worst_case(snap: Snapshot, req: Request) -> Optional[int]:
    """The one worst-case figure (capacity.worst_case_bytes), as `tuner report` shows it."""
    return worst_case_bytes(_ctx(snap, req), req.target)


def build_plan(snap: Snapshot, req: Request, procs: Optional[Dict[int, Dict[str, Any]]] = None,
               journal_entries: Iterable[Dict[str, Any]] = ()) -> Plan:
    """The ordered changes for `req` on the host `snap` describes.

    `procs` maps each --pid to {"soft", "hard", "create_time"}; `journal_entries` are
    what earlier applies recorded (their sysctls stay in the persisted file).
    """
    procs = procs or {}
    sim = copy.deepcopy(snap)                       # the host as it will be, change by change
    pid_snaps = {pid: replace(copy.deepcopy(snap), nofile_soft=p["soft"], nofile_hard=p["hard"])
                 for pid, p in procs.items()}
    planning = Planning(req, snap, sim, procs, pid_snaps, list(journal_entries))
    buffers_before = _buffer_memory(sim, req)
    for kind in settings.all_kinds().values():
        planning.changes += kind.plan_first(planning)
    for knob in KNOBS:
        kind = settings.for_knob(knob) if knob.writable else None
        if kind is not None:
            planning.changes += kind.plan(knob, planning)
    for kind in settings.all_kinds().values():
        planning.changes += kind.plan_after(planning)
    return Plan(req.target, req.role, req.netns, planning.changes, planning.notes,
                _memory(snap, sim, req, buffers_before), planning.skipped)


def _memory(snap: Snapshot, sim: Snapshot, req: Request, before: Optional[int]) -> Dict[str, Any]:
    after = _buffer_memory(sim, req)
    out: Dict[str, Any] = {"worst_total_bytes_before": _worst_case(snap, req),
                           "worst_total_bytes_after": _worst_case(sim, req),
                           "worst_case_buffer_bytes_before": before,
                           "worst_case_buffer_bytes_after": after,
                           "shrink_buffers": req.shrink_buffers}
    if not req.shrink_buffers:
        # What --shrink-buffers would give, so the plan can offer it with a number.
        shrunk = copy.deepcopy(sim)
        ctx = _ctx(shrunk, req, shrink=True)
        for knob in KNOBS:
            if knob.caps == "buffers" and knob.is_sysctl:
                needed = knob.needs(ctx)
                if needed is not None:
                    shrunk.sysctls[knob.name] = sysctl_text(needed)
        out["worst_case_buffer_bytes_if_shrunk"] = _buffer_memory(shrunk, req)
        out["worst_total_bytes_if_shrunk"] = _worst_case(shrunk, req)
    ctx = _ctx(sim, req)
    out["mem_available_bytes"] = ctx.mem_available
    return out


def describe(change: Change, value: Any) -> str:
    """A value of `change` as the plan table shows it (the kind decides)."""
    return settings.kind(change.kind).describe(value, change.knob)


def before_after(plan: Plan, shown: bool = False) -> List[Dict[str, Any]]:
    """Each change as {knob, kind, where, before, after}: values as JSON gives them
    (lists, null), or with `shown` as the plan table shows them, files as their whole
    text (None when absent), for a caller that shows a diff (the Ansible module's)."""
    out = []
    for c in plan.changes:
        kind = settings.kind(c.kind)
        if not shown:
            before, after = kind.to_json(c.current), kind.to_json(c.new)
        elif c.kind == "file":
            before, after = c.current, c.new
        else:
            before, after = describe(c, c.current), describe(c, c.new)
        out.append({"knob": c.knob, "kind": c.kind, "where": c.where, "before": before,
                    "after": after})
    return out
