"""`--connect HOST:PORT`: the client side of a probe whose server runs elsewhere
(`--serve`, or anything speaking probes.wire).

Workers (connect_worker.py) each open their share of the N connections, one
descriptor per connection, spread over the local addresses inside --source-net
(e.g. aliases added by `tuner apply --role client --alias-dev DEV --alias-net CIDR`),
verify each through the wire exchange, hold them --hold seconds and close them.
Failures are classified like the local probe's (probes.classify), as limits of this
host: descriptors, ports per source address, source addresses, memory, timeouts.

    exit status (python -m probes): 0 all N verified, 3 short, 2 bad configuration,
    128+N ended by signal N
"""
from __future__ import annotations

import errno as E
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable, List, Optional

from . import classify, connect_worker, kernel, wire, worker
from .config import FD_HEADROOM, ProbeConfigError, fast_ports, raise_nofile
from .fleet import Fleet, describe_exit
from .result import EXIT_OK, EXIT_SHORT, EXIT_SIGNAL_BASE

Emit = Callable[[dict], None]
STOP_GRACE = 5.0   # seconds for stopped workers to verify what they opened


@dataclass
class ConnectConfig:
    target: str = "127.0.0.1:7000"     # HOST:PORT of the server
    connections: int = 1000
    source_net: Optional[str] = None   # spread over the local addresses in this CIDR; None: kernel picks
    rate: Optional[float] = None       # new connections per second, all workers together
    hold: float = 0.0
    timeout: Optional[float] = None    # seconds to establish and verify; None: 30 + N/10000
    workers: Optional[int] = None      # None: as few as RLIMIT_NOFILE allows
    worker_nofile: Optional[int] = None
    progress_interval: float = 0.25

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ConnectConfig":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ProbeConfigError(f"unknown connect settings: {', '.join(sorted(unknown))}")
        return cls(**data)

    def validate(self) -> None:
        try:
            wire.parse_endpoint(self.target)
        except wire.EndpointError as exc:
            raise ProbeConfigError(f"--connect: {exc}") from None
        if not isinstance(self.connections, int) or self.connections < 1:
            raise ProbeConfigError("--connections must be a positive integer")
        if self.rate is not None and self.rate <= 0:
            raise ProbeConfigError("--rate must be positive")
        if self.hold < 0 or (self.timeout is not None and self.timeout <= 0):
            raise ProbeConfigError("--hold must not be negative and --timeout must be positive")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ProbeConfigError("--workers must be a positive integer")

    @property
    def effective_timeout(self) -> float:
        return self.timeout if self.timeout is not None else 30.0 + self.connections / 10000


def sources_for(cfg: ConnectConfig) -> List[str]:
    if not cfg.source_net:
        return []
    try:
        found = wire.local_sources(cfg.source_net)
    except wire.EndpointError as exc:
        raise ProbeConfigError(str(exc)) from None
    if not found:
        raise ProbeConfigError(f"--source-net {cfg.source_net}: no local address inside it; add aliases "
                               f"with tuner apply --role client --alias-dev DEV --alias-net {cfg.source_net}")
    return found


def fast_capacity(sources: int) -> int:
    """Connections to one server ADDR:PORT that connect() hands out quickly: each source
    address (or the one the kernel picks) gets config.FAST_PORT_SHARE of the usable
    port range (why: see there)."""
    return max(sources, 1) * fast_ports(*kernel.port_range())


class Client:
    def __init__(self, cfg: ConnectConfig, emit: Emit):
        self.cfg, self.emit = cfg, emit
        self.records: List[tuple] = []

    def run(self) -> dict:
        cfg = self.cfg
        cfg.validate()
        host, port = wire.parse_endpoint(cfg.target)
        nofile = raise_nofile()
        if cfg.worker_nofile:
            nofile = min(nofile, cfg.worker_nofile)
        per = max(1, nofile - FD_HEADROOM)
        w = self.w = min(cfg.workers or math.ceil(cfg.connections / per), cfg.connections)
        base, extra = divmod(cfg.connections, w)
        shares = [base + (1 if k < extra else 0) for k in range(w)]
        self.sources = sources_for(cfg)
        fast = fast_capacity(len(self.sources))
        self.emit({"event": "plan", "workers": w, "per_worker": max(shares), "nofile": nofile,
                   "sources": len(self.sources), "fast_capacity": fast,
                   "describe": f"{w} worker(s) x up to {max(shares):,} connections to {host}:{port}, "
                               + (f"{len(self.sources)} source address(es) in {cfg.source_net}"
                                  if self.sources else "kernel-chosen source address")
                               + (f"; beyond ~{fast:,} connect() slows down: add source addresses"
                                  if cfg.connections > fast else "")})
        self.opened, self.established, self.verified = [0] * w, [0] * w, [0] * w
        self.mismatches, self.t_done = [0] * w, [None] * w
        self.reported = [False] * w
        self.baseline = kernel.snapshot()
        rate = cfg.rate / w if cfg.rate else None
        with Fleet() as fleet:
            self.fleet = fleet
            self.t0 = time.monotonic_ns()
            deadline = time.monotonic() + cfg.effective_timeout
            for k in range(w):
                kwargs = dict(share=shares[k], host=host, port=port, sources=self.sources,
                              deadline=deadline, rate=rate, nofile=cfg.worker_nofile,
                              **fleet.worker_args())
                fleet.fork(k, lambda k=k, kwargs=kwargs: worker.start(k, make=connect_worker.ConnectWorker,
                                                                      **kwargs))
            fleet.started()
            return self.follow(deadline)

    def follow(self, deadline: float) -> dict:
        cfg, fleet = self.cfg, self.fleet
        phase, hold_start, stop_until = "establish", None, None
        last_emit = last_count = 0
        last_t = time.monotonic()
        self.seconds_hold = 0.0
        while True:
            lines, ended = fleet.collect(0.05)  # lines first: a worker's last ones precede its exit
            for parts in lines:
                self.on_report(parts)
            for k in ended:
                if not self.reported[k]:
                    code, what = describe_exit(fleet.exit_status[k])
                    self.records.append(("worker", "exit", code, self.established[k],
                                         f"worker {k} {what} before verifying its connections"))
            now = time.monotonic()
            if phase == "establish":
                if all(self.reported):
                    self.after = kernel.snapshot()
                    phase, hold_start = "hold", now
                elif fleet.signal is not None or now > deadline + STOP_GRACE:
                    fleet.stop()
                    phase, stop_until = "stopping", now + STOP_GRACE
            if phase == "stopping" and (all(self.reported[k] or k in fleet.exit_status for k in range(self.w))
                                        or now >= stop_until):
                self.after = kernel.snapshot()
                phase = "close"
                fleet.release()
            if phase == "hold" and (fleet.signal is not None or now - hold_start >= cfg.hold):
                self.seconds_hold = now - hold_start
                phase = "close"
                fleet.release()
            if phase == "close" and not fleet.live:
                break
            if now - last_emit >= cfg.progress_interval:
                count = sum(self.established)
                rate = (count - last_count) / max(now - last_t, 1e-6)
                last_emit, last_count, last_t = now, count, now
                self.emit({"event": "progress", "phase": phase, "established": count,
                           "verified": sum(self.verified), "rate": round(rate),
                           "elapsed": round((time.monotonic_ns() - self.t0) / 1e9, 3)})
        return self.result()

    def on_report(self, parts: List[bytes]) -> None:
        k, kind, vals = int(parts[0]), parts[1], [int(p) for p in parts[2:]]
        if kind == b"A":
            self.opened[k], self.established[k], self.verified[k] = vals
        elif kind == b"V":
            self.opened[k], self.established[k], self.verified[k], self.mismatches[k], self.t_done[k] = vals
            self.reported[k] = True
        elif kind == b"T":
            self.records.append(("client", "timeout", E.ETIMEDOUT, vals[0],
                                 f"worker {k}: {vals[1]} of {vals[0]} connections not verified before "
                                 f"the timeout"))
        elif kind == b"E":
            side, op, code, index = vals
            self.records.append(("client", classify.OPS[op], code, index,
                                 f"worker {k}: client {classify.OPS[op]}() failed after {index} "
                                 f"connections: {os.strerror(code)}"))

    def result(self) -> dict:
        cfg, base = self.cfg, self.baseline
        after = getattr(self, "after", None) or kernel.snapshot()
        verified, established = sum(self.verified), sum(self.established)
        moved = {k: after.get(k, 0) - base.get(k, 0) for k in after if isinstance(after.get(k), int)}
        errors = classify.summarize(self.records, cfg.connections, moved, after, role="client")
        sig = self.fleet.signal
        if sig is not None:
            stopped_by = signal.Signals(sig).name
        elif errors:
            stopped_by = errors[0]["limit"] or errors[0]["errno"]
        elif sum(self.mismatches):
            stopped_by = "mismatch"
        elif verified < cfg.connections:
            stopped_by = "unverified"
        else:
            stopped_by = None
        done = [t for t in self.t_done if t is not None]
        seconds = (max(done) - self.t0) / 1e9 if len(done) == self.w and verified else None
        per = max(verified, 1)
        reliable, why = kernel.judge_slab(after["slab"] - base["slab"], verified)
        return {
            "mode": "connect",
            "ok": stopped_by is None,
            "stopped_by": stopped_by,
            "interrupted": sig is not None,
            "target": cfg.target,
            "requested": cfg.connections,
            "attempted": sum(self.opened),
            "established": established,
            "verified": verified,
            "failed": sum(self.opened) - verified,
            "mismatches": sum(self.mismatches),
            "workers": self.w,
            "source_net": cfg.source_net,
            "source_addresses": len(self.sources),
            "seconds_verified": round(seconds, 3) if seconds else None,
            "rate_per_s": round(verified / seconds) if seconds else None,
            "seconds_hold": round(self.seconds_hold, 3),
            "kernel_slab_bytes_per_conn": round((after["slab"] - base["slab"]) / per),
            "kernel_figures_reliable": reliable,
            "kernel_figures_note": why,
            "kernel_tcp_mem_bytes_per_conn": round((after.get("tcp_mem", 0) - base.get("tcp_mem", 0)) / per, 1),
            "errors": errors,
        }


def exit_code(result: dict) -> int:
    if result["ok"]:
        return EXIT_OK
    if result["interrupted"]:
        return EXIT_SIGNAL_BASE + signal.Signals[result["stopped_by"]].value
    return EXIT_SHORT


def summary_lines(r: dict) -> List[str]:
    lines = [
        f"{'verified' if r['ok'] else 'FELL SHORT'}: {r['verified']:,} of {r['requested']:,} connections to "
        f"{r['target']} ({r['established']:,} established, {r['failed']:,} failed, {r['mismatches']:,} "
        f"mismatches)" + ("" if r["ok"] else f"; stopped by {r['stopped_by']}"),
        f"{r['workers']} worker(s), {r['source_addresses'] or 'kernel-chosen'} source address(es); "
        f"verified in {r['seconds_verified'] if r['seconds_verified'] is not None else '-'} s "
        f"({r['rate_per_s'] or '-'}/s), held {r['seconds_hold']} s; kernel slab "
        + (f"{r['kernel_slab_bytes_per_conn']:,} B/conn" if r["kernel_figures_reliable"]
           else "not measurable (host busy)"),
    ]
    for e in r["errors"]:
        lines.append(f"error: {e['side']} {e['op']} {e['errno']} x{e['count']} -> {e['limit']}: "
                     f"{e['first_message']}")
        lines.append(f"  fix: {e['hint']}")
    return lines


def connect(cfg: ConnectConfig, emit: Emit) -> dict:
    """Connect from this process (which forks the workers); returns the result dict."""
    return Client(cfg, emit).run()

