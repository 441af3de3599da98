"""`tuner diagnose` as text: the verdict first, then the limits, listeners and fixes.

The JSON is Diagnosis.to_dict() (schema tuner.diagnose/3), so text and JSON cannot
disagree; numbers are formatted by render.number/value like every other table.  Every
string here may carry words the service chose (its comm, paths, config values, what it
answered): each goes through trust.safe_text on its way out (`_t`), before tuner's own
colours are added.
"""
from __future__ import annotations

from typing import Optional

from tuner import fit
from tuner.capacity import UNREADABLE
from tuner.host.memory import WORST_CASE
from tuner.host.numfmt import number, size
from tuner.host.trust import safe_text
from tuner.render import table, value


# A field is tuner's sentence around the service's words; the service's part of it is
# what could be long (an answer, an argv), so the cut is generous.
FIELD_LIMIT = 1000


def _t(text) -> str:
    """A field that may carry a service's words, safe for a terminal."""
    return safe_text(text, FIELD_LIMIT)


def _cell(v, unit: str) -> str:
    if v is None:
        return "-"
    return size(v) if unit == "bytes" else number(v)


def diagnose_text(d, wide: bool = False, width: Optional[int] = None) -> str:
    lines = [_t(d.verdict), ""]
    rows, notes = [], []
    for r in d.limits:
        current = ("unreadable (needs root)" if r.status == UNREADABLE and r.scope != "application"
                   else value(r.current, r.unit))
        rows.append([_t(r.name), r.scope, current, _cell(r.in_use, r.unit), _cell(r.headroom, r.unit),
                     number(r.allows), value(r.needed, r.unit), r.status] + ([_t(r.why)] if wide else []))
        if not wide and r.status not in ("ok", "n/a"):
            fix = f" Fix: {_t(r.fix.render())}." if r.fix and r.status in ("binds", "short", "capped", "full") else ""
            notes.append(f"  {_t(r.name)}{f' (pid {r.pid})' if r.pid else ''} ({r.status}): {_t(r.why)}{fix}")
    lines.append(table(rows, ["limit", "scope", "current", "used", "headroom", "connections",
                              "needed", "status"] + (["why"] if wide else []), width,
                       note=8 if wide else None, note_title="why:", tag=7))
    if notes:
        lines += ["", "why:"] + list(dict.fromkeys(notes))
    c = d.connections
    lines.append("")
    where = "" if d.own_netns else f" (network namespace {_t(d.netns or '?')})"
    procs = ", ".join(f"{p['pid']} ({safe_text(p['name'])})" for p in d.processes)
    lines.append(f"service: {procs}{where}")
    if d.listeners:
        lines.append(table([[f"{l['address']}:{l['port']}", number(l["backlog"]), number(l["queued"]),
                             number(l["reuseport_siblings"]), ", ".join(map(str, l["pids"]))]
                            for l in d.listeners],
                           ["listener", "backlog", "queued", "reuseport siblings", "pids"], width))
    else:
        lines.append("listeners: none (the process listens on no TCP port tuner can see)")
    by_port = ", ".join(f"{port}: {number(n)}" for port, n in c["by_port"].items())
    lines.append(f"connections held: {number(c['held'])} ({number(c['peers'])} distinct peer address"
                 f"{'' if c['peers'] == 1 else 'es'}; on ports {by_port or '-'}; "
                 f"{number(c['accept_queue'])} waiting in accept queues)")
    p_threads = sum(p["threads"] for p in d.processes)
    lines.append(f"threads: {number(p_threads)}" + (" (one per connection: thread limits count)"
                                              if d.thread_per_connection else ""))
    m = d.memory
    lines.append(f"kernel memory per connection ({m['source']}): idle {size(m['idle_bytes_per_connection'])}, "
                 f"{WORST_CASE} {size(m['worst_bytes_per_connection'])}")
    lines = fit.lines(lines, width)
    if d.fix:
        lines += ["", "fix:"]
        for f in d.fix:
            # A command is wrapped with '\' so that it still runs as pasted; advice (an
            # application's setting) wraps as prose.
            text = f"  {_t(f.render())}"
            lines.append(fit.command(text, width) if f.is_command else fit.wrap(text, width))
            lines.append(fit.wrap(f"      {_t(f.why)}", width))
    tail = ([""] + ["notes:"] + [f"  {_t(n)}" for n in d.notes] if d.notes else []) + (
        ["unreadable without root: " + ", ".join(map(_t, d.unreadable))] if d.unreadable else [])
    return "\n".join(lines + fit.lines(tail, width))
