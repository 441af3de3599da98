"""`--connect URL`: the client side of a probe whose server runs elsewhere: tuner's own
`--serve` (HOST:PORT), or the user's own service over any protocol probes/protocols
registers (one state machine per protocol).

Workers (connect_worker.py) each open their share of the N connections, one
descriptor per connection, spread over the local addresses inside --source-net
(e.g. aliases added by `tuner apply --role client --alias-dev DEV --alias-net CIDR`),
verify each through the protocol, hold them --hold seconds, check each a second time
(a second request, a ping, a PING; or still open) and close them.  A connection is
verified only when both checks passed.

Which side stalled is counted: this host's failures (descriptors, ports per source
address, source addresses, memory: classified like the local probe's, probes.classify)
stop opening; the server's (refused in its words, closed or reset at open or during the
hold, left in its accept queue, silent, not listening) are counted per connection and
never stop the run (serverside.py turns them into the result's `server` figures).

    exit status (python -m probes): 0 all N verified, 3 short, 2 bad configuration,
    128+N ended by signal N
"""
from __future__ import annotations

import math
import os
import socket
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import unquote

from . import connect_held, connect_worker, kernel, protocols, serverside
from .config import ProbeConfigError, fast_ports, source_network, split_shares, worker_capacity
from .fleet import Fleet, start_worker
from .latency import Histogram
from .orchestration import UNVERIFIED, Orchestration
from .ramp import MAX_P99, Ramp
from .result import EXIT_OK, EXIT_SHORT, SplitResult, signal_exit

Emit = Callable[[dict], None]
# Source addresses a worker spreads over at most (one sockaddr each, in every worker).
MAX_SOURCES = 1 << 16


@dataclass
class ConnectConfig:
    target: str = "127.0.0.1:7000"     # the URL (HOST:PORT: tuner's own exchange)
    connections: int = 1000
    source_net: Optional[str] = None   # spread over the local addresses in this CIDR; None: kernel picks
    rate: Optional[float] = None       # new connections per second, all workers together
    hold: float = 0.0
    timeout: Optional[float] = None    # seconds to establish and verify; None: 30 + N/10000
    workers: Optional[int] = None      # None: as few as RLIMIT_NOFILE allows
    worker_nofile: Optional[int] = None
    progress_interval: float = 0.25
    check_timeout: float = 10.0        # seconds the second check may take
    # The protocol's own options, {Option.name: value} (probes/protocols: which scheme
    # takes which); those not given are left out.
    options: Dict[str, object] = field(default_factory=dict)
    step: Optional[int] = None         # --step K: open K more per step, a row of the service's cost each
    settle: float = 1.0                # seconds after a step opened before its row is taken
    ping_every: Optional[float] = None  # one exchange per held connection per this many seconds
    max_p99: Optional[float] = None    # ms: end the ramp at the first step whose p99 passes it
    # The URL parsed and its host resolved (a protocols.Target's fields), by the first to
    # parse it (tuner's CLI, before it starts the orchestrator): the orchestrator and its
    # workers take it as it is, and never parse the URL or resolve its name again.
    resolved: Optional[dict] = None

    MODE = "connect"    # the mode interface: see config.ProbeConfig

    def mode_argv(self) -> list:
        return ["--connect", self.target]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ConnectConfig":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ProbeConfigError(f"unknown connect settings: {', '.join(sorted(unknown))}")
        return cls(**data)

    def protocol(self):
        """(Target, Protocol) of the URL and the protocol options, made once (the URL
        parsed and resolved only when `resolved` does not have it yet); ProbeConfigError."""
        made = self.__dict__.get("_made")
        if made is None:
            try:
                target = protocols.Target(**self.resolved) if self.resolved else protocols.parse_target(self.target)
                if protocols.scheme(target.scheme) is None:
                    raise protocols.TargetError(f"{self.target!r}: unknown scheme {target.scheme!r}")
                options = protocols.read_files(target, self.options)
                made = self.__dict__["_made"] = target, protocols.make(target, **options)
                self.options = options   # the orchestrator gets the text, read once here
            except protocols.TargetError as exc:
                raise ProbeConfigError(f"--connect: {exc}") from None
            except TypeError:
                raise ProbeConfigError(f"--connect: resolved {self.resolved!r} is not a target") from None
            self.resolved = asdict(target)
        return made

    def validate(self) -> None:
        self.protocol()
        source_network(self.source_net)
        if not isinstance(self.connections, int) or self.connections < 1:
            raise ProbeConfigError("--connections must be a positive integer")
        if self.rate is not None and self.rate <= 0:
            raise ProbeConfigError("--rate must be positive")
        if self.hold < 0 or (self.timeout is not None and self.timeout <= 0):
            raise ProbeConfigError("--hold must not be negative and --timeout must be positive")
        if self.check_timeout <= 0:
            raise ProbeConfigError("check_timeout must be positive")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ProbeConfigError("--workers must be a positive integer")
        self.validate_traffic()

    def validate_traffic(self) -> None:
        """--step, --settle, --ping-every and --max-p99: their ranges, and an exchange to
        time (a protocol with nothing to send, as given, has none)."""
        if self.step is not None and (not isinstance(self.step, int) or self.step < 1):
            raise ProbeConfigError("--step must be a positive integer")
        if self.settle < 0 or (self.ping_every is not None and self.ping_every <= 0):
            raise ProbeConfigError("--settle must not be negative and --ping-every must be positive")
        if self.max_p99 is not None and (self.max_p99 <= 0 or self.step is None):
            raise ProbeConfigError("--max-p99 takes a positive number of milliseconds and needs --step")
        timed = self.ping_every is not None or self.max_p99 is not None
        target, protocol = self.protocol()
        if timed and protocol.pinging() is None:
            flags = ", ".join(o.flag for o in protocols.scheme(target.scheme).options)
            raise ProbeConfigError(f"--ping-every and --max-p99 time an exchange, and {target.scheme}:// as "
                                   f"given sends nothing" + (f" (give it one: {flags})" if flags else ""))

    @property
    def effective_timeout(self) -> float:
        """Seconds to establish and verify: the whole run's, or each step's with --step."""
        n = min(self.step, self.connections) if self.step else self.connections
        return self.timeout if self.timeout is not None else 30.0 + n / 10000


def sources_for(cfg: ConnectConfig, host: str) -> Tuple[List[str], bool]:
    """The local addresses inside --source-net the workers spread over, and whether their
    sockets need IP_FREEBIND (IPv6 AnyIP: bind() takes only interface addresses
    otherwise).  Addresses of the network that are not local are left out, so a /24
    with 17 aliases gives 17 sources, not 254 bind() failures; an AnyIP prefix gives as
    many as the connections need at half a port range each (addresses cost nothing
    there), at least 1,024.  Counted the way `tuner report` counts source addresses
    (tuner.host.localnet: interface addresses and local routes)."""
    net = source_network(cfg.source_net)
    if net is None:
        return [], False
    if net.version != (6 if ":" in host else 4):
        raise ProbeConfigError(f"--source-net {net} is IPv{net.version}, the server {cfg.target} is not: "
                               f"give a source network of the server's family")
    from tuner.host import localnet

    low, high = kernel.port_range()
    wanted = math.ceil(cfg.connections / max(1, (high - low + 1) // 2))
    nets = localnet.source_networks(localnet.read_addresses(), localnet.read_local_routes(),
                                    within=str(net))
    found = localnet.source_addresses(nets, min(MAX_SOURCES, max(wanted, 1024)))
    if not found:
        raise ProbeConfigError(f"--source-net {net}: no local address inside it; add aliases with "
                               f"tuner apply --role client --alias-dev DEV --alias-net {net}, or "
                               f"make it local with tuner apply --role client --anyip-net {net}")
    return found, net.version == 6


def fast_capacity(sources: int) -> int:
    """Connections to one server ADDR:PORT that connect() hands out quickly: each source
    address (or the one the kernel picks) gets config.FAST_PORT_SHARE of the usable
    port range (why: see there)."""
    return max(sources, 1) * fast_ports(*kernel.port_range())


class Client(Orchestration):
    lines = connect_worker.LINES
    rate_of = "established"
    second_check = True
    SLACK = 5.0   # the orchestrator's deadline trails the workers': they say what timed out

    def plan(self, nofile: int) -> None:
        cfg = self.cfg
        cfg.validate()
        self.target, self.protocol = cfg.protocol()
        per = worker_capacity(nofile, 1)
        w = self.workers = min(cfg.workers or math.ceil(cfg.connections / per), cfg.connections)
        self.shares = shares = split_shares(cfg.connections, w)
        self.sources, self.freebind = sources_for(cfg, self.target.host)
        self.port_range = kernel.port_range()
        fast = fast_capacity(len(self.sources))
        self.emit({"event": "plan", "workers": w, "per_worker": max(shares), "nofile": nofile,
                   "sources": len(self.sources), "fast_capacity": fast,
                   "describe": f"{w} worker(s) x up to {max(shares):,} connections to {self.target.endpoint} "
                               f"({self.protocol.name}), "
                               + (f"{len(self.sources)} source address(es) in {cfg.source_net}"
                                  if self.sources else "kernel-chosen source address")
                               + (f"; beyond ~{fast:,} connect() slows down: add source addresses"
                                  if cfg.connections > fast else "")})
        self.baseline = kernel.snapshot()
        self.after = None
        self.words = serverside.Words()
        self.accept_queue: Optional[int] = None
        self.uss = 0
        self.hold_latency = Histogram()
        self.ramp = Ramp(cfg, w, service_sampler(self.target), self.emit) if cfg.step else None
        self.kinds: Dict[str, int] = {}        # what TLS handshakes negotiated, first seen first
        self.handshakes = Histogram()

    def timeout(self) -> Optional[float]:
        # A ramp's steps each have their own (Ramp.stop_reason): its length is the user's.
        return None if self.ramp else self.cfg.effective_timeout + self.SLACK

    def check_seconds(self) -> float:
        return self.cfg.check_timeout + self.SLACK

    def fork_workers(self, fleet: Fleet) -> None:
        cfg, t = self.cfg, self.target
        rate = cfg.rate / self.workers if cfg.rate else None
        deadline = float("inf") if self.deadline is None else self.deadline - self.SLACK
        ramp = self.ramp
        for k in range(self.workers):
            kwargs = dict(share=self.shares[k], host=t.host, port=t.port, sources=self.sources,
                          port_range=self.port_range, freebind=self.freebind, protocol=self.protocol,
                          deadline=deadline, check_timeout=cfg.check_timeout, rate=rate,
                          nofile=cfg.worker_nofile, check=fleet.check_r, ping_every=cfg.ping_every,
                          control=ramp and ramp.block, step_timeout=cfg.effective_timeout,
                          sample=ramp.sample_per_worker if ramp else 0, **fleet.worker_args())
            fleet.fork(k, lambda k=k, kwargs=kwargs: start_worker(connect_worker.ConnectWorker, k, **kwargs))
        fleet.started()

    def on_line(self, k: int, line, values: dict) -> None:
        if line is connect_worker.WORDS:
            self.words.add(values["when"], values["words"], values["count"])
        elif line is connect_held.LATENCY:
            if values["round"] == connect_held.HOLD_ROUND:
                self.hold_latency.decode(values["chunk"])
            elif self.ramp:
                self.ramp.latency(values["round"], values["chunk"])
        elif line is connect_worker.KIND:
            kind = unquote(values["kind"])
            self.kinds[kind] = self.kinds.get(kind, 0) + values["count"]
        elif line is connect_worker.HANDSHAKES:
            self.handshakes.decode(values["chunk"])

    def tick(self, now: float) -> None:
        # Only while the run goes on: a stopped one takes no more rows.
        if self.ramp and self.started and self.phase == self.run_phase:
            self.ramp.tick(now, self)

    def own_stop_reason(self, now: float) -> Optional[str]:
        return self.ramp.stop_reason(now, self.cfg.effective_timeout + self.SLACK) if self.ramp else None

    def ready_to_hold(self) -> bool:
        # The last step's row is taken before the hold starts.
        return self.ramp is None or self.ramp.done

    def on_error(self, k: int, side: str, op: str, code: int, index: int) -> None:
        self.records.append((side, op, code, index, f"worker {k}: client {op}() failed after {index} "
                                                    f"connections: {os.strerror(code)}"))

    def checked_all(self) -> bool:
        return all("t_checked" in self.counts[k] or k in self.fleet.exit_status for k in self.started)

    def progress(self) -> dict:
        return {"established": self.total("established"), "verified": self.total("verified")}

    def measure(self) -> None:
        self.after = kernel.snapshot()
        self.uss = 0
        for pid, k in self.fleet.pids.items():
            if k not in self.fleet.exit_status:
                try:
                    self.uss += kernel.private_memory(pid)[0]
                except OSError:
                    pass
        # Still held open by the workers: what waits in the server's accept queue now.
        self.accept_queue = serverside.accept_queue(self.target)

    def user_bytes_per_conn(self, held: int) -> Optional[int]:
        """The workers' USS (measured at the hold) per held connection."""
        return round(self.uss / held) if held and self.uss else None

    def result(self) -> "ConnectResult":
        cfg, base = self.cfg, self.baseline
        after = self.after or kernel.snapshot()
        checked = self.started and all("t_checked" in self.counts[k] for k in self.started)
        answered, established = self.total("verified"), self.total("established")
        verified = self.total("verified_twice") if checked else answered
        mismatches, opened = self.total("mismatches"), self.total("opened")
        moved = {k: after.get(k, 0) - base.get(k, 0) for k in after if isinstance(after.get(k), int)}
        server = serverside.figures(self.total, self.words, self.accept_queue, moved, opened)
        errors = self.summarize(moved, after, role="client") + serverside.errors(server, self.target)
        stopped_by = self.verdict(errors, cfg.connections, verified, mismatches)
        if stopped_by == UNVERIFIED and errors:   # the server's side: its first way named
            stopped_by = errors[0]["limit"]
        if self.ramp and self.ramp.over is not None and self.fleet.signal is None:
            stopped_by = MAX_P99   # even at the last step: N was not held within the bound
        done = [c["t_verified"] for c in self.counts if "t_verified" in c]
        seconds = (max(done) - self.t0_ns) / 1e9 if len(done) == self.workers and answered else None
        checks = [c["t_checked"] for c in self.counts if "t_checked" in c]
        per = max(verified, 1)
        reliable, why = kernel.judge_run(base, after, answered, 2 * answered)  # the server may be here too
        result = {
            "mode": "connect",
            "ok": stopped_by is None,
            "stopped_by": stopped_by,
            "interrupted": self.fleet.signal is not None,
            "target": cfg.target,
            "protocol": self.protocol.name,
            "endpoint": self.target.endpoint,
            # The same, as facts: whoever asks where it connected reads these, not the text.
            "address": self.target.host,
            "port": self.target.port,
            "requested": cfg.connections,
            "attempted": opened,
            "established": established,
            "answered": answered,
            "checked_twice": bool(checked),
            "verified": verified,
            "failed": opened - verified,
            # Completed by the kernel into the server's accept queue, never accepted.
            "unaccepted": server["unaccepted"],
            "mismatches": mismatches,
            "server": server,
            "workers": self.workers,
            "source_net": cfg.source_net,
            "source_addresses": len(self.sources),
            "seconds_verified": round(seconds, 3) if seconds else None,
            "rate_per_s": round(answered / seconds) if seconds else None,
            "seconds_hold": round(self.seconds_hold, 3),
            "seconds_check": round(max(checks) / 1e9 - self.check_start, 3) if checked else None,
            "kernel_slab_bytes_per_conn": round((after["slab"] - base["slab"]) / per),
            "kernel_figures_reliable": reliable,
            "kernel_figures_note": why,
            "kernel_tcp_mem_bytes_per_conn": round((after.get("tcp_mem", 0) - base.get("tcp_mem", 0)) / per, 1),
            "user_bytes_per_conn": self.user_bytes_per_conn(answered),
            "errors": errors,
            "timeline": self.timeline,
            **self.traffic(), **self.costs(server, established),
        }
        result["stalled"] = serverside.stalled(result)
        return ConnectResult(result)


    def traffic(self) -> dict:
        """The exchanges on held connections: the hold's latency, the ping counts, and
        the ramp's rows (empty without --step)."""
        pings = {c: self.total(f"pings_{c}") for c in ("sent", "answered", "late", "refused")}
        return {"ping_every": self.cfg.ping_every, "pings": pings,
                "latency_ms": self.hold_latency.summary_ms(), "latency_exchanges": self.hold_latency.count,
                "steps": self.ramp.rows if self.ramp else [],
                "ramp": self.ramp.to_dict() if self.ramp else None}

    def costs(self, server: dict, established: int) -> dict:
        """What opening cost: `tls` (the handshakes; None in plain text) and `cpu`."""
        return {"tls": self.tls_figures(server), "cpu": self.cpu_figures(established)}

    def tls_figures(self, server: dict) -> Optional[dict]:
        """What the TLS handshakes negotiated and cost the probe (None: plain)."""
        tls = self.protocol.transport
        if tls.name != "tls":
            return None
        s = tls.settings
        negotiated = []
        for kind, count in self.kinds.items():
            version, cipher, group = (kind.split(" ") + ["?", "?", "?"])[:3]
            negotiated.append({"version": version, "cipher": cipher, "group": group, "count": count})
        return {"insecure": s.insecure, "server_name": tls.hostname, "ca": s.ca, "client_cert": s.cert,
                "alpn": list(s.alpn or tls.default_alpn), "version_asked": s.version, "resume": s.resume,
                "handshakes_full": self.total("full"), "handshakes_resumed": self.total("resumed"),
                "failed": server["tls_failed"], "stalled": server["tls_stalled"],
                "negotiated": negotiated, "handshake_ms": self.handshakes.summary_ms()}

    def cpu_figures(self, established: int) -> dict:
        """The probe workers' CPU over the opening (to the end of the first check), per
        connection opened (per handshake under TLS); the server's is added by the caller
        when it runs on this host (tuner.probing.run)."""
        seconds = self.total("cpu_us") / 1e6
        tls = self.protocol.transport.name == "tls"
        per = self.total("full") + self.total("resumed") if tls else established
        return {"per": "handshake" if tls else "connection",
                "probe_seconds": round(seconds, 3),
                "probe_ms_per_conn": round(seconds * 1000 / per, 3) if per else None,
                "server_seconds": None, "server_ms_per_conn": None, "server_pids": [],
                "bound_by": None, "sentence": None}


def service_sampler(target):
    """The service's sampler (tuner.host.servicecost) when it listens on this host, in
    this network namespace; None when it is elsewhere (its memory is not ours to read)."""
    from tuner.host import localnet, servicecost   # only a --step run samples the service

    local = target.host in ("127.0.0.1", "::1") or target.host.startswith("127.") or any(
        a.get("address") == target.host for a in localnet.read_addresses())
    if not local:
        return None
    sampler = servicecost.Sampler(target.port)
    return sampler if sampler.roots else None



class ConnectResult(SplitResult):
    """--connect's result: exit 0 when every requested connection verified twice, 3 when
    short, 128+N when signal N ended it."""

    @property
    def exit_code(self) -> int:
        if self.ok:
            return EXIT_OK
        return signal_exit(self["stopped_by"]) if self["interrupted"] else EXIT_SHORT

    def summary_lines(self) -> List[str]:
        return summary_lines(self.data)


def summary_lines(r: dict) -> List[str]:
    lines = [
        r["stalled"]["sentence"],
        f"{'verified' if r['ok'] else 'FELL SHORT'}: {r['verified']:,} of {r['requested']:,} connections to "
        f"{r['target']} ({r['established']:,} established, {r['answered']:,} answered at open, "
        f"{r['failed']:,} failed, {r['mismatches']:,} mismatches, {r['unaccepted']:,} completed into the "
        f"server's accept queue and never accepted)"
        + ("" if r["ok"] else f"; stopped by {r['stopped_by']}"),
        f"{r['workers']} worker(s), {r['source_addresses'] or 'kernel-chosen'} source address(es); "
        f"verified in {r['seconds_verified'] if r['seconds_verified'] is not None else '-'} s "
        f"({r['rate_per_s'] or '-'}/s), held {r['seconds_hold']} s; kernel slab "
        + (f"{r['kernel_slab_bytes_per_conn']:,} B/conn" if r["kernel_figures_reliable"]
           else "not measurable (host busy)"),
    ]
    tls = r.get("tls")
    if tls:
        lines.append(("TLS NOT VERIFIED (--insecure); " if tls["insecure"] else "")
                     + f"TLS: {tls['handshakes_full']:,} full handshakes, {tls['handshakes_resumed']:,} resumed"
                     + (f", p50 {tls['handshake_ms']['p50']} ms" if tls["handshake_ms"] else ""))
    if r["cpu"]["sentence"]:
        lines.append(r["cpu"]["sentence"])
    for e in r["errors"]:
        lines.append(f"error: {e['side']} {e['op']} {e['errno']} x{e['count']} -> {e['limit']}: "
                     f"{e['first_message']}")
        lines.append(f"  fix: {e['hint']}")
    return lines



