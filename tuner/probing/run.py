"""The CLI's side of `tuner probe`: pre-flight against the capacity model, then run
probes/ with progress and map its errors onto tuner's exit codes.

Pre-flight: the probe and the report must agree.  The same snapshot and model that
`tuner report --target N` shows decide whether a probe of N can succeed here,
described the way the probe will run (its source addresses, one listener per worker).
When a limit makes N impossible the probe is refused with that limit and the command
that lifts it.

After the run, each failure gets its fix from the knob table (add_fixes): the knob the
probe's limit is, the value it needs for the probe as it ran, and the `tuner apply`
command that sets it.

probes/ knows nothing of tuner's CLI; this module adapts its callbacks to a live bar
(terminal) or plain lines, and its exceptions to tuner's exit codes.
"""
from __future__ import annotations

import contextlib
import os
import resource
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

from probes import ProbeConfig, ProbeConfigError, launch
from probes import serverside
from probes.config import source_count, sources, worker_capacity

from tuner import assess, fixes, knobs, suggestion
from tuner.capacity import CAPPED, Report
from tuner.host.errors import TunerError, UsageError
from tuner.probing.progress import Progress
from tuner.host.numfmt import millis, number, rate as per_second, size, values

DEFAULT_SOURCE_NET = "127.0.0.0/8"


@dataclass
class Preflight:
    """The capacity model asked about the probe as it will run (or as it ran): its
    source addresses (source_net) and one destination per worker listener."""

    connections: int
    report: Report
    source_net: str = DEFAULT_SOURCE_NET
    destinations: int = 1
    problems: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def estimate_bytes_per_conn(self) -> int:
        return self.report.memory["idle_bytes_per_connection"]

    def refusal(self) -> str:
        return f"refusing to probe {number(self.connections)}: {'; '.join(self.problems)} (or pass --force)"

    def apply_command(self) -> suggestion.Suggestion:
        """`tuner apply` planning for this probe's configuration, so its plan changes the
        knobs this probe needs (a narrow --source-net needs a wider port range)."""
        return fixes.probe_apply(self.connections, self.report.netns, self.source_net, self.destinations)

    def fix_for(self, limit: Optional[str]) -> Optional[str]:
        """The table's fix for a limit the probe hit: the value N needs, under this
        probe's configuration, and the command that sets it."""
        # The probe names some knobs its own way (RLIMIT_NOFILE: its workers run at the
        # hard limit); the table says which knob a probe limit is.
        knob = knobs.for_probe_limit(limit)
        try:
            row = self.report.row(knob.name if knob is not None else limit)
        except StopIteration:
            return None
        if row.needed is not None and row.status != CAPPED:
            return (f"{row.name} needs {values(row.needed, row.unit)} for {number(self.connections)}: "
                    f"{self.apply_command().render()}")
        return f"{row.name}: {row.fix.render()}" if row.fix else None

    def to_dict(self) -> dict:
        return {"ok": self.ok, "problems": self.problems,
                "max_connections": self.report.max_connections, "binding": self.report.binding,
                "processes": self.report.processes["processes"],
                "estimate_kernel_bytes_per_conn": self.estimate_bytes_per_conn}


def check(connections: int, netns: Optional[str] = None, source_net: str = DEFAULT_SOURCE_NET,
          workers: Union[str, int] = "auto") -> Preflight:
    """Before the run: the model for the workers the probe is likely to run."""
    try:
        sources(source_net)   # the local probe: IPv4 only (its listener is 127.0.0.1)
        # The workers run at the hard limit; one too low for any connection is refused
        # here, naming it, before the model is asked about it.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard != resource.RLIM_INFINITY:
            worker_capacity(hard, 2)
    except ProbeConfigError as e:
        raise UsageError(str(e)) from None
    snap = assess.snapshot(netns)
    # One listener per worker: every worker is its own destination for the port range.
    if isinstance(workers, int):
        destinations = workers
    else:
        destinations = assess.build(connections, "loopback", netns, snap=snap).processes["processes"] or 1
    pre = model(connections, netns, source_net, max(destinations, 1), snap)
    rep = pre.report
    if rep.reachable is False:
        pre.problems.append(f"{rep.binding} allows {number(rep.max_connections)} connections, fewer than "
                            f"{number(connections)}; fix: {pre.fix_for(rep.binding)}")
    mem = rep.memory
    if mem.get("idle_fits_memory") is False and rep.binding != "MemAvailable":
        pre.problems.append(f"{number(connections)} idle connections need about "
                            f"{size(mem['idle_total_bytes'])} of kernel memory, more than "
                            f"MemAvailable; probe fewer connections")
    return pre


def model(connections: int, netns: Optional[str], source_net: str, destinations: int,
          snap=None) -> Preflight:
    rep = assess.build(connections, "loopback", netns, destinations=destinations, snap=snap,
                       source_count=source_count(source_net))
    return Preflight(connections, rep, source_net, destinations)


def add_fixes(result, pre: Preflight, netns: Optional[str]) -> None:
    """After the run: each failure's fix from the knob table, for the probe as it ran
    (its source net and its actual worker count)."""
    if result.errors:
        ran = model(pre.connections, netns, result.source_net, max(result.workers, 1))
        for e in result.errors:
            e.fix = ran.fix_for(e.limit)


@contextlib.contextmanager
def _as_tuner_errors():
    """A configuration that cannot run here is bad input (exit 2, nothing opened); a
    failure of the probe machinery itself is a failed run (exit 1)."""
    try:
        yield
    except ProbeConfigError as e:
        raise UsageError(str(e)) from None
    except launch.ProbeInterrupted as e:  # stopped before anything ran: the signal's own exit code
        raise TunerError(str(e), 128 + e.signum) from None
    except launch.ProbeError as e:
        raise TunerError(str(e)) from None


def run_probe(n: int, pre, quiet: bool = False, **settings):
    cfg = ProbeConfig(connections=n, **settings)
    with _as_tuner_errors():
        cfg.validate()
    with Progress(n, "probe", stream=sys.stderr, quiet=quiet) as bar:
        def on_plan(plan):
            bar.note(f"plan: {plan['describe']}; pre-flight: {number(pre.report.processes['processes'])} "
                     f"process(es) needed, max now {number(pre.report.max_connections)} "
                     f"({pre.report.binding} binds first)")

        def on_progress(established, verified, rate, phase, hold_left=None):
            # While holding, the verified connections are the ones held.
            figures = {"held": verified} if hold_left is not None else {"established": established}
            bar.update(verified, phase, hold_left, **figures, rate=per_second(rate))

        with _as_tuner_errors():
            return launch.run_probe(cfg, on_progress=on_progress, on_plan=on_plan)


def document(schema: str, body: dict) -> dict:
    """A probe's --json document: its schema, the host it ran on (what `tuner plot` names
    in its title; the UTS name, which --netns does not change), then the figures."""
    return {"schema": schema, "host": os.uname().nodename, **body}


def run_split(cfg, netns=None, quiet: bool = False):
    """`tuner probe --serve` / `--connect`: run the ServeConfig or ConnectConfig, with
    running totals on stderr (a live bar on a terminal, plain lines otherwise); its
    typed result (probes.serve.ServeResult, probes.connect.ConnectResult)."""
    with _as_tuner_errors():
        cfg.validate()
    serving = cfg.MODE == "serve"
    total = (cfg.expect or 0) if serving else cfg.connections
    meter = None if serving else ServerCpu(cfg.protocol()[0], netns)
    own = OwnCount(meter.pids, cfg.protocol()[0]) if meter is not None and cfg.step else None
    with Progress(total, "serve" if serving else "connect", stream=sys.stderr, quiet=quiet) as bar:
        def on_event(event):
            kind = event.get("event")
            if meter is not None:
                meter.on_event(event)
            if own is not None:
                own.on_event(event)
            if kind in ("listening", "plan"):
                bar.note(f"{kind}: {event['describe']}")
            elif kind == "progress" and serving:
                # verified of --expect, then accepted >= verified >= held, read together.
                bar.update(event["verified"], event["phase"], event.get("hold_left"),
                           accepted=event["accepted"], held=event["held"], failed=event["failed"],
                           over=event["over_expect"], rate=per_second(event["rate"]))
            elif kind == "progress":
                bar.update(event["verified"], event["phase"], event.get("hold_left"),
                           established=event["established"], rate=per_second(event["rate"]))
            elif kind == "step":
                bar.note(step_note(event))

        with _as_tuner_errors():
            result = launch.run(cfg, netns=netns, on_event=on_event)
    if meter is not None:
        meter.fill(result["cpu"])
    if own is not None:
        own.fill(result)
    return result


class OwnCount:
    """What the service counts itself against its own memory caps (its adapter's
    memory_caps: Redis's mem_clients_normal against maxmemory-clients, used_memory against
    maxmemory), read when each --step row is taken, while its connections are held: at
    the end of the run they are closed and the count is gone."""

    def __init__(self, pids: List[int], target):
        from tuner import apps   # only a --step run against a service on this host reads it

        self.readings: dict = {}
        self.view = self.adapter = None
        if pids:
            self.view = apps.base.view(min(pids), [(target.host, target.port)], depth=0)
            self.adapter = apps.find(self.view)

    def on_event(self, event: dict) -> None:
        if event.get("event") == "step" and self.adapter is not None:
            from tuner import apps, cost   # the reading's shape is the cost model's
            try:
                caps = self.adapter.memory_caps(self.view)
            except (OSError, ValueError, apps.Untrusted):
                caps = []        # a service gone or unreadable mid-run: the row says nothing
            self.readings[event["step"]] = [cost.own_reading(c) for c in caps if c.used is not None]

    def fill(self, result) -> None:
        """Each step row's readings, in the rows and in the ramp's copies of them."""
        ramp = result["ramp"] or {}
        for row in (result["steps"] or []) + [ramp.get("within"), ramp.get("over")]:
            if row is not None:
                row["service_own"] = self.readings.get(row["step"], [])


class ServerCpu:
    """The server's CPU (user + system of the processes that listen on its port, when
    that is on this host) over the opening: from the plan to the first progress event
    past it (every worker verified what it opened), beside the probe workers' own.

    The listeners are found again at the end: a server may start workers as the load
    comes (a Node cluster's are ready one by one), and a process that started during
    the opening counts all its CPU; one seen only at the end that started before it is
    left out (its CPU before the opening is unknown)."""

    def __init__(self, target, netns: Optional[str]):
        self.where = (target.host, target.port, netns)
        self.pids = server_pids(*self.where)
        self.start = self.end = self.t0 = None

    @staticmethod
    def cpu(pids) -> Dict[int, float]:
        from tuner.host import procfs   # only for --connect
        times = {pid: procfs.cpu_seconds(pid) for pid in pids}
        return {pid: t for pid, t in times.items() if t is not None}

    def finish(self) -> None:
        from tuner.host import procfs   # only for --connect
        later = [p for p in server_pids(*self.where) if p not in self.pids]
        born = [p for p in later if (procfs.started_seconds(p) or 0) >= (self.t0 or float("inf"))]
        self.start.update({p: 0.0 for p in born})
        self.pids = sorted(set(self.pids) | set(born))
        self.end = self.cpu(self.pids)

    def on_event(self, event: dict) -> None:
        from tuner.host import procfs   # only for --connect
        if event.get("event") == "plan" and self.pids:
            self.t0, self.start = procfs.uptime_seconds(), self.cpu(self.pids)
        elif event.get("event") == "progress" and event.get("phase") != "establish" and self.end is None \
                and self.start is not None:
            self.finish()

    def fill(self, cpu: dict) -> None:
        """Complete the result's `cpu` (probes.connect: the probe's side) with the
        server's and the sentence saying whose CPU bounds the opening."""
        if self.end is None and self.start is not None:
            self.finish()
        per_conn, per = cpu["probe_ms_per_conn"], cpu["per"]
        count = round(cpu["probe_seconds"] * 1000 / per_conn) if per_conn else 0
        if self.start is not None and self.end is not None:
            cpu["server_pids"] = self.pids
            # A process gone by the end counts what it had at the start: nothing of its own.
            cpu["server_seconds"] = round(sum(self.end.get(p, self.start[p]) - self.start[p]
                                              for p in self.start), 3)
            cpu["server_ms_per_conn"] = round(cpu["server_seconds"] * 1000 / count, 3) if count else None
        cpu["bound_by"], cpu["sentence"] = cpu_sentence(per_conn, cpu["server_ms_per_conn"], per)


def cpu_sentence(probe_ms, server_ms, per: str):
    """('server' | 'probe' | None, the summary's sentence) from CPU ms per connection."""
    what = "TLS handshakes" if per == "handshake" else "Opening connections"
    if probe_ms is None:
        return None, None
    if server_ms is None:
        return None, (f"{what}: {probe_ms:.2f} ms of the probe's CPU per {per} "
                      f"(the server's not seen: it does not listen on this host)")
    side, other = ("server", "probe") if server_ms >= probe_ms else ("probe", "server")
    mine, theirs = max(server_ms, probe_ms), min(server_ms, probe_ms)
    return side, (f"{what} bound by the {side}: {mine:.2f} ms of its CPU per {per} "
                  f"against the {other}'s {theirs:.2f} ms")


def step_note(row: dict) -> str:
    """One --step row as a progress note: 'step 3: 1,500 held; service 12.3 MiB + 1.2 MiB
    kernel, 0.12 s CPU; p99 4.1 ms (256 exchanges)'."""
    lat = row["latency_ms"]
    return (f"step {row['step']}: {number(row['connections'])} held; service "
            + (f"{size(row['service_memory_bytes'])} + {size(row['service_kernel_bytes'])} kernel, "
               f"{row['service_cpu_seconds']} s CPU" if row["service_memory_bytes"] is not None
               else "not on this host")
            + (f"; p99 {millis(lat['p99'])} ({number(row['exchanges'])} exchanges)" if lat else ""))


# -- the probe's JSON documents (one home: the CLI emits them, tuner plot reads them) ----
PROBE_SCHEMA = "tuner.probe/1"
SERVE_SCHEMA = "tuner.probe.serve/1"
CONNECT_SCHEMA = "tuner.probe.connect/3"
SCHEMAS = (PROBE_SCHEMA, SERVE_SCHEMA, CONNECT_SCHEMA)


def refusal_document(pre: Preflight) -> dict:
    """The loopback probe refused by pre-flight: the reason, nothing ran."""
    return document(PROBE_SCHEMA, {"preflight": pre.to_dict(), "refused": True, "ok": False,
                                   "stopped_by": "preflight", "reason": pre.refusal()})


def probe_document(pre: Preflight, result) -> dict:
    return document(PROBE_SCHEMA, {"preflight": pre.to_dict(), "refused": False, **result.to_dict()})


def serve_document(result) -> dict:
    return document(SERVE_SCHEMA, result.to_dict())


def connect_document(result) -> dict:
    return document(CONNECT_SCHEMA, result.to_dict())


# -- --connect: which side stalled, with what only tuner knows ---------------------------
# A knob's unit as what this host ran out of ('this host ran out of local ports ...').
RAN_OUT_OF = {"ports": "local ports", "bytes": "memory", "pages": "socket buffer memory"}


def add_service_cost(data: dict) -> None:
    """A --step run's `service`: what a connection costs the service (the slopes of its
    rows) and where its memory stops it (tuner.cost); None without service rows (no
    --step, or a service not on this host)."""
    rows = [r for r in data.get("steps") or () if r["service_memory_bytes"] is not None]
    if not rows:
        data["service"] = None
        return
    from tuner import cost   # only a --step run fits and projects
    data["service"] = cost.project(rows, data["ramp"]["pids"])


def explain_stall(result: dict, netns: Optional[str] = None) -> None:
    """Complete result['stalled'] (probes.serverside's sentence, composed again with what
    only tuner knows): when the server stalled, the room this host still had (the model
    for the client role) and, when the server listens on this host, its process and the
    `tuner diagnose` that explains it; when this host ran out, the knob's name as the
    table words it."""
    stalled = result["stalled"]
    stalled.update(room=None, process=None, diagnose=None)
    if stalled["side"] == "client":
        knob = knobs.for_probe_limit(stalled.get("limit"))
        if knob is not None:
            words = f"{RAN_OUT_OF.get(knob.unit, knob.unit)} ({knob.name})"
            stalled.update(serverside.stalled(result, ran_out_of=words))
        return
    if stalled["side"] != "server":
        return
    room = host_room(result, netns)
    server = local_server(result["address"], result["port"], netns)
    process = server[0] if server is not None else None
    stalled.update(serverside.stalled(result, server=process), room=room, process=process)
    stalled["sentence"] += evicted_words(result["steps"] or [])
    if room is not None:
        stalled["sentence"] += f"; this host had room for {number(room)} more"
    if server is not None:
        stalled["diagnose"] = fixes.port_diagnose(server[1], netns).render()


def evicted_words(steps: List[dict]) -> str:
    """'; it evicted 38 clients past its maxmemory-clients 6.0 MiB' when the service's own
    count (the rows' service_own, Redis INFO stats evicted_clients) rose during the run:
    the connections it closed were its choice, at its own cap."""
    first: dict = {}
    last: dict = {}
    for row in steps:
        for r in row.get("service_own") or ():
            if r.get("evicted") is not None:
                first.setdefault(r["name"], r["evicted"])
                last[r["name"]] = r["evicted"]
    return "".join(f"; it evicted {number(last[n] - first[n])} clients past its {n}"
                   for n in last if last[n] > first[n])


def host_room(result: dict, netns: Optional[str]) -> Optional[int]:
    """Connections this load host could still have opened to that server: the model's
    maximum for the client role (its sources, one destination) beyond those opened."""
    try:
        rep = assess.build(result["requested"], "client", netns,
                           source_count=max(result["source_addresses"], 1))
    except TunerError:
        return None
    if rep.max_connections is None:
        return None
    return max(rep.max_connections - result["attempted"], 0)


def local_server(address_text: str, port: int, netns: Optional[str]):
    """('nginx pid 812, 813', port) when the server listens on this host (in the probe's
    namespace), else None (server_pids)."""
    from tuner.host import procpid   # only when a server stalled

    pids = server_pids(address_text, port, netns)
    if not pids:
        return None
    names = {}
    for pid in pids:
        try:
            names.setdefault(procpid.proc_status(pid).get("Name", "?"), []).append(pid)
        except OSError:
            continue
    text = "; ".join(f"{name} pid {', '.join(map(str, p[:4]))}" + (" ..." if len(p) > 4 else "")
                     for name, p in names.items())
    return (text or None), port


def server_pids(address_text: str, port: int, netns: Optional[str]) -> List[int]:
    """The processes listening on the port when the address is this host's (in the
    probe's namespace), else []: by sock_diag and each process's lowest descriptors
    (tuner.diagnose.service), never by walking a big process's /proc/PID/fd."""
    import ipaddress   # these three: only for --connect

    from tuner.diagnose import service
    from tuner.host import localnet

    address = ipaddress.ip_address(address_text)
    try:
        local = address.is_loopback or any(a.get("address") == str(address) for a in localnet.read_addresses())
        return service.pids_by_port(port, netns) if local else []
    except (TunerError, OSError):
        return []
