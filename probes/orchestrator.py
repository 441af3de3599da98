"""The orchestrator: plan, fork the workers, follow them, measure, end them all.

It runs in a lean interpreter (`python -m probes`, started by run_probe or by hand)
because every worker is a fork of it: whatever it has imported, every worker maps,
and whatever of that a worker touches it copies.  The workers are forked after
gc.freeze(), so the collector never walks (and so never copies) the inherited heap.

Progress and the result leave through `emit(event)`, one dict per event:

    {"event": "plan", ...Plan.to_dict(), "describe": "..."}
    {"event": "progress", "phase": ..., "established": n, "verified": n, "rate": r, "elapsed": s}
    {"event": "result", "result": {...}}        the last event, always

Ending is one path for every cause (success after the hold, a failure, the timeout,
SIGINT/SIGTERM/SIGHUP): close the `stop` pipe, let workers verify what they hold,
close the `release` pipe, reap every worker (SIGKILL after a grace period), and only
then emit the result.  The pipes, signals, forking and reaping are fleet.Fleet's,
shared with the --serve and --connect orchestrators.
"""
from __future__ import annotations

import errno as E
import os
import signal
import socket
import time
from typing import Callable, Dict, List, Optional

from . import classify, kernel, wire, worker
from .fleet import Fleet, describe_exit
from .config import LISTEN_ADDR, Plan, ProbeConfig, ProbeConfigError, make_plan, raise_nofile, worker_sources

Emit = Callable[[dict], None]
VERIFY_GRACE = 15.0  # seconds past the deadline before unresponsive workers are killed


def open_listeners(plan: Plan, cfg: ProbeConfig) -> List[socket.socket]:
    """Bind and listen on every worker's port before forking any worker, so a busy port
    is found before a single connection is opened.  An automatic port moves on when taken."""
    for attempt in range(8):
        listeners = []
        try:
            for k in range(plan.workers):
                listeners.append(wire.listener(LISTEN_ADDR, plan.port + k))
            return listeners
        except OSError as exc:
            for s in listeners:
                s.close()
            if exc.errno != E.EADDRINUSE or cfg.port is not None:
                raise ProbeConfigError(f"cannot listen on {LISTEN_ADDR}:{plan.port + len(listeners)}: "
                                       f"{exc.strerror}") from None
            low, high = plan.port_range
            nxt = plan.port + plan.workers + 97
            if plan.port < low <= nxt + plan.workers or nxt + plan.workers > 65535:
                break
            plan.port = nxt
    raise ProbeConfigError("no free block of listener ports outside ip_local_port_range")


class Orchestrator:
    def __init__(self, cfg: ProbeConfig, emit: Emit):
        self.cfg, self.emit = cfg, emit
        self.records: List[tuple] = []   # (side, op, errno, index, message), in arrival order

    @property
    def signal(self) -> Optional[int]:
        return self.fleet.signal

    @property
    def exit_status(self) -> Dict[int, int]:
        return self.fleet.exit_status

    # -- setup -------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        nofile = raise_nofile()
        self.plan = plan = make_plan(cfg, nofile)
        self.baseline = kernel.snapshot()
        listeners = open_listeners(plan, cfg)
        self.emit({"event": "plan", **plan.to_dict(), "describe": plan.describe()})
        w = plan.workers
        self.opened, self.accepted = [0] * w, [0] * w
        self.verified, self.mismatches = [0] * w, [0] * w
        self.t_established: List[Optional[int]] = [None] * w
        self.t_verified: List[Optional[int]] = [None] * w
        self.reported = [False] * w     # 'V' received
        self.timed_out = [False] * w

        self.peak = self.baseline.get("tcp_inuse", 0)
        timeout = cfg.effective_timeout
        rate = cfg.rate / w if cfg.rate else None
        try:
            with Fleet() as fleet:
                self.fleet = fleet
                self.t0 = time.monotonic_ns()
                self.deadline = time.monotonic() + timeout
                common = dict(deadline=self.deadline, rate=rate, accept_pause=cfg.accept_pause,
                              nofile=cfg.worker_nofile, **fleet.worker_args())
                fleet.fork_per_listener(listeners, lambda k, fd: worker.start(
                    k, share=plan.shares[k], listener=fd, port=plan.port + k,
                    sources=worker_sources(plan, k), **common))
                return self.follow()
        finally:
            for s in listeners:
                s.close()

    # -- the run -----------------------------------------------------------------------
    def follow(self) -> dict:
        cfg, plan, fleet = self.cfg, self.plan, self.fleet
        phase = "establish"
        last_emit, last_count, last_t = 0.0, 0, time.monotonic()
        self.rate_now = 0.0
        hold_start = hold_end = close_start = stop_until = None
        self.measured = None
        seconds_hold = 0.0
        while True:
            lines, ended = fleet.collect(0.05)  # lines first: a worker's last ones precede its exit
            for line in lines:
                self.on_report(line)
            self.judge_exits(ended)
            now = time.monotonic()
            stopping = self.signal is not None or self.records or any(self.timed_out)
            live = fleet.live
            if phase in ("establish", "exchange"):
                if stopping or now >= self.deadline + VERIFY_GRACE:
                    if not stopping:
                        self.records.append(("client", "timeout", E.ETIMEDOUT, sum(self.accepted),
                                             "workers did not finish before the timeout"))
                    phase = "stopping"
                    fleet.stop()
                    stop_until = now + (1.0 if self.signal is not None else VERIFY_GRACE)
                elif all(self.reported):
                    self.measured = self.measure()
                    phase, hold_start, hold_end = "hold", now, now + cfg.hold
                elif sum(self.accepted) >= sum(plan.shares):
                    phase = "exchange"
            if phase == "stopping":
                if self.signal is not None:  # whoever interrupts wants it over soon
                    stop_until = min(stop_until, now + 1.0)
                finished = all(self.reported[k] or k in self.exit_status for k in range(plan.workers))
                if finished or now >= stop_until:
                    self.measured = self.measure()
                    phase, close_start = "close", now
                    fleet.release()
            elif phase == "hold":
                if self.signal is not None or now >= hold_end:
                    seconds_hold = now - hold_start
                    phase, close_start = "close", now
                    fleet.release()
            if phase == "close" and not live:
                break
            if phase == "close" and now - close_start > 30 + plan.workers * 0.2:
                fleet.kill_all()
            if now - last_emit >= cfg.progress_interval:
                count = sum(self.accepted)
                self.rate_now = (count - last_count) / max(now - last_t, 1e-6)
                last_count, last_t, last_emit = count, now, now
                self.peak = max(self.peak, kernel.sockstat().get("tcp_inuse", 0))
                self.emit({"event": "progress", "phase": phase, "established": count,
                           "verified": sum(self.verified), "rate": round(self.rate_now),
                           "elapsed": round((time.monotonic_ns() - self.t0) / 1e9, 3)})
        seconds_close = time.monotonic() - close_start
        result = self.result(seconds_hold, seconds_close)
        self.emit({"event": "progress", "phase": "done", "established": result["established"],
                   "verified": result["verified"], "rate": 0, "elapsed": result["seconds_total"]})
        return result

    def on_report(self, parts: List[bytes]) -> None:
        k, kind = int(parts[0]), parts[1]
        vals = [int(p) for p in parts[2:]]
        if kind == b"A":
            self.opened[k], self.accepted[k], self.verified[k] = vals
        elif kind == b"D":
            self.t_established[k] = vals[0]
        elif kind == b"V":
            self.accepted[k], self.verified[k], self.mismatches[k], self.t_verified[k] = vals
            self.reported[k] = True
        elif kind == b"T":
            self.opened[k], self.accepted[k] = vals
            self.timed_out[k] = True
            self.records.append(("client", "timeout", E.ETIMEDOUT, vals[1],
                                 f"worker {k}: {vals[0] - vals[1]} of {vals[0]} connections not accepted "
                                 f"before the timeout"))
        elif kind == b"E":
            side, op, code, index = vals
            side_name = ("client", "server")[side]
            self.records.append((side_name, classify.OPS[op], code, index,
                                 f"worker {k}: {side_name} {classify.OPS[op]}() failed at connection "
                                 f"{index}: {os.strerror(code)}"))

    def judge_exits(self, ended: List[int]) -> None:
        for k in ended:
            if not self.reported[k]:
                code, what = describe_exit(self.exit_status[k])
                self.records.append(("worker", "exit", code, self.accepted[k],
                                     f"worker {k} {what} before verifying its connections"))

    # -- figures -------------------------------------------------------------------------
    def measure(self) -> dict:
        after = kernel.snapshot()
        self.peak = max(self.peak, after.get("tcp_inuse", 0))
        uss = pss = 0
        for pid, k in self.fleet.pids.items():
            if k in self.exit_status:
                continue
            try:
                u, p = kernel.private_memory(pid)
            except OSError:
                continue
            uss, pss = uss + u, pss + p
        return {"after": after, "uss": uss, "pss": pss, "own_uss": kernel.private_memory(os.getpid())[0]}

    def result(self, seconds_hold: float, seconds_close: float) -> dict:
        cfg, plan, base = self.cfg, self.plan, self.baseline
        m = self.measured or self.measure()
        after = m["after"]
        end = kernel.snapshot()
        established, verified = sum(self.accepted), sum(self.verified)
        mismatches = sum(self.mismatches)
        attempted = sum(self.opened)
        per = max(established, 1)
        moved = {k: after.get(k, 0) - base.get(k, 0) for k in after if isinstance(after.get(k), int)}
        errors = classify.summarize(self.records, cfg.connections, moved, after)
        t0 = self.t0
        t_est = [t for t in self.t_established if t is not None]
        t_ver = [t for t in self.t_verified if t is not None]
        full = len(t_est) == plan.workers
        seconds_establish = (max(t_est) - t0) / 1e9 if t_est else None
        seconds_total = (max(t_ver) - t0) / 1e9 if t_ver else None
        if self.signal is not None:
            stopped_by = signal.Signals(self.signal).name
        elif errors:
            stopped_by = errors[0]["limit"] or errors[0]["errno"]
        elif mismatches:
            stopped_by = "mismatch"
        elif verified < cfg.connections:
            stopped_by = "unverified"
        else:
            stopped_by = None
        slab = after["slab"] - base["slab"]
        reliable, why = kernel.judge_slab(slab, 2 * established)  # both ends are here
        tcp_mem = after.get("tcp_mem", 0) - base.get("tcp_mem", 0)
        return {
            "ok": stopped_by is None,
            "stopped_by": stopped_by,
            "interrupted": self.signal is not None,
            "requested": cfg.connections,
            "attempted": attempted,
            "established": established,
            "verified": verified,
            "failed": attempted - verified,
            "mismatches": mismatches,
            "workers": plan.workers,
            "per_worker": plan.per_worker,
            "nofile": plan.nofile,
            "port": plan.port,
            "source_net": plan.source_net,
            "seconds_establish": round(seconds_establish, 3) if full and seconds_establish else None,
            "rate_per_s": round(established / seconds_establish) if full and seconds_establish else None,
            "seconds_exchange": (round(seconds_total - seconds_establish, 3)
                                 if full and seconds_total and seconds_establish else None),
            "seconds_total": round(seconds_total, 3) if seconds_total and len(t_ver) == plan.workers else None,
            "seconds_hold": round(seconds_hold, 3),
            "seconds_close": round(seconds_close, 3),
            "kernel_slab_bytes": slab,
            "kernel_slab_bytes_per_conn": round(slab / per),
            "kernel_figures_reliable": reliable,
            "kernel_figures_note": why,
            "kernel_tcp_mem_bytes": tcp_mem,
            "kernel_tcp_mem_bytes_per_conn": round(tcp_mem / per, 1),
            "mem_available_drop_bytes_per_conn": round((base["mem_available"] - after["mem_available"]) / per),
            "user_uss_bytes": m["uss"],
            "user_pss_bytes": m["pss"],
            "user_bytes_per_conn": round(m["uss"] / per),
            "orchestrator_uss_bytes": m["own_uss"],
            "sockets_baseline": base.get("tcp_inuse", 0),
            "peak_sockets": self.peak,
            "sockets_after": end.get("tcp_inuse", 0),
            "time_wait_after": end.get("tcp_tw", 0),
            "listen_overflows": moved.get("ListenOverflows", 0),
            "errors": errors,
        }


def orchestrate(cfg: ProbeConfig, emit: Emit) -> dict:
    """Run the probe in this process (which forks the workers); returns the result dict."""
    return Orchestrator(cfg, emit).run()
