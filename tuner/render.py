"""Turn results into text: tabulate tables for people, JSON for programs.

Every command that prints a table prints the same data with --json; the JSON is the
result's to_dict(), so the two can never disagree. Each text function takes the width of
the terminal it is shown on (tuner.fit; None when piped: every line whole).
"""
from __future__ import annotations

import json
from typing import Any, Iterable, List, Optional

from . import fit
from .capacity import Report, changes_wanted, next_step
from tuner.host.numfmt import millis, number, of, rate, seconds, size, values
from tuner.host.memory import WORST_CASE
from tuner.host.trust import safe_text


def value(vals, unit: str = "") -> str:
    """A knob's value (a list of amounts) as a table cell: numfmt.values."""
    return values(vals, unit)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


def table(rows: Iterable[Iterable[Any]], headers: List[str], width: Optional[int] = None,
          note: Optional[int] = None, note_title: str = "", tag: Optional[int] = None) -> str:
    """A table fitted to `width` (tuner.fit.table); `note` is a long-text column that
    moves under the table when it does not fit, `tag` a status shown with the row's name
    when rows have to be stacked."""
    return fit.table(rows, headers, width, note, note_title, tag)


def report_verdict(report: Report) -> List[str]:
    """The answer first: what the host holds now against the target, then the one next
    command (capacity.next_step, the JSON's `next`)."""
    most, by = number(report.max_connections), report.binding or "-"
    if report.target is None:
        head = f"max concurrent connections now: {most} (binding limit: {by})"
    elif report.reachable is None:
        head = f"target {number(report.target)}: reachability unknown (nothing counts it)"
    else:
        head = (f"target {number(report.target)}: " + ("reachable" if report.reachable else "NOT reachable")
                + f" now (max {most}; binding limit: {by})" + _apply_need(report))
    return [head, f"next: {next_step(report)}"]


def _apply_need(report: Report) -> str:
    """Whether the apply the next line names is required for the target or only advised:
    a reachable target with settings below what it wants (headroom: buffers, backlogs,
    teardown tables) said so in the verdict itself, not left to the rows below it."""
    wanted = changes_wanted(report)
    if not wanted:
        return ""
    if not report.reachable:
        return "; tuner apply required"
    n = len(wanted)
    return f"; tuner apply advised, not required ({number(n)} setting{'s' if n > 1 else ''} below what it wants, for headroom)"


def _report_cells(r) -> dict:
    current = "unreadable (needs root)" if r.status == "unreadable" else value(r.current, r.unit)
    allows = number(r.allows) + (" /process" if r.caps == "per-process" and r.allows is not None else "")
    if r.allows is not None and r.caps not in ("connections", "per-process"):
        allows += f" {r.caps}"
    fix = r.status in ("binds", "short", "capped", "full", "near") and r.fix
    return {"knob": r.name, "scope": r.scope, "current": current, "needed": value(r.needed, r.unit),
            "allows": allows, "status": r.status, "why": f"{r.why} Fix: {r.fix.render()}." if fix else r.why}


# The knob table's columns, and the compact ones shown when those do not fit the terminal.
REPORT_COLUMNS = ["knob", "scope", "current", "needed", "allows", "status"]
COMPACT_COLUMNS = ["knob", "current", "needed", "status"]


def report_table(report: Report, wide: bool = False, width: Optional[int] = None) -> List[str]:
    """The knob table (compact, with knob, current, needed and status, when the whole one
    does not fit `width`), then why-notes for the rows that are not ok (every row's
    with `wide`)."""
    cells = [_report_cells(r) for r in report.rows]
    headers = REPORT_COLUMNS
    if width is not None and fit.widest(table([[c[h] for h in headers] for c in cells], headers)) > width:
        headers = COMPACT_COLUMNS
    rows = [[c[h] for h in headers] + ([c["why"]] if wide else []) for c in cells]
    out = [table(rows, headers + (["why"] if wide else []), width, note=len(headers) if wide else None,
                 note_title="why:", tag=headers.index("status")), ""]
    notes = [f"  {c['knob']} ({c['status']}): {c['why']}" for c in cells if c["status"] not in ("ok", "n/a")]
    if notes and not wide:
        out += ["why:"] + notes + [""]
    return out


def report_text(report: Report, wide: bool = False, width: Optional[int] = None) -> str:
    """The verdict and the next command, the knob table, then the figures behind them."""
    lines = report_verdict(report) + [""] + report_table(report, wide, width)
    where = f" in netns {report.netns}" if report.netns else ""
    lines.append(f"role: {report.role}{where}; target: {number(report.target)}")
    p = report.processes
    fd_note = ("hard RLIMIT_NOFILE can be raised (CAP_SYS_RESOURCE)" if p["hard_limit_raisable"]
               else f"hard RLIMIT_NOFILE {number(p['fd_ceiling'])} cannot be raised (no CAP_SYS_RESOURCE)")
    if p["processes"] is None:
        lines.append(f"processes needed for {number(p['for_connections'])}: none can hold a connection "
                     f"here: RLIMIT_NOFILE {number(p['fd_ceiling'])} is at or below the {p['reserved_per_process']} "
                     f"descriptors each process keeps for itself; raise it, or shard over processes "
                     f"with a higher limit ({fd_note})")
    else:
        lines.append(f"processes needed for {number(p['for_connections'])}: {number(p['processes'])} "
                     f"x {number(p['connections_per_process'])} connections; {fd_note}")
    m = report.memory
    user = m.get("user_bytes_per_connection") or 0
    lines.append(f"kernel memory per connection ({m['source']}): idle "
                 f"{size(m['idle_bytes_per_connection'] - user)}, {WORST_CASE} "
                 f"{size(m['worst_bytes_per_connection'] and m['worst_bytes_per_connection'] - user)}")
    if user:
        lines.append(f"with --tls the probe's TLS {m['user_bytes_tls_version']} state adds {size(user)} of user "
                     "memory to each, counted in both (measured"
                     + ("" if m.get("user_bytes_tls_version_asked") else
                        "; the dearer version's: --tls-version 1.2|1.3 for one") + ")")
    lines.append(f"for {number(m['for_connections'])}: idle {size(m['idle_total_bytes'])}, {WORST_CASE} "
                 f"{size(m.get('worst_total_bytes'))}; MemAvailable {size(m['mem_available_bytes'])}, "
                 f"tcp_mem high {size(m['tcp_mem_high_bytes'])}")
    verdict = []
    if m.get("idle_fits_memory") is False:
        verdict.append("idle connections do not fit in MemAvailable")
    if m.get("worst_fits_memory") is False:
        verdict.append("full default buffers would not fit in MemAvailable "
                       "(apply --shrink-buffers lowers the defaults)")
    if m.get("worst_buffers_fit_tcp_mem") is False:
        verdict.append("full default buffers exceed tcp_mem")
    if verdict:
        lines.append("memory: " + "; ".join(verdict))
    s = report.sockets_now
    lines.append(f"sockets now: {number(s['sockets_used'])} used, TCP {number(s['tcp_inuse'])} in use, "
                 f"{number(s['tcp_tw'])} TIME_WAIT, {number(s['tcp_orphan'])} orphaned, "
                 f"{number(s['tcp_mem_pages'])} pages of buffers")
    if report.unreadable:
        lines.append("unreadable without root: " + ", ".join(report.unreadable))
    return "\n".join(fit.lines(lines, width))


# ---------------------------------------------------------------- apply / revert

def plan_text(plan, width: Optional[int] = None) -> str:
    """The plan as apply shows it before changing anything: table, notes, commands."""
    # Here: the setting kinds (pyroute2's among them) load only for a plan (report's start-up).
    from .settings import kind

    lines: List[str] = []
    where = f" (netns {plan.netns})" if plan.netns else ""
    if plan.changes:
        rows = [[c.knob, c.where, kind(c.kind).describe(c.current, c.knob), kind(c.kind).describe(c.new, c.knob),
                 c.why] for c in plan.changes]
        lines += [f"plan for {number(plan.target)} connections, role {plan.role}{where}:",
                  table(rows, ["knob", "where", "current", "new", "why"], width, note=4, note_title="why:")]
    else:
        lines.append(f"nothing to change for {number(plan.target)} connections, role {plan.role}{where}: "
                     f"current settings already allow it")
    for s in plan.skipped:
        lines.append(f"not changed: {s['knob']} ({value(s['current'])} -> {value(s['needed'])}): "
                     f"{s['reason']}")
    m = plan.memory
    if m.get("worst_total_bytes_before") is not None:
        text = f"kernel memory for {number(plan.target)}: {WORST_CASE} {size(m['worst_total_bytes_before'])}"
        if m["shrink_buffers"]:
            text += f" before, {size(m['worst_total_bytes_after'])} after --shrink-buffers"
        elif m.get("worst_total_bytes_if_shrunk") != m["worst_total_bytes_before"]:
            text += (f"; --shrink-buffers would lower the defaults to make it "
                     f"{size(m.get('worst_total_bytes_if_shrunk'))}")
        text += f" (MemAvailable {size(m.get('mem_available_bytes'))})"
        lines.append(text)
    lines += [f"note: {n}" for n in plan.notes]
    for c in plan.changes:
        diff = kind(c.kind).diff(c.detail, c.current, c.new)
        if diff:
            lines += ["", f"{c.knob} ({c.where}) changes:", diff]
    lines = fit.lines(lines, width)
    if plan.changes:
        lines += ["", "equivalent shell commands:"] + [fit.command(c.command, width) for c in plan.changes]
    return "\n".join(lines)


def application_text(outcome, width: Optional[int] = None) -> str:
    """A dry run's word on the service's own cap below the target (apply --pid): apply
    cannot change it, so the plan above does not reach the target while it binds."""
    a = outcome.application     # the adapter's words: the service's config path, its argv
    lines = [f"not reachable while the application's cap binds: {safe_text(a['knob'], 1000)} holds {number(a['allows'])}, "
             f"below the target {number(outcome.plan.target)}, whatever apply changes"]
    if a.get("fix"):
        lines.append(f"its fix: {safe_text(a['fix'], 1000)}")
    return "\n".join(fit.lines(lines, width))


def apply_text(outcome, width: Optional[int] = None) -> str:
    lines = []
    if outcome.applied:
        lines.append(f"applied {len(outcome.applied)} change(s); journal: {outcome.journal} "
                     f"('tuner revert' undoes them)")
    a = outcome.after
    if a:
        target = outcome.plan.target
        if a["reachable"] is None:
            lines.append(f"after apply: reachability of {number(target)} unknown (nothing counts it)")
        else:
            lines.append(f"after apply: target {number(target)} reachable: "
                         + ("yes" if a["reachable"] else f"no, {safe_text(a['binding'], 1000)} binds first")
                         + f" (host-wide limit now {number(a['max_connections'])}"
                         + ("" if a.get("application") else f", set by {safe_text(a['binding'] or '-', 1000)}")
                         + ")")
        src = a.get("source_addresses") or {}
        if outcome.plan.role != "server" and src.get("count") is not None:
            lines.append("source addresses for outbound connections"
                         + (f" on {src['dev']}" if src.get("dev") else "") + f": {number(src['count'])}")
        p = a["processes"]
        if p["processes"] is None or p["processes"] > 1:
            cap = ("" if p["hard_limit_raisable"] else
                   f"; the hard RLIMIT_NOFILE {number(p['fd_ceiling'])} cannot be raised here "
                   f"(no CAP_SYS_RESOURCE)")
            needs = ("no number of processes can hold it: raise the limit" if p["processes"] is None
                     else f"{number(target)} needs {number(p['processes'])} processes")
            lines.append(f"per process: {number(p['connections_per_process'])} connections each, so "
                         f"{needs}{cap}")
        for s in a["still_binding"]:
            fix = f": {s['fix']}" if s["fix"] else ""
            lines.append(f"still binding: {s['knob']} = {value(s['current'])}{fix}")
    return "\n".join(fit.lines(lines, width))


def revert_text(outcome, width: Optional[int] = None, preview: bool = False) -> str:
    """The revert table, then how it ended; `preview`: what a revert is about to do
    (the question follows)."""
    if not outcome.found:
        return fit.wrap(f"nothing to revert: no journal at {outcome.journal}", width)
    if not outcome.rows:
        return fit.wrap(f"nothing to revert: the journal at {outcome.journal} lists no changes", width)
    # Here: the setting kinds (pyroute2's among them) load only for a revert (report's start-up).
    from .settings import kind

    # Why an entry was left (drifted, failed, gone) is its own column, which moves
    # under the table on a narrow terminal.
    reasons = any(r.reason for r in outcome.rows)
    rows = [[r.knob, r.where] + [kind(r.kind).describe(v, r.knob) for v in (r.current, r.wrote, r.original)]
            + [r.action] + ([r.reason] if reasons else []) for r in outcome.rows]
    lines = [table(rows, ["knob", "where", "now", "tuner wrote", "original", "action"]
                   + (["why"] if reasons else []), width, note=6 if reasons else None, note_title="why:")]
    if preview:
        lines.insert(0, "tuner revert will:")
    elif outcome.dry_run:
        lines.append("dry run: nothing was changed")
    elif outcome.complete:
        lines.append("everything tuner changed is back as it was; journal removed")
    else:
        lines.append(f"not everything was restored; what is left stays in {outcome.journal}")
    if outcome.journal_error:
        lines.append(f"could not rewrite the journal ({outcome.journal_error}): it still lists "
                     f"settings restored above; the next 'tuner revert' finds them back as "
                     f"they were and drops them")
    return "\n".join(fit.lines(lines, width))


def status_text(st, width: Optional[int] = None) -> str:
    """`tuner status`: the verdict, then each change tuner made (now against what it
    wrote, and whether a boot sets it), then the persisted files, then what is wrong."""
    if not st.found:
        return fit.wrap(f"tuner has changed nothing here: no journal at {st.journal}", width)
    bad = [(c.knob, c.where, c.status, c.reason) for c in st.changes if c.status != "in effect"] + [
        (f.knob, f.path, f.status, f.reason) for f in st.files if f.status != "in effect"]
    total = len(st.changes) + len(st.files)
    lines = [f"in effect: all {total} change(s) tuner made, as the journal lists them" if not bad else
             f"NOT in effect: {len(bad)} of {total} change(s): "
             + ", ".join(f"{knob} ({state})" for knob, _, state, _ in bad)]
    if bad:
        lines.append(f"next: {st.next_step()}")
    if st.changes:
        # Here: the setting kinds (pyroute2's among them) load only for status (report's start-up).
        from .settings import kind

        # "at boot" only where a change is a boot setting (a host sysctl): a namespace's
        # and a process's end with them.
        boot = any(c.at_boot is not None for c in st.changes)
        rows = [[c.knob, c.where, kind(c.kind).describe(c.wrote, c.knob), kind(c.kind).describe(c.now, c.knob),
                 c.status] + (["-" if c.at_boot is None else ("yes" if c.at_boot else "no")] if boot else [])
                for c in st.changes]
        lines += ["", table(rows, ["knob", "where", "tuner wrote", "now", "status"] + (["at boot"] if boot else []),
                            width, tag=4)]
    if st.files:
        rows = [[f.knob, f.path, number(len(f.settings)), f.status] for f in st.files]
        lines += ["", table(rows, ["file", "path", "settings", "status"], width, tag=3)]
    if bad:
        lines += ["", "why:"] + [f"  {knob} ({state}): {where}: {reason}" for knob, where, state, reason in bad]
    unpersisted = [c.knob for c in st.changes if c.at_boot is False and c.boot_value is None]
    if unpersisted:
        lines += ["", "not persisted (lost at reboot; tuner apply --persist writes sysctl.d): "
                  + ", ".join(unpersisted)]
    last = st.applies[-1] if st.applies else None
    lines += ["", f"journal: {st.journal}" + (f"; last apply {last['at']}: tuner {' '.join(last['argv'])}"
                                              if last else "")]
    return "\n".join(fit.lines(lines, width))


def kernel_cell(r: dict) -> str:
    """A --serve or --connect run's kernel memory per connection, only when the run could
    measure it: Slab and sockstat are shared with the rest of the host, so a busy host (or
    a run that held nothing: a total divided by one) reads "not measurable" with the
    reason, as the local probe's table does (issue 28: -111,840 B slab was printed)."""
    note = r.get("kernel_figures_note") or "see the JSON"
    if not r.get("kernel_figures_reliable"):
        return f"not measurable ({'' if note.startswith('no connections') else 'host busy: '}{note})"
    buffers = round(r["kernel_tcp_mem_bytes_per_conn"])
    return (f"{number(r['kernel_slab_bytes_per_conn'])} B slab, "
            + (f"{number(buffers)} B socket buffers" if buffers >= 0 else
               "socket buffers not measurable (host busy: TCP buffer pages fell meanwhile)"))


def probe_text(result, preflight=None, width: Optional[int] = None) -> str:
    """The probe's summary as a two-column table, its failures, and the fixes (the knob
    table's needed value and command where the limit is a knob, the hint otherwise)."""
    estimate_bytes_per_conn = preflight.estimate_bytes_per_conn if preflight else None
    kernel = f"{number(result.kernel_slab_bytes_per_conn)} B slab"
    if not result.kernel_figures_reliable:
        # Slab is host-wide: other work during the run can swamp the probe's growth.
        kernel = f"not measurable (host busy: {result.kernel_figures_note})"
    elif estimate_bytes_per_conn:
        kernel += (f" (report estimated {number(estimate_bytes_per_conn)} B, measured/estimate "
                   f"{result.kernel_slab_bytes_per_conn / estimate_bytes_per_conn:.2f})")
    rows = [
        ["verified", f"{number(result.verified)} of {number(result.requested)}"],
        ["established", number(result.established)],
        ["failed / mismatches", f"{number(result.failed)} / {number(result.mismatches)}"],
        ["workers", f"{result.workers} x up to {number(result.per_worker)} "
                    f"(RLIMIT_NOFILE {number(result.nofile)})"],
        ["establish", f"{seconds(result.seconds_establish)} ({number(result.rate_per_s)} conn/s)"],
        ["exchange tail / total", f"{seconds(result.seconds_exchange)} / {seconds(result.seconds_total)}"],
        ["hold / close", f"{seconds(result.seconds_hold)} / {seconds(result.seconds_close)}"],
        ["kernel memory per connection", kernel],
        ["socket buffers per connection", f"{number(round(result.kernel_tcp_mem_bytes_per_conn))} B (sockstat TCP mem)"],
        ["user memory per connection", f"{number(result.user_bytes_per_conn)} B (workers' USS "
                                       f"{size(result.user_uss_bytes)})"],
        ["TCP sockets before / peak / after", f"{number(result.sockets_baseline)} / "
                                              f"{number(result.peak_sockets)} / {number(result.sockets_after)}"],
        ["listen overflows", number(result.listen_overflows)],
    ]
    head = ("all connections verified" if result.ok else
            f"FELL SHORT: stopped by {result.stopped_by}" + (" (interrupted)" if result.interrupted else ""))
    lines = [head, table(rows, ["figure", "value"], width)]
    errors = [{"side": e.side, "op": e.op, "errno": e.errno, "count": e.count, "limit": e.limit,
               "first_message": e.first_message, "hint": e.fix or e.hint} for e in result.errors]
    split_errors(lines, errors, width)
    return "\n".join(fit.lines(lines, width))


ERROR_HEADERS = ["side", "op", "errno", "count", "limit", "first message"]


def split_errors(lines: List[str], errors: List[dict], width: Optional[int] = None) -> None:
    """The failures by kind (the first message moves under the table on a narrow
    terminal), then each distinct fix."""
    if errors:
        lines += ["", table([[e["side"], e["op"], e["errno"], number(e["count"]), e["limit"] or "-",
                              e["first_message"]] for e in errors], ERROR_HEADERS, width, note=5,
                            note_title="first messages:")]
        for hint in dict.fromkeys(e["hint"] for e in errors if e["hint"]):
            lines.append(f"fix: {hint}")


def serve_text(r: dict, max_clients: int = 20, width: Optional[int] = None) -> str:
    """`tuner probe --serve`: totals per client address and overall."""
    # Here: the probe's serve side loads only for serve's text (report's start-up).
    from probes.serve import held_text
    from probes.wire import FAILURES

    def row(name, c):
        return [name, number(c["accepted"]), number(c["verified"]),
                number(sum(c[k] for k in FAILURES)), number(c["over_expect"]), number(c["dropped"])]

    head = (f"{'served' if r['ok'] else 'FELL SHORT'}: {number(r['verified'])} verified"
            + (f" of {number(r['expect'])} expected" if r["expect"] else "")
            + f" on {r['listen']}, ended by {r['stopped_by']}")
    clients = sorted(r["clients"], key=lambda c: -c["accepted"])
    rows = [row(c["address"], c) for c in clients[:max_clients]]
    if len(clients) > max_clients:
        rest = {k: sum(c[k] for c in clients[max_clients:]) for k in clients[0] if k != "address"}
        rows.append(row(f"{len(clients) - max_clients} more", rest))
    rows.append(row("all", {**r, "over_expect": r["over_expect"], **r["failures"]}))
    lines = [head, table(rows, ["client", "accepted", "verified", "failed", "over --expect", "dropped"], width), "",
             table([["failed by kind", ", ".join(f"{k.replace('_', '-')} {number(v)}" for k, v in r["failures"].items())],
                    ["peak concurrent", f"{number(r['peak_concurrent'])} ({r['workers']} worker(s))"],
                    ["kernel memory per connection", kernel_cell(r)],
                    ["held at end / pending", f"{number(r['held_at_end'])} / {number(r['pending_at_end'])}"],
                    ["expected ones held", held_text(r)],
                    ["served for", f"{seconds(r['seconds'])}"]], ["figure", "value"], width)]
    split_errors(lines, r["errors"], width)
    return "\n".join(fit.lines(lines, width))


# The server's ways of ending connections, as the --connect table names them.
SERVER_ROWS = (
    ("not_listening", "refused at connect (nothing listens)"),
    ("not_connected", "no SYN-ACK (listen backlog full?)"),
    ("no_answer", "accepted, never answered"),
    ("refused", "refused at open"),
    ("closed", "closed before answering"),
    ("reset", "reset before answering"),
    ("tls_failed", "failed the TLS handshake"),
    ("tls_stalled", "stalled in the TLS handshake"),
    ("closed_in_hold", "closed during the hold"),
    ("reset_in_hold", "reset during the hold"),
    ("check_refused", "refused at the second check"),
    ("check_silent", "silent at the second check"),
)


def latency_cell(lat: Optional[dict]) -> str:
    return "-" if not lat else " / ".join(millis(lat[k]) for k in ("p50", "p90", "p99", "max"))


def traffic_rows(r: dict) -> List[list]:
    """The exchanges on held connections (--ping-every, --step): counts and the hold's
    latency."""
    pings = r.get("pings") or {}
    if not pings.get("sent"):
        return []
    rows = [["exchanges on held connections", f"{number(pings['sent'])} sent, {number(pings['answered'])} "
                                              f"answered, {number(pings['late'])} late, "
                                              f"{number(pings['refused'])} refused"
             + (f" (one per {seconds(r['ping_every'])} each)" if r.get("ping_every") else "")]]
    if r.get("latency_ms"):
        rows.append([f"latency in the hold p50/p90/p99/max ({number(r['latency_exchanges'])})",
                     latency_cell(r["latency_ms"])])
    return rows


def step_table(r: dict, width: Optional[int]) -> List[str]:
    """--step: one row per step (the service's figures are '-' when it is not on this
    host), and the latency sentence."""
    rows = [[number(s["connections"]), size(s["service_memory_bytes"]),
             ("~" if s.get("service_sampled") else "") + size(s["service_kernel_bytes"]),
             number(s["service_cpu_seconds"], 2), latency_cell(s["latency_ms"])] for s in r["steps"]]
    lines = ["", table(rows, ["held", "service memory", "sockets' kernel", "CPU s",
                              "p50 / p90 / p99 / max"], width)]
    sampled = [s["service_sampled"] for s in r["steps"] if s.get("service_sampled")]
    if sampled:
        lines.append(f"~ estimated from a sample: up to {number(max(sampled))} held sockets read "
                     f"through the service's descriptors")
    if r.get("service"):
        lines.append(r["service"]["sentence"])
    if r["ramp"].get("sentence"):
        lines.append(r["ramp"]["sentence"])
    return lines


def tls_rows(tls: Optional[dict]) -> list:
    """--connect over TLS: what was verified, what the handshakes negotiated and took."""
    if not tls:
        return []
    trust = ("NOT VERIFIED (--insecure)" if tls["insecure"] else
             f"verified against {tls['ca'] or 'the system store'} for {tls['server_name']!r}")
    kinds = "; ".join(f"{k['version']} {k['cipher']} {k['group']} x{number(k['count'])}" for k in tls["negotiated"][:3])
    ms = tls["handshake_ms"]
    took = "" if not ms else f"; p50 {ms['p50']:g} ms, p90 {ms['p90']:g} ms, p99 {ms['p99']:g} ms"
    return [["TLS certificate", trust],
            ["TLS negotiated", kinds or "-"],
            ["TLS handshakes", f"{number(tls['handshakes_full'])} full, {number(tls['handshakes_resumed'])} resumed"
                               + took]]


def connect_text(r: dict, width: Optional[int] = None) -> str:
    """`tuner probe --connect`: one sentence naming the side that stalled, then the table.
    The sentence carries the server's words and its process's comm: safe_text (the
    server's own answers are cut shorter, as the table shows them)."""
    stalled = r["stalled"]
    head = [safe_text(stalled["sentence"], 1000) + ("" if r["ok"] else f" (stopped by {r['stopped_by']}"
                                   + (", interrupted)" if r["interrupted"] else ")"))]
    if stalled.get("diagnose"):
        head.append(f"why: {stalled['diagnose']}")
    if (r.get("tls") or {}).get("insecure"):
        head.append("TLS certificates were NOT verified (--insecure)")
    server = r["server"]
    rows = [
        ["verified" + (" twice" if r["checked_twice"] else " (once: the run ended before its hold)"),
         f"{number(r['verified'])} of {number(r['requested'])} to {r['target']} ({r['protocol']})"],
        ["established / answered at open / failed", f"{number(r['established'])} / {number(r['answered'])} / "
                                                   f"{number(r['failed'])}"],
        ["in the server's accept queue, never accepted", number(r.get("unaccepted", 0) + server["queued"])],
        *[[f"server: {label}", number(server[key])] for key, label in SERVER_ROWS if server[key]],
        *[[f"server said ({w['when']})", f"{safe_text(w['words'], 200)} x{number(w['count'])}"]
          for w in server["words"]],
        ["workers / source addresses", f"{r['workers']} / {r['source_addresses'] or 'kernel-chosen'}"
                                       + (f" in {r['source_net']}" if r["source_net"] else "")],
        ["verified in", "-" if r["seconds_verified"] is None else
                        f"{seconds(r['seconds_verified'])} ({number(r['rate_per_s'])} conn/s)"],
        ["hold / second check", f"{seconds(r['seconds_hold'])} / "
                                + ("-" if r["seconds_check"] is None else seconds(r["seconds_check"]))],
        ["kernel memory per connection", kernel_cell(r)],
        ["probe's user memory per connection", "-" if r["user_bytes_per_conn"] is None
                                               else f"{number(r['user_bytes_per_conn'])} B"],
        *tls_rows(r.get("tls")),
        *([["CPU", r["cpu"]["sentence"]]] if r.get("cpu") and r["cpu"]["sentence"] else []),
    ]
    if r.get("mismatches"):
        rows.insert(2, ["mismatches", number(r["mismatches"])])
    rows += traffic_rows(r)
    lines = [*head, table(rows, ["figure", "value"], width)]
    if r.get("steps"):
        lines += step_table(r, width)
    # The server's side is in the table; the error rows are this host's, with their fixes.
    split_errors(lines, [e for e in r["errors"] if e["side"] != "server"], width)
    return "\n".join(fit.lines(lines, width))
