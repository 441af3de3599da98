"""Target -> the ordered changes `tuner apply` would make, each with its why.

Everything comes from the knob table: a knob is in the plan when its `needs` rule
returns a value, and the plan's order is the table's order.  After each change the
plan writes the new value into a copy of the snapshot and re-evaluates, so later rules
see earlier changes (fs.nr_open raised before the hard RLIMIT_NOFILE that needs it; the
port range widened before source addresses are counted).  The knob's `kind` decides
how a value is written: sysctl -> /proc/sys, rlimit -> prlimit on each --pid, addresses
-> /32 aliases on --alias-dev.  `--persist` adds files at the end that set the same
values at boot.

Planning reads (process limits, existing files) but never writes.
"""
from __future__ import annotations

import copy
import ipaddress
import math
import os
import re
import shlex
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import UsageError
from .knobs import KNOBS, NR_OPEN_MAX, Ctx, Knob
from .readings import Snapshot

SCHEMA = "tuner.plan/1"

SYSCTL_FILE = "etc/sysctl.d/99-tuner.conf"
LIMITS_FILE = "etc/security/limits.d/99-tuner.conf"
UNIT_DIR = "etc/systemd/system"
DROPIN_NAME = "99-tuner.conf"
FILE_HEADER = "# Written by 'tuner apply'; 'tuner revert' removes it (or restores what was here).\n"

# Snapshot fields that hold a process's RLIMIT_NOFILE, by the knob name's suffix.
RLIMIT_FIELDS = {"soft": "nofile_soft", "hard": "nofile_hard"}


@dataclass
class Change:
    """One write. `key` names the setting, so a second apply finds the first's record."""

    knob: str
    kind: str            # sysctl | rlimit | alias | file
    scope: str           # host | netns | process | file
    netns: Optional[str]
    key: str
    current: Any         # sysctl: text; rlimit: int; alias: bool (present); file: text or None
    new: Any
    why: str
    command: str
    detail: Dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        if self.kind == "rlimit":
            return f"pid {self.detail['pid']}"
        if self.kind == "alias":
            return f"{self.detail['dev']}" + (f" in netns {self.netns}" if self.netns else "")
        if self.kind == "file":
            return self.detail["path"]
        return f"netns {self.netns}" if self.netns else "host"


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
        return {"schema": SCHEMA, **asdict(self)}


# ---------------------------------------------------------------- value text

def sysctl_text(values: Sequence[Any]) -> str:
    return " ".join(str(v) for v in values)


def sysctl_command(name: str, value: str, netns: Optional[str]) -> str:
    prefix = f"ip netns exec {shlex.quote(netns)} " if netns else ""
    return f"{prefix}sysctl -w {name}={shlex.quote(value) if ' ' in value else value}"


def prlimit_command(pid: int, soft: int, hard: int) -> str:
    return f"prlimit --pid {pid} --nofile={soft}:{hard}"


def alias_command(op: str, address: str, dev: str, netns: Optional[str]) -> str:
    prefix = f"ip -n {shlex.quote(netns)} " if netns else "ip "
    return f"{prefix}addr {op} {address}/32 dev {shlex.quote(dev)}"


def file_command(path: str, content: str) -> str:
    return (f"mkdir -p {shlex.quote(os.path.dirname(path))} && "
            f"cat > {shlex.quote(path)} <<'EOF'\n{content}EOF")


def rlimit_parts(knob: Knob) -> Tuple[str, str]:
    """'RLIMIT_NOFILE.hard' -> ('RLIMIT_NOFILE', 'hard'): the table's naming convention."""
    resource, _, which = knob.name.partition(".")
    if which not in RLIMIT_FIELDS:
        raise ValueError(f"rlimit knob {knob.name!r} must end in .soft or .hard")
    return resource, which


# ---------------------------------------------------------------- planning

@dataclass
class Request:
    """What the user asked apply for (validated by apply.validate before planning)."""

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


def _ctx(snap: Snapshot, req: Request, **over) -> Ctx:
    return Ctx(snap, role=req.role, target=req.target, destinations=req.destinations,
               source_dev=req.alias_dev, shrink_buffers=over.get("shrink", req.shrink_buffers),
               host_changes=req.netns is None)


def _buffer_memory(snap: Snapshot, req: Request) -> Optional[int]:
    ctx = _ctx(snap, req)
    return None if ctx.buffer_bytes is None else ctx.buffer_bytes * req.target


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
    changes: List[Change] = []
    notes: List[str] = []
    skipped: List[Dict[str, Any]] = []
    buffers_before = _buffer_memory(sim, req)

    for knob in KNOBS:
        if not knob.writable:
            continue
        if knob.kind == "rlimit":
            changes += _rlimit_changes(knob, req, procs, pid_snaps, sim, notes)
            continue
        ctx = _ctx(sim, req)
        if knob.current(ctx) is None:
            continue  # not on this kernel (or unreadable): nothing to plan from
        needed = knob.needs(ctx)
        if knob.kind == "addresses":
            changes += _alias_changes(knob, req, ctx, needed, sim, notes)
            continue
        if needed is None:
            continue
        if knob.scope == "host" and req.netns is not None:
            # Host-wide sysctls exist only in the initial namespace; changing them from
            # "inside" a namespace would change the whole host behind the user's back.
            skipped.append({"knob": knob.name, "current": knob.current(ctx), "needed": needed,
                            "reason": "host-wide: exists only in the initial namespace; "
                                      "run 'tuner apply' without --netns to change it"})
            continue
        netns = req.netns if knob.scope == "netns" else None
        cur, new = sim.sysctls[knob.name], sysctl_text(needed)
        changes.append(Change(knob.name, "sysctl", knob.scope, netns,
                              f"sysctl:{netns or ''}:{knob.name}", cur, new, knob.why,
                              sysctl_command(knob.name, new, netns), {"name": knob.name}))
        sim.sysctls[knob.name] = new

    if req.persist:
        changes += _persist_changes(req, snap, sim, changes, journal_entries, notes)
    if not procs and any(k.kind == "rlimit" for k in KNOBS):
        notes.append("RLIMIT_NOFILE is per process: name running processes with --pid, or "
                     "set it for future ones with --persist (limits.d) and --unit NAME (systemd).")

    return Plan(req.target, req.role, req.netns, changes, notes,
                _memory(snap, sim, req, buffers_before), skipped)


def _memory(snap: Snapshot, sim: Snapshot, req: Request, before: Optional[int]) -> Dict[str, Any]:
    after = _buffer_memory(sim, req)
    out: Dict[str, Any] = {"worst_case_buffer_bytes_before": before,
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
    ctx = _ctx(sim, req)
    out["mem_available_bytes"] = ctx.mem_available
    return out


def _rlimit_changes(knob: Knob, req: Request, procs, pid_snaps, sim: Snapshot,
                    notes: List[str]) -> List[Change]:
    resource, which = rlimit_parts(knob)
    out = []
    for pid, info in procs.items():
        psnap = pid_snaps[pid]
        # Host-wide ceilings (fs.nr_open) as raised so far, the process's own limits.
        psnap.sysctls = dict(sim.sysctls)
        ctx = _ctx(psnap, req)
        needed = knob.needs(ctx)
        field_name = RLIMIT_FIELDS[which]
        if needed is not None:
            cur = getattr(psnap, field_name)
            setattr(psnap, field_name, needed[0])
            if which == "hard":
                psnap.nofile_soft = min(psnap.nofile_soft, needed[0])
            out.append(Change(
                knob.name, "rlimit", "process", None,
                f"rlimit:{pid}:{info['create_time']}:{knob.name}", cur, needed[0], knob.why,
                prlimit_command(pid, psnap.nofile_soft, psnap.nofile_hard),
                {"pid": pid, "create_time": info["create_time"], "resource": resource,
                 "which": which}))
        # Still short of N per process after this plan: say why, and what to do.
        allows = knob.allows(_ctx(psnap, req))
        if allows is not None and allows < req.target and knob.fix:
            if not psnap.cap_sys_resource:
                why = "this host cannot raise it (no CAP_SYS_RESOURCE)"
            elif req.netns is not None:
                why = (f"fs.nr_open ({psnap.sysctls.get('fs.nr_open')}) caps it; that is "
                       f"host-wide, so 'tuner apply' without --netns raises it")
            else:
                why = f"the kernel caps every process at {NR_OPEN_MAX:,} descriptors"
            notes.append(f"pid {pid}: {knob.name} {getattr(psnap, field_name):,} holds "
                         f"{allows:,} connections per process and {why}: {knob.fix}; or shard "
                         f"the load over {math.ceil(req.target / max(allows, 1)):,} processes.")
    return out


def _alias_changes(knob: Knob, req: Request, ctx: Ctx, needed, sim: Snapshot,
                   notes: List[str]) -> List[Change]:
    dev = ctx.source_dev or ("lo" if req.role == "loopback" else "non-loopback interfaces")
    if needed is None:
        if req.role != "server":
            local = " (all of 127.0.0.0/8 is local on lo)" if dev == "lo" else ""
            notes.append(f"source addresses: {ctx.sources:,} usable on {dev}{local}; "
                         f"nothing to add for {req.target:,}.")
        return []
    missing = needed[0] - ctx.sources
    if req.alias_net is None:
        notes.append(f"source addresses: {needed[0]:,} needed, {ctx.sources:,} on {dev}: "
                     f"add {missing:,} more with {knob.fix} (each 'ip addr add A/32 dev DEV').")
        return []
    taken = {str(a["address"]) for a in sim.addresses}
    net = ipaddress.ip_network(req.alias_net, strict=False)
    picked: List[str] = []
    for host in (net.hosts() if net.num_addresses > 1 else iter([net.network_address])):
        if str(host) not in taken:
            picked.append(str(host))
            if len(picked) == missing:
                break
    if len(picked) < missing:
        raise UsageError(f"--alias-net {req.alias_net} has {len(picked):,} free addresses, "
                         f"{missing:,} are needed for {req.target:,}: use a larger network")
    out = []
    for address in picked:
        out.append(Change(knob.name, "alias", knob.scope, req.netns,
                          f"alias:{req.netns or ''}:{req.alias_dev}:{address}/32", False, True,
                          knob.why, alias_command("add", address, req.alias_dev, req.netns),
                          {"dev": req.alias_dev, "address": address, "prefixlen": 32}))
        sim.addresses.append({"ifname": req.alias_dev, "address": address, "prefixlen": 32,
                              "family": 4})
    return out


# ---------------------------------------------------------------- persistence

def read_text(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def _assignments(text: Optional[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")) and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = " ".join(value.split())
    return out


def unit_dropin(root_dir: str, unit: str) -> str:
    name = unit if "." in unit else unit + ".service"
    return os.path.join(root_dir, UNIT_DIR, name + ".d", DROPIN_NAME)


def _persist_changes(req: Request, snap: Snapshot, sim: Snapshot, changes: List[Change],
                     journal_entries, notes: List[str]) -> List[Change]:
    out = []
    # Sysctls tuner has set in the initial namespace: earlier applies' and this one's.
    values: Dict[str, str] = {}
    for e in journal_entries:
        if e["kind"] == "sysctl" and not e["netns"]:
            values[e["detail"]["name"]] = e["new"]
    for c in changes:
        if c.kind == "sysctl" and c.netns is None:
            values[c.detail["name"]] = c.new
    path = os.path.join(req.root_dir, SYSCTL_FILE)
    old = read_text(path)
    merged = {**_assignments(old), **values}
    if merged:
        content = FILE_HEADER + "".join(f"{k} = {v}\n" for k, v in merged.items())
        out.append(_file_change("sysctl.d", path, old, content,
                                "Sets the same sysctls at boot (systemd-sysctl reads sysctl.d)."))

    # Limits for processes started later: evaluated with CAP_SYS_RESOURCE, which
    # pam_limits at login and systemd starting a unit hold even where tuner does not.
    boot = replace(copy.deepcopy(sim), cap_sys_resource=True)
    limits: Dict[str, int] = {}
    for knob in KNOBS:
        if knob.kind != "rlimit":
            continue
        _, which = rlimit_parts(knob)
        needed = knob.needs(_ctx(boot, req))
        if needed is not None:
            setattr(boot, RLIMIT_FIELDS[which], needed[0])
            limits[which] = needed[0]
    if limits:
        soft, hard = boot.nofile_soft, boot.nofile_hard
        path = os.path.join(req.root_dir, LIMITS_FILE)
        content = FILE_HEADER + "".join(f"{who:<5} {which:<4} nofile {val}\n"
                                        for who in ("*", "root")
                                        for which, val in (("soft", soft), ("hard", hard)))
        out.append(_file_change("limits.d", path, read_text(path), content,
                                "RLIMIT_NOFILE for new login sessions (pam_limits; '*' does not "
                                "cover root, so root has its own lines)."))
        if req.unit:
            path = unit_dropin(req.root_dir, req.unit)
            content = FILE_HEADER + f"[Service]\nLimitNOFILE={soft}:{hard}\n"
            out.append(_file_change("systemd drop-in", path, read_text(path), content,
                                    f"RLIMIT_NOFILE for {req.unit} when systemd starts it."))
            notes.append(f"the drop-in takes effect after 'systemctl daemon-reload && "
                         f"systemctl restart {req.unit}'.")
        if not snap.cap_sys_resource:
            notes.append("tuner lacks CAP_SYS_RESOURCE: the persisted nofile limits take effect "
                         "only for processes started by something that holds it (systemd, login).")
    elif req.unit:
        notes.append(f"--unit {req.unit}: RLIMIT_NOFILE already suffices; no drop-in needed.")
    return out


def _file_change(knob: str, path: str, old: Optional[str], content: str, why: str) -> Change:
    path = os.path.abspath(path)
    return Change(knob, "file", "file", None, f"file:{path}", old, content, why,
                  file_command(path, content), {"path": path})


def describe(change: Change, value: Any) -> str:
    """A value as the plan table shows it."""
    if change.kind == "alias":
        return f"{change.detail['address']}/32" if value else "absent"
    if change.kind == "file":
        if value is None:
            return "absent"
        lines = [l for l in value.splitlines() if l and not l.startswith("#")]
        return f"{len(lines)} setting(s)"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@\\-]+$")


def check_unit(unit: Optional[str]) -> Optional[str]:
    if unit is not None and (not _UNIT_RE.match(unit) or unit.startswith(".")):
        raise UsageError(f"--unit {unit!r} is not a systemd unit name (e.g. nginx or nginx.service)")
    return unit
