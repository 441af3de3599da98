"""`--serve ADDR:PORT`: the server side of a probe whose clients run elsewhere.

Workers (serve_worker.py) each hold an SO_REUSEPORT listener on the same ADDR:PORT,
opened here before any fork so a busy port is an error before anything runs; the
kernel spreads incoming connections over them, and each keeps within its
RLIMIT_NOFILE.  Any number of clients may connect and speak the wire exchange
(probes.wire); the orchestrator sums the workers' running totals and, at the end,
their per-client-address tables.

With --expect N the workers share N slots (serve_worker.py): a connection that fails
verification gives its slot back, and clients beyond N wait in the accept queue while a
slot may still free, so N verify whenever N good clients come.  The run ends on
SIGINT/SIGTERM/SIGHUP, on --timeout (before N verified), or by itself once N have
verified and then either their clients all closed or --hold seconds passed; the result
says how long they were held (held_seconds) against --hold.  A worker
that runs out of descriptors or kernel memory at accept() closes its listener and the
others serve on (the limit is recorded in errors); the run ends on that only when no
listener is left.  Either way every worker reports its final totals and exits; the
result says how it went:

    ok: no server error or limit hit and (with --expect) at least --expect verified
    exit status (python -m probes): 0 when ok, 3 otherwise, 2 bad configuration

Kernel memory per connection is the growth of Slab (host-wide) and of the TCP
socket memory in sockstat (this namespace) at the moment most connections were held.
"""
from __future__ import annotations

import math
import mmap
import multiprocessing
import os
import socket
from dataclasses import asdict, dataclass, fields
from typing import Callable, Dict, List, Optional

from . import kernel, serve_worker, wire
from .config import FD_HEADROOM, ProbeConfigError, worker_capacity
from .fleet import Fleet, start_worker
from .orchestration import CLIENTS_CLOSED, FAILED, HELD, NO_LISTENER_LEFT, Orchestration
from .result import EXIT_OK, EXIT_SHORT, SplitResult

Emit = Callable[[dict], None]
SPREAD_SLACK = 1.15   # SO_REUSEPORT hashes unevenly: size workers for 15% more than --expect
FINAL_GRACE = 10.0    # seconds for released workers to send their tables and exit
CLOSE_SETTLE = 1.0    # seconds for the workers' gracefully closed sockets to finish closing


@dataclass
class ServeConfig:
    listen: str = ":7000"                 # ADDR:PORT (":PORT" for every address)
    expect: Optional[int] = None          # connections to verify; more wait, then are reset
    hold: Optional[float] = None          # with expect: hold them at most this long, then end
    timeout: Optional[float] = None       # end (short) if --expect is not verified by then
    echo_timeout: float = 10.0            # seconds a client has to echo its index
    workers: Optional[int] = None         # None: enough for --expect, at least one per CPU
    worker_nofile: Optional[int] = None   # lower RLIMIT_NOFILE in workers (tests)
    progress_interval: float = 0.25

    MODE = "serve"    # the mode interface: see config.ProbeConfig

    def mode_argv(self) -> list:
        return ["--serve", self.listen]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ServeConfig":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ProbeConfigError(f"unknown serve settings: {', '.join(sorted(unknown))}")
        return cls(**data)

    def validate(self) -> None:
        try:
            wire.parse_endpoint(self.listen, listen=True)
        except wire.EndpointError as exc:
            raise ProbeConfigError(f"--serve: {exc}") from None
        if self.expect is not None and (not isinstance(self.expect, int) or self.expect < 1):
            raise ProbeConfigError("--expect must be a positive integer")
        if self.hold is not None and (self.hold < 0 or self.expect is None):
            raise ProbeConfigError("--hold on the server needs --expect (hold what, for how long?) "
                                   "and must not be negative")
        for name in ("timeout", "echo_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ProbeConfigError(f"{name.replace('_', '-')} must be positive")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ProbeConfigError("--workers must be a positive integer")


def plan_workers(cfg: ServeConfig, nofile: int) -> int:
    per = worker_capacity(nofile, 1)
    if cfg.workers:
        return cfg.workers
    need = math.ceil((cfg.expect or 0) * SPREAD_SLACK / per)
    return max(need, os.cpu_count() or 1)


def open_listeners(addr: str, port: int, count: int) -> List[socket.socket]:
    out = []
    try:
        for _ in range(count):
            out.append(wire.listener(addr, port, reuseport=True))
        return out
    except OSError as exc:
        for s in out:
            s.close()
        raise ProbeConfigError(f"cannot listen on {addr}:{port}: {exc.strerror}") from None


class Server(Orchestration):
    lines = serve_worker.LINES
    run_phase = "serve"
    verify_after_stop = False        # workers hold until released; they send their totals then
    failure_reasons = (FAILED, NO_LISTENER_LEFT)

    def __init__(self, cfg: ServeConfig, emit: Emit):
        super().__init__(cfg, emit)
        self.limits: List[tuple] = []    # limits one worker hit; the others keep serving
        self.full: set = set()           # workers whose listener closed on such a limit
        self.peers: Dict[str, list] = {}
        self.reached_at: Optional[float] = None
        self.held = self.accepted_now = self.verified_now = 0
        self.slots = None                # --expect's semaphore, shared with every worker

    def plan(self, nofile: int) -> None:
        cfg = self.cfg
        cfg.validate()
        self.addr, self.port = addr, port = wire.parse_endpoint(cfg.listen, listen=True)
        w = self.workers = plan_workers(cfg, nofile)
        self.listeners = open_listeners(addr, port, w)
        self.held_map = mmap.mmap(-1, serve_worker.SLOT.size * w)  # shared with every worker
        if cfg.expect is not None:
            self.slots = multiprocessing.Semaphore(cfg.expect)
        self.baseline = kernel.snapshot()
        self.at_peak, self.peak, self.at_peak_held, self.last_snap = self.baseline, 0, 0, 0.0
        self.emit({"event": "listening", "address": addr, "port": port, "workers": w,
                   "nofile": nofile, "capacity": w * (nofile - FD_HEADROOM),
                   "describe": f"{w} worker(s) on {addr}:{port} (SO_REUSEPORT), up to "
                               f"{nofile - FD_HEADROOM:,} connections each"})

    def fork_workers(self, fleet: Fleet) -> None:
        cfg = self.cfg
        common = dict(workers=self.workers, held_map=self.held_map, expect=cfg.expect, slots=self.slots,
                      echo_timeout=cfg.echo_timeout, nofile=cfg.worker_nofile, **fleet.worker_args())
        fleet.fork_per_listener(self.listeners, lambda k, fd: start_worker(
            serve_worker.ServeWorker, k, listener=fd, **common))

    def cleanup(self) -> None:
        for s in getattr(self, "listeners", ()):
            s.close()
        if hasattr(self, "held_map"):
            self.held_map.close()

    def timeout(self) -> Optional[float]:
        return self.cfg.timeout

    def close_grace(self) -> float:
        return FINAL_GRACE

    def timeout_record(self) -> None:
        return None  # --timeout is the server's own end, not a failure of a client

    def timed_out(self, now: float) -> bool:
        # --timeout ends a server that has not (yet) verified --expect.
        return self.deadline is not None and self.reached_at is None and now >= self.deadline

    def own_stop_reason(self, now: float) -> Optional[str]:
        if len(self.full) == self.workers:
            return NO_LISTENER_LEFT
        if self.reached_at is None:
            return None
        if self.cfg.hold is not None and now - self.reached_at >= self.cfg.hold:
            return HELD
        if self.held == 0:   # every expected one verified, and their clients have closed
            return CLIENTS_CLOSED
        return None

    def tick(self, now: float) -> None:
        # Live, from every worker's slot at one moment: held never reads above accepted.
        slots = list(serve_worker.SLOT.iter_unpack(self.held_map))
        held = self.held = sum(s[0] for s in slots)
        self.accepted_now, self.verified_now = sum(s[2] for s in slots), sum(s[3] for s in slots)
        if held > self.peak:
            self.peak = held
            # Kernel figures where most connections are held (a snapshot costs ~1 ms).
            if now - self.last_snap >= 0.2 or held == self.cfg.expect:
                self.at_peak, self.at_peak_held, self.last_snap = kernel.snapshot(), held, now
        # Every expected connection verified (the slots let no more than --expect verify).
        if self.phase == self.run_phase and self.cfg.expect is not None \
                and self.verified_now >= self.cfg.expect and self.reached_at is None:
            self.reached_at = now

    def on_line(self, k: int, line, values: dict) -> None:
        if line is serve_worker.PEER:
            row = self.peers.setdefault(values["address"], [0] * serve_worker.A_SIZE)
            for i, column in enumerate(serve_worker.PEER_COLUMNS):
                row[i] += values[column]

    def on_error(self, k: int, side: str, op: str, code: int, index: int) -> None:
        record = (side, op, code, index, f"worker {k}: server {op}() failed after {index} "
                                         f"connections: {os.strerror(code)}")
        if op == "accept" and code in serve_worker.LISTENER_FULL:
            # A limit of this worker, classified in the result; it closed its listener
            # and the kernel hashes new clients to the other workers' listeners.
            self.limits.append(record)
            self.full.add(k)
        else:
            self.records.append(record)

    def failures(self) -> Dict[str, int]:
        return {name: self.total(name) for name in wire.FAILURES}

    def progress(self) -> dict:
        # accepted, verified and held as the workers' slots give them now (the report
        # lines' totals arrive up to a report interval later; the larger is the newer).
        return {"accepted": max(self.accepted_now, self.total("accepted")),
                "verified": max(self.verified_now, self.total("verified")),
                "held": self.held, "failed": sum(self.failures().values()),
                "over_expect": self.total("over_expect")}

    def rate_count(self) -> int:
        return max(self.accepted_now, self.total("accepted"))

    def hold_left(self, now: float):
        """The server holds from the moment --expect have verified, for --hold seconds."""
        if self.reached_at is None or self.cfg.hold is None or self.phase != self.run_phase:
            return None
        return max(self.cfg.hold - (now - self.reached_at), 0.0)

    def result(self) -> "ServeResult":
        cfg, base, peak = self.cfg, self.baseline, self.at_peak
        failures = self.failures()
        verified = self.total("verified")
        per = max(self.at_peak_held, 1)
        errors = self.summarize({k: peak.get(k, 0) - base.get(k, 0) for k in peak
                                 if isinstance(peak.get(k), int)}, peak, role="server", extra=self.limits)
        reached = cfg.expect is None or verified >= cfg.expect
        # Ended by what failed: name the limit.  Ended otherwise (a signal, --hold,
        # --timeout) with a worker full on the way: that is how it ended, and the limit
        # is in errors (and makes ok false).
        stopped_by = self.ended_by(errors)
        # After every worker is reaped; the listeners (in the baseline) are closed too.
        # Connections closed with a FIN (a client that left before verifying, garbage)
        # can still be finishing: give them a retransmission or two before counting.
        end = kernel.settled_sockstat(base.get("tcp_inuse", 0) - self.workers, CLOSE_SETTLE)
        # Its clients may be on this host too: their sockets share the slab.
        reliable, why = kernel.judge_run(base, peak, self.at_peak_held, 2 * self.at_peak_held)
        clients = [{"address": ip, **dict(zip(PEER_KEYS, row))}
                   for ip, row in sorted(self.peers.items(), key=lambda item: wire.ip_int(item[0]))]
        return ServeResult({
            "mode": "serve",
            "ok": reached and not errors,
            "stopped_by": stopped_by,
            "interrupted": self.fleet.signal is not None,
            "listen": cfg.listen,
            "expect": cfg.expect,
            "hold": cfg.hold,
            "held_seconds": None if self.reached_at is None else round(self.close_start - self.reached_at, 3),
            "workers": self.workers,
            "accepted": self.total("accepted"),
            "verified": verified,
            "held_at_end": self.total("held"),
            "pending_at_end": self.total("pending"),
            "over_expect": self.total("over_expect"),
            "dropped": self.total("dropped"),
            "failed": sum(failures.values()),
            "failures": failures,
            "peak_concurrent": self.peak,
            "seconds": round(self.close_start - self.t0, 3),
            "kernel_slab_bytes_per_conn": round((peak["slab"] - base["slab"]) / per),
            "kernel_figures_reliable": reliable,
            "kernel_figures_note": why,
            "kernel_tcp_mem_bytes_per_conn": round((peak.get("tcp_mem", 0) - base.get("tcp_mem", 0)) / per, 1),
            "sockets_after": end.get("tcp_inuse", 0),
            "clients": clients,
            "errors": errors,
            "timeline": self.timeline,
        })


PEER_KEYS = serve_worker.PEER_COLUMNS


class ServeResult(SplitResult):
    """--serve's result: exit 0 when ok (every expected connection verified, no server
    limit hit), 3 otherwise (a signal that ended it included: the run ends that way)."""

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_SHORT

    def summary_lines(self) -> List[str]:
        return summary_lines(self.data)


def held_text(r: dict) -> str:
    """How long the expected connections were held, against --hold: from the moment the
    last of them verified until the run ended."""
    if r["held_seconds"] is None:
        return "not every expected connection verified" if r["expect"] else "no --expect"
    held = f"{r['held_seconds']:,.1f} s"
    if r["stopped_by"] == CLIENTS_CLOSED:
        return held + (f" of --hold {r['hold']:g} s: " if r["hold"] is not None else ": ") \
            + "then their clients had all closed"
    return held + (f" (--hold {r['hold']:g} s)" if r["hold"] is not None else "")


def summary_lines(r: dict) -> List[str]:
    f = r["failures"]
    lines = [
        f"{'served' if r['ok'] else 'FELL SHORT'}: {r['verified']:,} verified"
        + (f" of {r['expect']:,} expected" if r["expect"] else "")
        + f" on {r['listen']} ({r['accepted']:,} accepted, {r['failed']:,} failed, "
          f"{r['over_expect']:,} over --expect, {r['dropped']:,} dropped by clients); ended by {r['stopped_by']}",
        "failed: " + ", ".join(f"{k.replace('_', '-')} {v:,}" for k, v in f.items()),
        f"held: {held_text(r)}",
        f"peak concurrent {r['peak_concurrent']:,} over {r['workers']} worker(s); kernel: slab "
        + (f"{r['kernel_slab_bytes_per_conn']:,} B/conn" if r["kernel_figures_reliable"]
           else "not measurable (host busy)")
        + f", tcp mem {r['kernel_tcp_mem_bytes_per_conn']:,} B/conn",
    ]
    for c in r["clients"]:
        lines.append(f"  client {c['address']}: accepted {c['accepted']:,} verified {c['verified']:,} "
                     f"failed {sum(c[k] for k in wire.FAILURES):,} over {c['over_expect']:,}")
    for e in r["errors"]:
        lines.append(f"error: {e['side']} {e['op']} {e['errno']} x{e['count']} -> {e['limit']}: "
                     f"{e['first_message']}")
        lines.append(f"  fix: {e['hint']}")
    return lines



