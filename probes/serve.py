"""`--serve ADDR:PORT`: the server side of a probe whose clients run elsewhere.

Workers (serve_worker.py) each hold an SO_REUSEPORT listener on the same ADDR:PORT,
opened here before any fork so a busy port is an error before anything runs; the
kernel spreads incoming connections over them, and each keeps within its
RLIMIT_NOFILE.  Any number of clients may connect and speak the wire exchange
(probes.wire); the orchestrator sums the workers' running totals and, at the end,
their per-client-address tables.

The run ends on SIGINT/SIGTERM/SIGHUP, on --timeout, or -- with --expect and --hold
-- once --expect connections have been verified and held --hold seconds.  A worker
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
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable, Dict, List, Optional

from . import classify, kernel, serve_worker, wire, worker
from .config import FD_HEADROOM, ProbeConfigError, raise_nofile
from .fleet import Fleet, describe_exit
from .result import EXIT_OK, EXIT_SHORT

Emit = Callable[[dict], None]
SPREAD_SLACK = 1.15   # SO_REUSEPORT hashes unevenly: size workers for 15% more than --expect
FINAL_GRACE = 10.0    # seconds for released workers to send their tables and exit
CLOSE_SETTLE = 1.0    # seconds for the workers' gracefully closed sockets to finish closing


@dataclass
class ServeConfig:
    listen: str = ":7000"                 # ADDR:PORT (":PORT" for every address)
    expect: Optional[int] = None          # connections to verify; more are reset at accept
    hold: Optional[float] = None          # with expect: hold them this long, then end
    timeout: Optional[float] = None       # end (short) if --expect is not verified by then
    echo_timeout: float = 10.0            # seconds a client has to echo its index
    workers: Optional[int] = None         # None: enough for --expect, at least one per CPU
    worker_nofile: Optional[int] = None   # lower RLIMIT_NOFILE in workers (tests)
    progress_interval: float = 0.25

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
    if cfg.workers:
        return cfg.workers
    per = max(1, nofile - FD_HEADROOM)
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


class Server:
    def __init__(self, cfg: ServeConfig, emit: Emit):
        self.cfg, self.emit = cfg, emit
        self.records: List[tuple] = []   # failures that end the run (a worker died)
        self.limits: List[tuple] = []    # limits one worker hit; the others keep serving
        self.full: set = set()           # workers whose listener closed on such a limit

    def run(self) -> dict:
        cfg = self.cfg
        cfg.validate()
        addr, port = wire.parse_endpoint(cfg.listen, listen=True)
        nofile = raise_nofile()
        if cfg.worker_nofile:
            nofile = min(nofile, cfg.worker_nofile)
        w = self.w = plan_workers(cfg, nofile)
        listeners = open_listeners(addr, port, w)
        held_map = self.held_map = mmap.mmap(-1, serve_worker.HELD.size * w)  # shared with every worker
        self.totals: List[list] = [[0] * (6 + len(wire.FAILURES)) for _ in range(w)]
        self.peers: Dict[str, list] = {}
        self.final = [False] * w
        self.baseline = kernel.snapshot()
        self.at_peak, self.peak, self.at_peak_held = self.baseline, 0, 0
        self.emit({"event": "listening", "address": addr, "port": port, "workers": w,
                   "nofile": nofile, "capacity": w * (nofile - FD_HEADROOM),
                   "describe": f"{w} worker(s) on {addr}:{port} (SO_REUSEPORT), up to "
                               f"{nofile - FD_HEADROOM:,} connections each"})
        try:
            with Fleet() as fleet:
                self.fleet = fleet
                self.t0 = time.monotonic()
                common = dict(workers=w, held_map=held_map, expect=cfg.expect,
                              echo_timeout=cfg.echo_timeout, nofile=cfg.worker_nofile,
                              **fleet.worker_args())
                fleet.fork_per_listener(listeners, lambda k, fd: worker.start(
                    k, make=serve_worker.ServeWorker, listener=fd, **common))
                return self.follow()
        finally:
            for s in listeners:
                s.close()
            held_map.close()

    # -- the run -------------------------------------------------------------------------
    def follow(self) -> dict:
        cfg, fleet = self.cfg, self.fleet
        released_at = reached_at = None
        last_emit = last_count = last_snap = 0
        last_t = time.monotonic()
        self.stopped_by = None
        while True:
            lines, ended = fleet.collect(0.05)
            for parts in lines:
                self.on_report(parts)
            for k in ended:
                # A worker that sent its final lines, or that exited cleanly once released
                # (the run was ending anyway), did what it should: only other exits failed.
                status = fleet.exit_status[k]
                if self.final[k] or (released_at is not None and status == 0):
                    continue
                code, what = describe_exit(status)
                self.records.append(("worker", "exit", code, 0, f"worker {k} {what}"))
            now = time.monotonic()
            held = sum(v for (v,) in serve_worker.HELD.iter_unpack(self.held_map))  # live, not last report
            if held > self.peak:
                self.peak = held
                # Kernel figures where most connections are held (a snapshot costs ~1 ms).
                if now - last_snap >= 0.2 or held == cfg.expect:
                    self.at_peak, self.at_peak_held, last_snap = kernel.snapshot(), held, now
            if released_at is None:
                # Verified and still held: connections that came and went do not count.
                if cfg.expect is not None and held >= cfg.expect and reached_at is None:
                    reached_at = now
                if fleet.signal is not None:
                    self.stopped_by = signal.Signals(fleet.signal).name
                elif self.records:
                    self.stopped_by = "error"
                elif len(self.full) == self.w:
                    self.stopped_by = "no listener left"
                elif reached_at is not None and cfg.hold is not None and now - reached_at >= cfg.hold:
                    self.stopped_by = "held"
                elif cfg.timeout and reached_at is None and now - self.t0 >= cfg.timeout:
                    self.stopped_by = "timeout"
                if self.stopped_by:
                    self.seconds = now - self.t0
                    fleet.release()
                    released_at = now
            elif not fleet.live:
                break  # collect() read what the last workers wrote before exiting
            elif now - released_at > FINAL_GRACE:
                fleet.kill_all()
            if now - last_emit >= cfg.progress_interval:
                accepted = self.sum(0)
                rate = (accepted - last_count) / max(now - last_t, 1e-6)
                last_emit, last_count, last_t = now, accepted, now
                self.emit({"event": "progress", "phase": "serve" if released_at is None else "close",
                           "accepted": accepted, "verified": self.sum(1), "held": held,
                           "failed": sum(self.failures().values()), "over_expect": self.sum(4),
                           "rate": round(rate), "elapsed": round(now - self.t0, 3)})
        return self.result()

    def on_report(self, parts: List[bytes]) -> None:
        k, kind, vals = int(parts[0]), parts[1], parts[2:]
        if kind == b"S":
            self.totals[k] = [int(v) for v in vals]
        elif kind == b"P":
            row = self.peers.setdefault(vals[0].decode(), [0] * serve_worker.A_SIZE)
            for i, v in enumerate(vals[1:]):
                row[i] += int(v)
        elif kind == b"E":
            side, op, code, index = (int(v) for v in vals)
            record = (("client", "server")[side], classify.OPS[op], code, index,
                      f"worker {k}: server {classify.OPS[op]}() failed after {index} "
                      f"connections: {os.strerror(code)}")
            if classify.OPS[op] == "accept" and code in serve_worker.LISTENER_FULL:
                # A limit of this worker, classified in the result; it closed its listener
                # and the kernel hashes new clients to the other workers' listeners.
                self.limits.append(record)
                self.full.add(k)
            else:
                self.records.append(record)
        elif kind == b"F":
            self.final[k] = True

    def sum(self, i: int) -> int:
        return sum(t[i] for t in self.totals)

    def failures(self) -> Dict[str, int]:
        return {name: self.sum(6 + i) for i, name in enumerate(wire.FAILURES)}

    def result(self) -> dict:
        cfg, base, peak = self.cfg, self.baseline, self.at_peak
        failures = self.failures()
        verified = self.sum(1)
        per = max(self.at_peak_held, 1)
        errors = classify.summarize(self.records + self.limits, cfg.expect or self.peak or 1,
                                    {k: peak.get(k, 0) - base.get(k, 0) for k in peak
                                     if isinstance(peak.get(k), int)}, peak, role="server")
        reached = cfg.expect is None or verified >= cfg.expect
        stopped_by = self.stopped_by
        if errors and stopped_by in ("error", "no listener left"):
            # Ended by what failed: name the limit.  Ended otherwise (a signal, --hold,
            # --timeout) with a worker full on the way: that is how it ended, and the
            # limit is in errors (and makes ok false).
            stopped_by = errors[0]["limit"] or errors[0]["errno"]
        # After every worker is reaped; the listeners (in the baseline) are closed too.
        # Connections closed with a FIN (a client that left before verifying, garbage)
        # can still be finishing: give them a retransmission or two before counting.
        end = kernel.settled_sockstat(base.get("tcp_inuse", 0) - self.w, CLOSE_SETTLE)
        reliable, why = kernel.judge_slab(peak["slab"] - base["slab"], self.at_peak_held)
        clients = [{"address": ip, **dict(zip(PEER_KEYS, row))}
                   for ip, row in sorted(self.peers.items(), key=lambda item: wire.ip_int(item[0]))]
        return {
            "mode": "serve",
            "ok": reached and not errors,
            "stopped_by": stopped_by,
            "interrupted": self.fleet.signal is not None,
            "listen": cfg.listen,
            "expect": cfg.expect,
            "workers": self.w,
            "accepted": self.sum(0),
            "verified": verified,
            "held_at_end": self.sum(2),
            "pending_at_end": self.sum(3),
            "over_expect": self.sum(4),
            "dropped": self.sum(5),
            "failed": sum(failures.values()),
            "failures": failures,
            "peak_concurrent": self.peak,
            "seconds": round(self.seconds, 3),
            "kernel_slab_bytes_per_conn": round((peak["slab"] - base["slab"]) / per),
            "kernel_figures_reliable": reliable,
            "kernel_figures_note": why,
            "kernel_tcp_mem_bytes_per_conn": round((peak.get("tcp_mem", 0) - base.get("tcp_mem", 0)) / per, 1),
            "sockets_after": end.get("tcp_inuse", 0),
            "clients": clients,
            "errors": errors,
        }


PEER_KEYS = ("accepted", "verified", "dropped", "over_expect") + wire.FAILURES


def exit_code(result: dict) -> int:
    return EXIT_OK if result["ok"] else EXIT_SHORT


def summary_lines(r: dict) -> List[str]:
    f = r["failures"]
    lines = [
        f"{'served' if r['ok'] else 'FELL SHORT'}: {r['verified']:,} verified"
        + (f" of {r['expect']:,} expected" if r["expect"] else "")
        + f" on {r['listen']} ({r['accepted']:,} accepted, {r['failed']:,} failed, "
          f"{r['over_expect']:,} over --expect, {r['dropped']:,} dropped by clients); ended by {r['stopped_by']}",
        "failed: " + ", ".join(f"{k.replace('_', '-')} {v:,}" for k, v in f.items()),
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


def serve(cfg: ServeConfig, emit: Emit) -> dict:
    """Serve in this process (which forks the workers); returns the result dict."""
    return Server(cfg, emit).run()

