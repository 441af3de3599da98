"""`tuner metrics`: the report's figures for Prometheus, as a textfile or over HTTP.

Every figure comes from `tuner.assess.build` (what `tuner report --json` prints), read
fresh at each scrape by a custom collector: no gauges set once, no formula of this
module's own.  METRICS below is the one list of what is exported; docs/metrics.md's
"Metrics" table and the man page's METRICS section are generated from it
(`markdown_table`, `roff_section`), so the documentation cannot drift from the code.

prometheus_client does the exposition format, the HTTP server and the atomic textfile
write; this module only says what to export and checks the user's --listen/--textfile
before anything is bound or written.
"""
from __future__ import annotations

import ipaddress
import os
import queue
import signal
import stat
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

from tuner import __version__
from tuner.host import trust
from tuner.host.errors import TunerError, UsageError
from tuner.host.memory import WORST_CASE
from tuner.host.trust import safe_text

TEXTFILE_NAME = "tuner.prom"   # node_exporter's textfile collector reads *.prom only
GAUGE = "gauge"


@dataclass(frozen=True)
class Scrape:
    """One reading of the host: the report and what the scrape itself cost."""

    report: Optional[object]          # capacity.Report, or None when reading failed
    duration: float
    error: Optional[str] = None
    # With --pid/--port/--unit: tuner.diagnose.evaluate's Diagnosis.to_dict(), or the reason it
    # could not be read (the service stopped, its port closed) in service_error.
    service: Optional[dict] = None
    service_error: Optional[str] = None
    service_asked: bool = False


@dataclass(frozen=True)
class Metric:
    name: str
    type: str
    labels: Tuple[str, ...]
    help: str
    # Scrape (or, for PROBE_METRICS, a probe result dict) -> (label values, value)
    # pairs; an empty iterable exports no sample.
    samples: Callable[[Any], Iterable[Tuple[Tuple[str, ...], float]]]
    service: bool = False   # exported only with --pid/--port/--unit


def _rep(fn):
    """Samples from the report only (none when the scrape failed to read the host)."""
    return lambda s: () if s.report is None else fn(s.report)


def _svc(fn):
    """Samples from the service's diagnosis (none without --pid/--port/--unit)."""
    return lambda s: () if s.service is None else fn(s.service)


def _capacity(r):
    return [((r.role,), r.max_connections)] if r.max_connections is not None else []


def _binding(r):
    return [((r.role, r.binding), 1)] if r.binding else []


def _limits(r):
    return [((row.name, row.scope, row.caps), row.allows) for row in r.rows if row.allows is not None]


def _utilization(r):
    return [((row.name,), row.utilization) for row in r.rows if row.utilization is not None]


def _status(r):
    return [((row.name, row.status), 1) for row in r.rows]


def _memory(r):
    m = r.memory
    return [((estimate,), m[key]) for estimate, key in (("idle", "idle_bytes_per_connection"),
                                                        ("worst", "worst_bytes_per_connection"))
            if m.get(key) is not None]


def _reachable(r):
    return [] if r.target is None or r.reachable is None else [((str(r.target),), int(r.reachable))]


def _build_info(_s):
    return [((__version__,), 1)]


# The exported metrics, in exposition order. Names follow Prometheus conventions: base
# units in the name (_connections, _bytes, _seconds), _ratio for 0..1, _info for a
# constant 1 whose labels carry the value.
METRICS: List[Metric] = [
    Metric("tuner_capacity_connections", GAUGE, ("role",),
           "Most concurrent connections the host can take now for the role: the smallest "
           "allowance of the limits that cap connections (report max_connections). Limits "
           "counted net of what is in use (open files, MemAvailable, conntrack) shrink as "
           "connections open.", _rep(_capacity)),
    Metric("tuner_connections_open", GAUGE, ("role",),
           "Connections open now as the role counts them: TCP sockets in use (sockstat) per "
           "socket a connection takes, two for loopback (report sockets_now.connections).",
           _rep(lambda r: [((r.role,), r.sockets_now["connections"])])),
    Metric("tuner_binding_limit_info", GAUGE, ("role", "knob"),
           "1 for the limit that binds first (sets tuner_capacity_connections) (report binding).",
           _rep(_binding)),
    Metric("tuner_limit_connections", GAUGE, ("knob", "scope", "caps"),
           "Connections each limit allows at its current value (report rows[].allows); caps "
           "says what it counts: connections (decides capacity), per-process, in-flight, "
           "teardown.", _rep(_limits)),
    Metric("tuner_limit_utilization_ratio", GAUGE, ("knob",),
           "In use / the limit's value, 0 to 1, for limits with a count in use: open files "
           "(file-nr), tcp_mem pages, orphans, TIME_WAIT, conntrack entries, the cgroup's "
           "memory (report rows[].utilization).", _rep(_utilization)),
    Metric("tuner_limit_status_info", GAUGE, ("knob", "status"),
           "1 with each limit's status as the report shows it (report rows[].status): near "
           "from 80% in use (where TunerLimitUtilizationHigh fires), full at 100%, raise, binds, "
           "short, ok, ...", _rep(_status)),
    Metric("tuner_kernel_memory_bytes_per_connection", GAUGE, ("estimate",),
           f"Kernel memory one connection costs: idle (slab objects) or worst, the "
           f"{WORST_CASE} (report memory.*_bytes_per_connection).", _rep(_memory)),
    Metric("tuner_connections_per_process", GAUGE, ("role",),
           "Connections one process can hold under its descriptor ceiling (report "
           "processes.connections_per_process).",
           _rep(lambda r: [((r.role,), r.processes["connections_per_process"])])),
    Metric("tuner_target_reachable", GAUGE, ("target",),
           "1 when --target connections fit the current settings, else 0 (report reachable); "
           "only with --target.", _rep(_reachable)),
    Metric("tuner_service_capacity_connections", GAUGE, (),
           "With --pid/--port/--unit: most connections the service can hold now, its processes "
           "together (diagnose max_connections).", _svc(lambda d: [((), d["max_connections"])]
                                                         if d["max_connections"] is not None else []), service=True),
    Metric("tuner_service_connections", GAUGE, (),
           "Connections the service holds now on its listening ports (diagnose connections.held).",
           _svc(lambda d: [((), d["connections"]["held"])]), service=True),
    Metric("tuner_service_binding_limit_info", GAUGE, ("knob",),
           "1 for the limit that stops the service first (diagnose binding_limit).",
           _svc(lambda d: [((d["binding_limit"],), 1)] if d["binding_limit"] else []), service=True),
    Metric("tuner_application_cap_connections", GAUGE, ("app", "setting", "sureness"),
           "The application's own connection cap (nginx worker_connections x workers, HAProxy "
           "maxconn, ...) as tuner read it, computed it or was told it (diagnose "
           "application.allows); absent when it could not be read.",
           _svc(lambda d: [((a["app"], a["setting"], a["sureness"]), a["allows"])]
                if (a := d.get("application")) and a["allows"] is not None else []), service=True),
    Metric("tuner_application_utilization_ratio", GAUGE, ("app",),
           "Connections the service holds / its application's own cap, 0 to 1 (diagnose "
           "connections.held / application.allows).",
           _svc(lambda d: [((a["app"],), min(d["connections"]["held"] / a["allows"], 1.0))]
                if (a := d.get("application")) and a["allows"] else []), service=True),
    Metric("tuner_service_peer_closed_sockets", GAUGE, (),
           "Sockets on the service's ports whose peer closed (CLOSE_WAIT) that the service has "
           "not closed: each still holds a descriptor (diagnose connections.peer_closed).",
           _svc(lambda d: [((), d["connections"]["peer_closed"])]), service=True),
    Metric("tuner_process_open_fds", GAUGE, ("pid",),
           "Descriptors each of the service's processes has open (diagnose processes[].fds).",
           _svc(lambda d: [((str(p["pid"]),), p["fds"]) for p in d["processes"]]), service=True),
    Metric("tuner_process_max_fds", GAUGE, ("pid",),
           "Each process's soft RLIMIT_NOFILE: open descriptors past it fail with EMFILE "
           "(diagnose processes[].nofile_soft).",
           _svc(lambda d: [((str(p["pid"]),), p["nofile_soft"]) for p in d["processes"]]), service=True),
    Metric("tuner_listener_backlog", GAUGE, ("address", "port"),
           "Accept queue size of each of the service's listeners: min(listen() backlog, "
           "somaxconn) (diagnose listeners[].backlog).",
           _svc(lambda d: [((l["address"], str(l["port"])), l["backlog"]) for l in d["listeners"]]), service=True),
    Metric("tuner_listener_queued", GAUGE, ("address", "port"),
           "Connections completed and waiting in each listener's accept queue now; at the "
           "backlog, new ones are dropped (diagnose listeners[].queued).",
           _svc(lambda d: [((l["address"], str(l["port"])), l["queued"]) for l in d["listeners"]]), service=True),
    Metric("tuner_service_scrape_success", GAUGE, (),
           "With --pid/--port/--unit: 1 when this scrape read the service, 0 when it could not "
           "(it stopped, its port closed; the reason goes to stderr).",
           lambda s: [((), 0 if s.service is None else 1)] if s.service_asked else [], service=True),
    Metric("tuner_scrape_success", GAUGE, (),
           "1 when this scrape read the host, 0 when it failed (the reason goes to stderr; "
           "the report's metrics are absent from that scrape).",
           lambda s: [((), 0 if s.report is None else 1)]),
    Metric("tuner_scrape_duration_seconds", GAUGE, (),
           "Seconds this scrape took to read the host and run the model.",
           lambda s: [((), s.duration)]),
    Metric("tuner_build_info", GAUGE, ("version",), "1, with the tuner version as a label.",
           _build_info),
]

METRIC_NAMES = [m.name for m in METRICS]
HOST_METRIC_NAMES = [m.name for m in METRICS if not m.service]


# `tuner probe --textfile DIR`: the last run's figures (probes' ProbeResult.to_dict()),
# for node_exporter's textfile collector, without a pushgateway.
PROBE_TEXTFILE_NAME = "tuner_probe.prom"


def _probe(key):
    return lambda r: [] if r.get(key) is None else [((), r[key])]


def _service_cost(r: dict):
    service = r.get("service") or {}
    per = service.get("bytes_per_connection") or {}
    out = [((part,), per[part]) for part in ("application", "kernel", "heap") if per.get(part) is not None]
    # own: what the application counts itself per connection against its own cap that binds
    # (Redis maxmemory-clients: mem_clients_normal's slope).
    own = [l for l in service.get("limits") or () if l.get("name") == service.get("binding")
           and l.get("counts") == "own count" and l.get("per_connection") is not None]
    return out + [(("own",), own[0]["per_connection"])] if own else out


PROBE_METRICS: List[Metric] = [
    Metric("tuner_probe_success", GAUGE, (),
           "1 when the last probe verified every connection it asked for, else 0 (probe ok).",
           lambda r: [((), int(bool(r["ok"])))]),
    Metric("tuner_probe_connections_requested", GAUGE, (), "Connections the last probe asked for "
           "(probe requested).", _probe("requested")),
    Metric("tuner_probe_connections_verified", GAUGE, (), "Connections the last probe opened, "
           "verified both ways and held (probe verified).", _probe("verified")),
    Metric("tuner_probe_establish_seconds", GAUGE, (), "Seconds from the first worker to the last "
           "accept (probe seconds_establish).", _probe("seconds_establish")),
    Metric("tuner_probe_connections_per_second", GAUGE, (), "Connections established per second "
           "(probe rate_per_s).", _probe("rate_per_s")),
    Metric("tuner_probe_kernel_memory_bytes_per_connection", GAUGE, (),
           "Slab growth per connection the last probe measured (probe kernel_slab_bytes_per_conn); "
           "absent when other work on the host swamped it (kernel_figures_reliable false).",
           lambda r: _probe("kernel_slab_bytes_per_conn")(r) if r.get("kernel_figures_reliable") else []),
    Metric("tuner_probe_user_memory_bytes_per_connection", GAUGE, (),
           "Workers' USS per connection (probe user_bytes_per_conn).", _probe("user_bytes_per_conn")),
    Metric("tuner_probe_service_memory_bytes_per_connection", GAUGE, ("part",),
           "What one held connection costs the probed service, measured by a --step run (probe "
           "service.bytes_per_connection: its own memory and its sockets' kernel memory apart, and "
           "heap: its V8 heap's committed pages where Node's heap limit is set against them; own: what "
           "the application counts itself where its own cap binds, Redis's maxmemory-clients); "
           "absent without a measured slope.", lambda r: _service_cost(r)),
    Metric("tuner_probe_service_projected_connections", GAUGE, ("limit",),
           "Where the probed service's memory stops it, projected from a --step run (probe "
           "service.projected_max), with the memory limit that binds first; absent without one.",
           lambda r: [((s["binding"],), s["projected_max"])] if (s := r.get("service") or {}).get("projected_max")
           is not None else []),
    Metric("tuner_probe_stopped_by_info", GAUGE, ("limit",),
           "1, with the limit (or signal, timeout) that stopped the last probe short (probe "
           "stopped_by); absent when it verified everything.",
           lambda r: [((r["stopped_by"],), 1)] if r.get("stopped_by") else []),
    Metric("tuner_probe_last_run_timestamp_seconds", GAUGE, (),
           "When the last probe's figures were written (Unix time): alert on its age.",
           lambda r: [((), r["written_at"])]),
]


@dataclass(frozen=True)
class Request:
    """What to read: the same question `tuner report` answers."""

    target: Optional[int] = None
    role: str = "loopback"
    netns: Optional[str] = None
    destinations: int = 1
    source_dev: Optional[str] = None
    # A service, as `tuner diagnose` names one: its pids, a port it listens on, or a unit.
    pids: Tuple[int, ...] = ()
    port: Optional[int] = None
    unit: Optional[str] = None

    @property
    def service(self) -> bool:
        return bool(self.pids) or self.port is not None or self.unit is not None


def read(req: Request, snap=None, strict: bool = False) -> Scrape:
    """One reading through assess.build (and tuner.diagnose.evaluate for a service); a TunerError
    (the namespace went away, the service stopped) becomes a failed scrape of that part
    instead of an HTTP 500. `strict`: raise it (the command's first reading: bad input
    is refused before anything is served or written)."""
    # Here: the model loads when a reading is taken, not for metrics' option checks (start-up time).
    from . import assess

    start = time.monotonic()
    try:
        rep = assess.build(req.target, req.role, req.netns, req.destinations, req.source_dev, snap=snap)
        error = None
    except TunerError as e:
        if strict:
            raise
        rep, error = None, str(e)
    service = service_error = None
    if req.service:
        # Here: diagnose loads only for a service (--pid/--port/--unit) (start-up time).
        from tuner.diagnose.evaluate import diagnose

        try:
            # --netns chooses where --port is looked up; a pid or unit is read in its own.
            service = diagnose(pids=req.pids, port=req.port, unit=req.unit,
                               netns=req.netns if req.port is not None else None,
                               target=req.target).to_dict()
        except TunerError as e:
            if strict:
                raise
            service_error = str(e)
    return Scrape(rep, time.monotonic() - start, error, service, service_error, req.service)


def families(scrape: Any, table: Optional[List[Metric]] = None):
    """The metric families of one scrape (or probe result), in the table's order."""
    # Here: prometheus_client loads only when metrics are exported (start-up time).
    from prometheus_client.core import GaugeMetricFamily

    for m in METRICS if table is None else table:
        family = GaugeMetricFamily(m.name, m.help, labels=list(m.labels))
        for labels, value in m.samples(scrape):
            # A label may carry a service's words (a binding limit's config path, an
            # HAProxy frontend's name); the text format escapes only \\, " and newline.
            family.add_metric([safe_text(label) for label in labels], value)
        yield family


class Collector:
    """A prometheus_client custom collector: each collect() reads the host afresh.

    `run` decides where the reading happens: the HTTP server calls collect() on a
    request thread, and a namespace switch (setns) and /proc/self/net both belong to
    the main thread, so `serve` passes a runner that hands the reading to it.
    """

    def __init__(self, req: Request, run: Callable[[Callable[[], Scrape]], Scrape] = lambda f: f(),
                 snap=None, first: Optional[Scrape] = None):
        self.req, self.run, self.snap = req, run, snap
        self.first = first   # a reading already taken (the CLI's check), used once

    def collect(self) -> Iterator:
        scrape, self.first = self.first, None
        if scrape is None:
            scrape = self.run(lambda: read(self.req, self.snap))
        if scrape.error:
            print(f"tuner: scrape failed: {scrape.error}", file=sys.stderr, flush=True)
        if scrape.service_error:
            print(f"tuner: service scrape failed: {safe_text(scrape.service_error, 1000)}", file=sys.stderr,
                  flush=True)
        yield from families(scrape)

    def describe(self):
        # Registering must not read the host: an empty describe() tells the registry so.
        return []


def registry(collector: Collector):
    # Here: prometheus_client loads only when metrics are exported (start-up time).
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


def exposition(req: Request, snap=None, first: Optional[Scrape] = None) -> str:
    """The text format, as one scrape of --listen would return it."""
    # Here: prometheus_client loads only when metrics are exported (start-up time).
    from prometheus_client import generate_latest

    return generate_latest(registry(Collector(req, snap=snap, first=first))).decode()


# ---------------------------------------------------------------- --textfile

def check_textfile_dir(path: str) -> str:
    """DIR must be a real directory (not a symlink), writable, and writable by nobody
    but root or the invoking user: tuner writes there as root, so a directory another
    user can write would let them plant a symlink for the temporary file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise UsageError(f"--textfile {path}: no such directory: create it or give node_exporter's "
                         f"--collector.textfile.directory")
    except OSError as e:
        raise UsageError(f"--textfile {path}: {e.strerror}")
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"--textfile {path} is a symlink: give the directory it points to")
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"--textfile {path} is not a directory: give the textfile collector's directory")
    if st.st_uid not in trust.invoker_owners() or trust.others_may_write(st):
        raise UsageError(f"--textfile {path} is writable by other users (owner uid {st.st_uid}, mode "
                         f"{stat.S_IMODE(st.st_mode):o}): use a directory only root or you can write "
                         f"(chmod go-w)")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"--textfile {path} is not writable by this user (or is on a read-only "
                         f"filesystem): run as its owner or pick another directory")
    return path


def write_textfile(directory: str, req: Request, name: str = TEXTFILE_NAME,
                   first: Optional[Scrape] = None, collector=None) -> str:
    """Write DIR/NAME atomically (prometheus_client writes a temporary file beside it
    and renames it over), so node_exporter never reads half a file."""
    # Here: prometheus_client loads only when metrics are exported (start-up time).
    from prometheus_client import write_to_textfile

    check_textfile_dir(directory)
    path = os.path.join(directory, name)
    try:
        write_to_textfile(path, registry(collector or Collector(req, first=first)))
    except OSError as e:
        # A full disk or a quota is a limit like any other: name it.
        raise TunerError(f"could not write {path}: {e.strerror or e} (nothing was replaced)")
    return path


class ProbeCollector:
    """The figures of one finished probe (ProbeResult.to_dict())."""

    def __init__(self, result: dict):
        self.result = dict(result, written_at=time.time())

    def collect(self):
        yield from families(self.result, PROBE_METRICS)

    def describe(self):
        return []


def write_probe_textfile(directory: str, result: dict) -> str:
    """`tuner probe --textfile DIR`: DIR/tuner_probe.prom, atomically, beside tuner.prom."""
    return write_textfile(directory, Request(), PROBE_TEXTFILE_NAME, collector=ProbeCollector(result))


# ---------------------------------------------------------------- --listen

def parse_listen(text: str) -> Tuple[str, int]:
    """'127.0.0.1:9100', '[::1]:9100' -> (address, port). The address is required and
    must be an IP literal: tuner binds exactly what it is given, never all interfaces
    by default and never a name DNS might resolve elsewhere. Port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {text!r}: give ADDR:PORT, e.g. 127.0.0.1:9858")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise UsageError(f"--listen {text!r} has no address: give one, e.g. 127.0.0.1:{port} "
                         f"(0.0.0.0:{port} to listen on every interface)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"--listen {text!r}: {host!r} is not an IP address (e.g. 127.0.0.1 or [::1])")
    return host, int(port)


class MainThreadRunner:
    """Runs the scrapes the HTTP threads ask for on the main thread, one at a time:
    reading a namespace switches the calling thread's netns, /proc/self/net follows the
    main thread, and one scrape at a time keeps a burst of scrapes from piling up reads
    on a host with millions of sockets."""

    def __init__(self):
        self.jobs: "queue.Queue" = queue.Queue()

    def __call__(self, fn):
        done = threading.Event()
        box = {}

        def job():
            try:
                box["value"] = fn()
            finally:
                done.set()
        self.jobs.put(job)
        done.wait()
        return box["value"]

    def serve_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                job = self.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            job()


def serve(listen: str, req: Request, announce: Callable[[str], None]) -> None:
    """Serve /metrics on ADDR:PORT until SIGTERM or SIGINT."""
    # Here: prometheus_client loads only when metrics are exported (start-up time).
    from prometheus_client import start_http_server

    host, port = parse_listen(listen)
    runner = MainThreadRunner()
    try:
        server, thread = start_http_server(port, addr=host, registry=registry(Collector(req, run=runner)))
    except OSError as e:
        raise UsageError(f"--listen {listen}: cannot listen there: {e.strerror or e} "
                         f"(pick another port or address)")
    bound = server.server_address
    where = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    announce(f"tuner: serving metrics on http://{where}:{bound[1]}/metrics "
             f"(the host is read at each scrape; SIGTERM or Ctrl-C stops)")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        runner.serve_forever(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- documentation

def markdown_table(table: Optional[List[Metric]] = None) -> str:
    """docs/metrics.md's metric table (tests/test_metrics.py checks the page holds it)."""
    lines = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for m in METRICS if table is None else table:
        labels = ", ".join(f"`{label}`" for label in m.labels) or "-"
        lines.append(f"| `{m.name}` | {m.type} | {labels} | {m.help} |")
    return "\n".join(lines)


def roff_section(escape: Callable[[str], str], table: Optional[List[Metric]] = None) -> str:
    lines = []
    for m in METRICS if table is None else table:
        labels = "{" + ",".join(m.labels) + "}" if m.labels else ""
        lines += [".TP", f"\\fB{escape(m.name)}\\fP{escape(labels)} ({m.type})", escape(m.help)]
    return "\n".join(lines)
