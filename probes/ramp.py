"""`--connect URL --step K`: the step ramp, on the orchestrator's side.

Each step opens K more connections (every worker its part of the new total, through
the control block of connect_held), lets the service settle, and records one row:

    OPEN --(every worker's part decided)--> SETTLE --(--settle seconds)--> sample the
    service (tuner.host.servicecost: its PSS, its sockets' kernel memory, its CPU) and
    start a latency round --(every worker reported its window)--> the row;
    then the next step, or HOLD after the last one, or the end of the ramp when the
    row's p99 passed --max-p99.

A row's latency is every exchange answered since the previous row: the step's round
on a sample of held connections plus, with --ping-every, the steady pings meanwhile.
Its CPU is what the service used since the previous row (or since before the first
fork).
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

from tuner.host.numfmt import millis, number

from .config import split_shares
from .connect_held import ROUND_SPREAD, control_block, set_round, set_step
from .latency import Histogram
from .orchestration import TIMEOUT

OPEN, SETTLE, SAMPLE, DONE = "open", "settle", "sample", "done"
MAX_P99 = "max-p99"          # stopped_by when the ramp ended on latency
SAMPLE_PER_STEP = 256        # held connections a round pings, all workers together


class Ramp:
    def __init__(self, cfg, workers: int, sampler, emit: Callable[[dict], None]):
        self.cfg, self.workers, self.sampler, self.emit = cfg, workers, sampler, emit
        self.block = control_block(workers)
        self.step, self.round, self.phase = 1, 0, OPEN
        self.rows: List[dict] = []
        self.windows: Dict[int, Histogram] = {}
        self.over: Optional[dict] = None          # the first row past --max-p99
        self.sample_per_worker = -(-SAMPLE_PER_STEP // workers)
        self.last = self.take()                   # the service before the first fork
        set_step(self.block, 1, self.targets(1))
        self.since = self.step_started = time.monotonic()

    @property
    def steps(self) -> int:
        return -(-self.cfg.connections // self.cfg.step)

    def targets(self, step: int) -> List[int]:
        return split_shares(min(step * self.cfg.step, self.cfg.connections), self.workers)

    def take(self):
        """One sample of the service, or None when it is not found here."""
        if self.sampler is None:
            return None
        try:
            return self.sampler.sample()
        except OSError:
            return None

    # -- the orchestrator's tick ---------------------------------------------------------
    def tick(self, now: float, mode) -> None:
        """mode: the Client (its counts, started workers, fleet)."""
        alive = [k for k in mode.started if k not in mode.fleet.exit_status]
        if self.phase == OPEN:
            if all(mode.counts[k].get("stepped", 0) >= self.step or mode.reported[k] for k in alive):
                self.phase, self.opened_at = SETTLE, now
        elif self.phase == SETTLE:
            if now >= self.opened_at + self.cfg.settle:
                self.cost = self.take()
                self.round += 1
                self.windows[self.round] = Histogram()
                set_round(self.block, self.round)
                self.phase, self.sampled_at = SAMPLE, now
        elif self.phase == SAMPLE:
            done = all(mode.counts[k].get("sampled", 0) >= self.round for k in alive)
            if done or now >= self.sampled_at + ROUND_SPREAD + self.cfg.check_timeout + 5.0:
                self.record(mode.total("held"), now)

    def record(self, held: int, now: float) -> None:
        row = self.row(held, self.cost, self.windows.pop(self.round), now)
        self.rows.append(row)
        self.emit({"event": "step", **row})
        self.last = self.cost or self.last
        limit = self.cfg.max_p99
        p99 = (row["latency_ms"] or {}).get("p99")
        if limit is not None and p99 is not None and p99 > limit:
            self.over, self.phase = row, DONE
        elif self.step >= self.steps:
            self.phase = DONE
        else:
            self.step += 1
            set_step(self.block, self.step, self.targets(self.step))
            self.phase, self.step_started = OPEN, now

    def row(self, held: int, cost, window: Histogram, now: float) -> dict:
        last = self.last
        cpu = round(cost.cpu_seconds - last.cpu_seconds, 2) if cost and last else None
        found = cost is not None and cost.pids
        return {"step": self.step, "connections": held,
                "service_memory_bytes": cost.memory_bytes if found else None,
                "service_kernel_bytes": cost.kernel_bytes if cost else None,
                "service_buffer_bytes": cost.socket_buffer_bytes if cost else None,
                "service_heap_bytes": cost.heap_bytes if found else None,
                "service_sockets": cost.sockets if cost else None,
                "service_sampled": cost.sampled if cost else None,
                "service_cpu_seconds": cpu if found else None,
                "latency_ms": window.summary_ms(), "exchanges": window.count,
                "sample_ms": cost.took_ms if cost else None,
                "sample_cpu_ms": cost.took_cpu_ms if cost else None,
                "t": round(now - self.since, 3)}

    # -- what the workers send -----------------------------------------------------------
    def latency(self, rnd: int, chunk: str) -> None:
        if rnd in self.windows:   # a round given up on is not reopened by late chunks
            self.windows[rnd].decode(chunk)

    def stop_reason(self, now: float, step_timeout: float) -> Optional[str]:
        if self.over is not None:
            return MAX_P99
        if self.phase == OPEN and now >= self.step_started + step_timeout:
            return TIMEOUT
        return None

    @property
    def done(self) -> bool:
        return self.phase == DONE

    def to_dict(self) -> dict:
        within = [r for r in self.rows if r is not self.over]
        return {"step": self.cfg.step, "settle_seconds": self.cfg.settle, "max_p99_ms": self.cfg.max_p99,
                "rows": len(self.rows), "within": within[-1] if self.over and within else None,
                "over": self.over, "sentence": latency_sentence(self.rows, self.over),
                # The service's processes as last sampled: whose memory limit binds.
                "pids": list(self.last.pids) if self.last is not None else []}


def latency_sentence(rows: List[dict], over: Optional[dict]) -> Optional[str]:
    """'p99 12 ms at 40,000; 212 ms at 45,000': the last step within --max-p99 and the
    one past it, or the first and the last step; None when no step timed an exchange."""
    timed = [r for r in rows if r["latency_ms"]]
    if not timed:
        return None
    ends = [timed[-2], timed[-1]] if over is not None and len(timed) > 1 else [timed[0], timed[-1]]
    if ends[0] is ends[1]:
        ends = ends[:1]
    return "p99 " + "; ".join(f"{millis(r['latency_ms']['p99'])} at {number(r['connections'])}" for r in ends)
