"""The local (loopback) probe: both ends of N connections on this host.

Its orchestrator runs in a lean interpreter (`python -m probes`, started by run_probe or by hand)
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
then emit the result.  That loop is orchestration.Orchestration's, shared with
--serve and --connect; this module plans the workers, forks them on their listeners
and measures.
"""
from __future__ import annotations

import errno as E
import os
import socket
from typing import Callable, List, Optional

from . import kernel, local_worker, wire
from .config import LISTEN_ADDR, WorkerPlan, ProbeConfig, ProbeConfigError, make_plan, worker_sources
from .fleet import Fleet, start_worker
from .orchestration import Orchestration
from .result import Failure, ProbeResult

Emit = Callable[[dict], None]


def open_listeners(plan: WorkerPlan, cfg: ProbeConfig) -> List[socket.socket]:
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


class Local(Orchestration):
    lines = local_worker.LINES

    def plan(self, nofile: int) -> None:
        cfg = self.cfg
        self.worker_plan = plan = make_plan(cfg, nofile)
        self.workers = plan.workers
        self.baseline = kernel.snapshot()
        self.listeners = open_listeners(plan, cfg)
        self.emit({"event": "plan", **plan.to_dict(), "describe": plan.describe()})
        self.peak = self.baseline.get("tcp_inuse", 0)
        self.measured = None

    def fork_workers(self, fleet: Fleet) -> None:
        cfg, plan = self.cfg, self.worker_plan
        common = dict(deadline=self.deadline, rate=cfg.rate / plan.workers if cfg.rate else None,
                      accept_pause=cfg.accept_pause, nofile=cfg.worker_nofile, **fleet.worker_args())
        fleet.fork_per_listener(self.listeners, lambda k, fd: start_worker(
            local_worker.LocalWorker, k, share=plan.shares[k], listener=fd, port=plan.port + k,
            sources=worker_sources(plan, k), port_range=plan.port_range, **common))

    def cleanup(self) -> None:
        for s in getattr(self, "listeners", ()):
            s.close()

    def exchanging(self) -> bool:
        return self.total("accepted") >= sum(self.worker_plan.shares)

    def on_line(self, k: int, line, values: dict) -> None:
        if line is local_worker.TIMED_OUT:
            self.records.append(("client", "timeout", E.ETIMEDOUT, values["accepted"],
                                 f"worker {k}: {values['opened'] - values['accepted']} of {values['opened']} "
                                 f"connections not accepted before the timeout"))

    def progress(self) -> dict:
        self.peak = max(self.peak, kernel.sockstat().get("tcp_inuse", 0))
        return {"established": self.total("accepted"), "verified": self.total("verified")}

    def follow(self) -> None:
        super().follow()
        self.emit({"event": "progress", "phase": "done", "established": self.total("accepted"),
                   "verified": self.total("verified"), "rate": 0,
                   "elapsed": round(self.seconds_since_fork("t_verified") or 0, 3)})

    # -- figures -------------------------------------------------------------------------
    def measure(self) -> None:
        after = kernel.snapshot()
        self.peak = max(self.peak, after.get("tcp_inuse", 0))
        uss = pss = 0
        for pid, k in self.fleet.pids.items():
            if k in self.fleet.exit_status:
                continue
            try:
                u, p = kernel.private_memory(pid)
            except OSError:
                continue
            uss, pss = uss + u, pss + p
        self.measured = {"after": after, "uss": uss, "pss": pss,
                         "own_uss": kernel.private_memory(os.getpid())[0]}

    def seconds_since_fork(self, column: str) -> Optional[float]:
        """Fork to the last worker's `column` time, when every worker sent one."""
        times = [c[column] for c in self.counts if column in c]
        if len(times) < self.workers or not times:
            return None
        return (max(times) - self.t0_ns) / 1e9

    def result(self) -> ProbeResult:
        cfg, plan, base = self.cfg, self.worker_plan, self.baseline
        if self.measured is None:
            self.measure()
        m = self.measured
        after = m["after"]
        end = kernel.snapshot()
        established, verified = self.total("accepted"), self.total("verified")
        mismatches, attempted = self.total("mismatches"), self.total("opened")
        per = max(established, 1)
        moved = {k: after.get(k, 0) - base.get(k, 0) for k in after if isinstance(after.get(k), int)}
        errors = self.summarize(moved, after, role="loopback")
        stopped_by = self.verdict(errors, cfg.connections, verified, mismatches)
        seconds_establish = self.seconds_since_fork("t_established")
        seconds_total = self.seconds_since_fork("t_verified")
        slab = after["slab"] - base["slab"]
        reliable, why = kernel.judge_run(base, after, 2 * established, 2 * established)  # both ends are here
        tcp_mem = after.get("tcp_mem", 0) - base.get("tcp_mem", 0)
        return ProbeResult(
            ok=stopped_by is None,
            stopped_by=stopped_by,
            interrupted=self.fleet.signal is not None,
            requested=cfg.connections,
            attempted=attempted,
            established=established,
            verified=verified,
            failed=attempted - verified,
            mismatches=mismatches,
            workers=plan.workers,
            per_worker=plan.per_worker,
            nofile=plan.nofile,
            port=plan.port,
            source_net=plan.source_net,
            seconds_establish=round(seconds_establish, 3) if seconds_establish else None,
            rate_per_s=round(established / seconds_establish) if seconds_establish else None,
            seconds_exchange=(round(seconds_total - seconds_establish, 3)
                              if seconds_total and seconds_establish else None),
            seconds_total=round(seconds_total, 3) if seconds_total else None,
            seconds_hold=round(self.seconds_hold, 3),
            seconds_close=round(self.seconds_close, 3),
            kernel_slab_bytes=slab,
            kernel_slab_bytes_per_conn=round(slab / per),
            kernel_figures_reliable=reliable,
            kernel_figures_note=why,
            kernel_tcp_mem_bytes=tcp_mem,
            kernel_tcp_mem_bytes_per_conn=round(tcp_mem / per, 1),
            mem_available_drop_bytes_per_conn=round((base["mem_available"] - after["mem_available"]) / per),
            user_uss_bytes=m["uss"],
            user_pss_bytes=m["pss"],
            user_bytes_per_conn=round(m["uss"] / per),
            orchestrator_uss_bytes=m["own_uss"],
            sockets_baseline=base.get("tcp_inuse", 0),
            peak_sockets=self.peak,
            sockets_after=end.get("tcp_inuse", 0),
            time_wait_after=end.get("tcp_tw", 0),
            listen_overflows=moved.get("ListenOverflows", 0),
            errors=[Failure(**e) for e in errors],
            timeline=self.timeline,
        )
