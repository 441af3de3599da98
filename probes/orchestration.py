"""The one orchestration loop of the three probe modes (local, --serve, --connect).

A mode (local.Local, serve.Server, connect.Client) plans its workers (how many, which
shares), forks them and turns their figures into its result.  Everything between is
done here, the same way for every mode:

- the descriptor limit: raised to the hard one, lowered to worker_nofile when asked;
- the workers' report lines (fleet.Line: named columns) decoded into per-worker counts
  the mode sums by name (`total("verified")`);
- worker exits judged (a worker that exits before its final figures failed; one the
  orchestrator had to SIGKILL is named as ended by tuner, not as the OOM killer's);
- why and when the run stops, holds, releases and ends:

      RUN --(every worker verified)--> HOLD --(--hold over, or a signal)--> CLOSE
      HOLD --(--hold over)--> CHECK --(every worker checked again)--> CLOSE   (--connect)
      RUN --(a stop reason)--> STOPPING --(workers verified what they have)--> CLOSE
      RUN --(a stop reason)--> CLOSE                     (modes that hold until stopped)

  stop reasons: a signal (SIGINT/SIGTERM/SIGHUP), a worker's failure, --timeout (it
  bounds establishing and verifying), and the mode's own (--serve: held, clients
  closed, no listener left);
- progress events at cfg.progress_interval, and one with phase "done" at the end;
- the timeline: a sample about once a second and at every phase change (counts, rate,
  sockets, TIME_WAIT and orphans, Slab, MemAvailable, the workers' CPU), more often while
  the workers close, and after they have exited until the sockets are gone (or
  TEARDOWN_BOUND); the result carries it as `timeline` and `tuner plot` draws it.  Every
  figure is O(1) in the connections: sockstat, meminfo and one /proc/PID/stat per
  worker, never a descriptor walk.
"""
from __future__ import annotations

import collections
import errno as E
import os
import signal
import time
from typing import Dict, List, Optional

from tuner.host import procfs

from . import classify, kernel
from .config import raise_nofile
from .fleet import ERROR, OPS, SIDES, Fleet, Line, describe_exit

# Phases (the progress events' "phase"; RUN is named by the mode: establish / serve).
EXCHANGE, STOPPING, HOLD, CHECK, CLOSE, DONE = "exchange", "stopping", "hold", "check", "close", "done"
# Why a run ended (stopped_by), besides a signal's name and the limit a failure names.
TIMEOUT = "timeout"
HELD = "held"
CLIENTS_CLOSED = "clients closed"   # --serve: every expected one verified, then all closed
NO_LISTENER_LEFT = "no listener left"
MISMATCH = "mismatch"
UNVERIFIED = "unverified"
FAILED = "error"            # a worker failed: the result names the limit instead
RATE_WINDOW = 1.0           # seconds the progress rate is measured over
TIMELINE_EVERY = 1.0        # seconds between timeline samples (and one at each phase change)
TEARDOWN_EVERY = 0.25       # ... while the workers close, and after, until the sockets are gone
TEARDOWN_BOUND = 2.0        # seconds the teardown is followed after the last worker exited
SIGNAL_GRACE = 1.0          # seconds stopped workers get once a signal came: it should end now
STOP_GRACE = 3.0            # ... after --timeout or a failure, to verify what they have


def descriptor_limit(worker_nofile: Optional[int]) -> int:
    """RLIMIT_NOFILE the workers will run with: this process's soft limit raised to the
    hard one (inherited by every fork), or worker_nofile when that is lower."""
    nofile = raise_nofile()
    return min(nofile, worker_nofile) if worker_nofile else nofile


class Orchestration:
    lines: Dict[bytes, Line] = {}     # the report lines this mode's workers send
    run_phase = "establish"
    verify_after_stop = True          # stopped workers still verify what they opened
    failure_reasons = (FAILED, TIMEOUT)  # stop reasons the first failure's limit replaces
    rate_of = "accepted"              # the count whose growth is the progress rate
    second_check = False              # workers check what they hold again when the hold ends

    def __init__(self, cfg, emit):
        self.cfg, self.emit = cfg, emit
        self.records: List[tuple] = []   # (side, op, errno, index, message), in arrival order
        self.stopped_by: Optional[str] = None
        self.phase = self.run_phase
        self.seconds_hold = self.seconds_close = 0.0
        self.started: List[int] = []
        self.timeline: List[dict] = []
        self.worker_cpu: Dict[int, float] = {}   # pid -> CPU seconds, last seen
        self.rate_now = 0.0

    # -- what a mode provides ------------------------------------------------------------
    def plan(self, nofile: int) -> None:
        """Set self.workers and whatever the mode needs before forking; emit its plan."""
        raise NotImplementedError

    def fork_workers(self, fleet: Fleet) -> None:
        raise NotImplementedError

    def result(self):
        raise NotImplementedError

    def progress(self) -> dict:
        return {}

    def rate_count(self) -> int:
        """The count whose growth is the rate (rate_of), as fresh as the mode has it."""
        return self.total(self.rate_of)

    def hold_left(self, now: float) -> Optional[float]:
        """Seconds of the hold still to go while holding (None otherwise)."""
        if self.phase != HOLD:
            return None
        return max(self.hold_start + self.hold_seconds() - now, 0.0)

    def timeout(self) -> Optional[float]:
        return self.cfg.effective_timeout

    def hold_seconds(self) -> float:
        return self.cfg.hold or 0.0

    def on_line(self, k: int, line: Line, values: dict) -> None:
        """A report line besides errors (counts are already in self.counts[k])."""

    def check_seconds(self) -> float:
        """How long the second check may take before the run closes anyway."""
        return 0.0

    def checked_all(self) -> bool:
        """Every worker has sent the figures of its second check."""
        return True

    def tick(self, now: float) -> None:
        """Once per loop turn, after the lines are read."""

    def own_stop_reason(self, now: float) -> Optional[str]:
        return None

    def ready_to_hold(self) -> bool:
        """Every worker verified its share; may the hold start (a ramp's last row taken)?"""
        return True

    def timed_out(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def measure(self) -> None:
        """Kernel figures where the run holds the most (at HOLD, or when STOPPING ends)."""

    def cleanup(self) -> None:
        """After the fleet has ended (listeners, shared maps)."""

    # -- the run -------------------------------------------------------------------------
    def run(self):
        nofile = descriptor_limit(getattr(self.cfg, "worker_nofile", None))
        try:
            self.plan(nofile)
            with Fleet() as fleet:
                self.fleet = fleet
                self.counts: List[dict] = [{} for _ in range(self.workers)]
                self.reported = [False] * self.workers
                self.t0_ns, self.t0 = time.monotonic_ns(), time.monotonic()
                timeout = self.timeout()
                self.deadline = None if timeout is None else self.t0 + timeout
                self.sample(self.t0, self.phase)  # the host before the first fork
                try:
                    self.fork_workers(fleet)
                except OSError as exc:
                    fleet.started()
                    self.fork_failed(exc)
                self.started = sorted(fleet.pids.values())
                self.follow()
                return self.result()
        finally:
            self.cleanup()

    def fork_failed(self, exc: OSError) -> None:
        """No more workers could be forked: the ones running verify what they open and the
        run stops on this failure, with the task limit named (EAGAIN)."""
        k = len(self.fleet.pids)
        limit, detail = None, exc.strerror
        if exc.errno == E.EAGAIN:
            limit, detail = procfs.task_limit_hit()
        self.records.append(("worker", "fork", exc.errno or 0, k,
                             f"fork of worker {k + 1} of {self.workers} failed: {detail}", limit))

    def follow(self) -> None:
        fleet = self.fleet
        last_emit, window = 0.0, collections.deque([(time.monotonic(), 0)])
        last_sample, sampled_phase = float("-inf"), None
        while True:
            lines, ended = fleet.collect(0.05)  # lines first: a worker's last ones precede its exit
            for parts in lines:
                self.read_line(parts)
            for k in ended:
                self.judge_exit(k)
            now = time.monotonic()
            self.tick(now)
            self.advance(now)
            every = TEARDOWN_EVERY if self.phase == CLOSE else TIMELINE_EVERY
            if self.phase != sampled_phase or now - last_sample >= every:
                self.sample(now, self.phase)
                last_sample, sampled_phase = now, self.phase
            if self.phase == CLOSE:
                if not fleet.live:
                    break
                if now - self.close_start > self.close_grace():
                    fleet.kill_all()
            if now - last_emit >= self.cfg.progress_interval:
                # The rate over the last RATE_WINDOW: counts arrive in report-interval
                # steps, so one progress interval alone reads 0 between two steps.
                count = self.rate_count()
                window.append((now, count))
                while len(window) > 2 and window[1][0] <= now - RATE_WINDOW:
                    window.popleft()
                t0, c0 = window[0]
                self.rate_now = (count - c0) / (now - t0) if now > t0 else 0.0
                last_emit = now
                self.emit_progress(self.phase, self.rate_now)
        self.seconds_close = time.monotonic() - self.close_start
        self.follow_teardown()

    def follow_teardown(self) -> None:
        """Every worker has exited: sample what the teardown left until the sockets are
        back to the baseline and no orphan is left (a closed socket whose FIN is not yet
        acknowledged), or TEARDOWN_BOUND.  TIME_WAIT is recorded, not waited for: it lasts
        60 s by design (the workers reset their connections, so the probe leaves none of
        its own)."""
        base = getattr(self, "baseline", None) or {}
        sockets, orphans = base.get("tcp_inuse", 0), base.get("tcp_orphan", 0)
        until = time.monotonic() + TEARDOWN_BOUND
        while True:
            s = self.sample(time.monotonic(), DONE)
            if (s["sockets"] <= sockets and s["orphans"] <= orphans) or time.monotonic() >= until:
                return
            time.sleep(TEARDOWN_EVERY)

    def sample(self, now: float, phase: str) -> dict:
        """One timeline entry (a kernel snapshot and a /proc/PID/stat per live worker:
        about a millisecond for a hundred workers).  `established` is the count whose
        growth is the rate (accepted, for --serve); `rate` is its growth over the last
        TIMELINE_EVERY, so samples close together (a phase change) do not spike."""
        snap = kernel.snapshot()
        for pid, k in self.fleet.pids.items():
            if k not in self.fleet.exit_status:
                cpu = procfs.cpu_seconds(pid)
                if cpu is not None:
                    self.worker_cpu[pid] = cpu
        t, count = now - self.t0, self.total(self.rate_of)
        since_t, since = 0.0, 0
        for earlier in reversed(self.timeline):
            if earlier["t"] <= t - TIMELINE_EVERY + 0.001:  # t is kept to the millisecond
                since_t, since = earlier["t"], earlier["established"]
                break
        entry = {
            # before the first fork there are no counts yet, only the host's figures
            "t": round(t, 3), "phase": phase, **(self.progress() if self.started else {"verified": 0}),
            "established": count,
            "rate": round(max(count - since, 0) / max(t - since_t, 1e-3)),
            "sockets": snap.get("tcp_inuse", 0),
            "time_wait": snap.get("tcp_tw", 0), "orphans": snap.get("tcp_orphan", 0),
            "slab_bytes": snap["slab"], "mem_available_bytes": snap["mem_available"],
            "worker_cpu_seconds": round(sum(self.worker_cpu.values()), 2)}
        self.timeline.append(entry)
        return entry

    def emit_progress(self, phase: str, rate: float) -> None:
        left = self.hold_left(time.monotonic())
        self.emit({"event": "progress", "phase": phase, **self.progress(), "rate": round(rate),
                   "elapsed": round((time.monotonic_ns() - self.t0_ns) / 1e9, 3)}
                  | ({} if left is None else {"hold_left": round(left, 1)}))

    def advance(self, now: float) -> None:
        fleet = self.fleet
        if self.phase in (self.run_phase, EXCHANGE):
            reason = self.stop_reason(now)
            if reason is not None:
                self.stopped_by = reason
                if self.verify_after_stop:
                    fleet.stop()
                    self.phase = STOPPING
                    self.stop_until = now + (SIGNAL_GRACE if fleet.signal is not None else STOP_GRACE)
                else:
                    self.close(now)
            elif self.started and all(self.reported[k] for k in self.started) and self.ready_to_hold():
                self.measure()
                self.phase, self.hold_start = HOLD, now
            elif self.exchanging():
                self.phase = EXCHANGE
        if self.phase == STOPPING:
            if fleet.signal is not None:  # whoever interrupts wants it over soon
                self.stop_until = min(self.stop_until, now + SIGNAL_GRACE)
            if all(self.reported[k] or k in fleet.exit_status for k in self.started) or now >= self.stop_until:
                self.measure()
                self.close(now)
        elif self.phase == HOLD:
            if fleet.signal is not None or now >= self.hold_start + self.hold_seconds():
                self.seconds_hold = now - self.hold_start
                if self.second_check and fleet.signal is None:
                    fleet.check()
                    self.phase, self.check_until = CHECK, now + self.check_seconds()
                    self.check_start = now
                else:
                    self.close(now)
        elif self.phase == CHECK:
            if fleet.signal is not None or self.checked_all() or now >= self.check_until:
                self.close(now)

    def exchanging(self) -> bool:
        return False

    def stop_reason(self, now: float) -> Optional[str]:
        if self.fleet.signal is not None:
            return signal.Signals(self.fleet.signal).name
        if self.records:
            return FAILED
        if self.timed_out(now):
            return TIMEOUT
        return self.own_stop_reason(now)

    def close(self, now: float) -> None:
        self.fleet.release()
        self.phase, self.close_start = CLOSE, now

    def close_grace(self) -> float:
        """Seconds released workers get to close everything and exit before SIGKILL."""
        return 30 + self.workers * 0.2

    # -- report lines --------------------------------------------------------------------
    def read_line(self, parts: List[bytes]) -> None:
        k, line = int(parts[0]), self.lines[parts[1]]
        values = line.read(parts[2:])
        if line is ERROR:
            self.on_error(k, SIDES[values["side"]], OPS[values["op"]], values["errno"], values["index"])
            return
        if line.counts:
            self.counts[k].update(values)
        if line.final:
            self.reported[k] = True
        self.on_line(k, line, values)

    def on_error(self, k: int, side: str, op: str, code: int, index: int) -> None:
        self.records.append((side, op, code, index, f"worker {k}: {side} {op}() failed at connection "
                                                    f"{index}: {os.strerror(code)}"))

    def total(self, name: str) -> int:
        return sum(c.get(name, 0) for c in self.counts)

    def judge_exit(self, k: int) -> None:
        status = self.fleet.exit_status[k]
        # A worker that sent its final figures, or that exited cleanly once released (the
        # run was ending anyway), did what it should: only other exits failed.
        if self.reported[k] or (self.phase == CLOSE and status == 0):
            return
        held = self.counts[k].get(self.rate_of, 0)
        if k in self.fleet.killed:
            self.records.append(("worker", classify.ENDED_BY_TUNER, -signal.SIGKILL, held,
                                 f"worker {k} ended by tuner: still running {self.close_grace():.0f} s "
                                 f"after it was released"))
            return
        code, what = describe_exit(status)
        self.records.append(("worker", "exit", code, held,
                             f"worker {k} {what} before reporting its final figures"))

    # -- the end -------------------------------------------------------------------------
    def timeout_record(self) -> Optional[tuple]:
        """The failure a --timeout stop stands for, when no worker reported one itself."""
        return ("client", "timeout", E.ETIMEDOUT, self.total(self.rate_of),
                "workers did not finish before the timeout")

    def summarize(self, moved: Dict[str, int], now: Dict[str, int], role: str,
                  extra: List[tuple] = ()) -> List[dict]:
        records = list(self.records) + list(extra)
        # A worker that reported what its pending connections were waiting for (its own
        # timeout, or a server's accept queue that never moved) already explains the
        # timeout: the generic record would count one phantom failure more, and only when
        # the parent's deadline happened to pass before that report arrived.
        explained = ("timeout", classify.UNACCEPTED_OP)
        if self.stopped_by == TIMEOUT and not any(r[1] in explained for r in records):
            records += [r for r in [self.timeout_record()] if r]
        return classify.summarize(records, moved, now, role=role)

    def ended_by(self, errors: List[dict]) -> Optional[str]:
        """stopped_by of the result: the signal, else the limit of the first failure when a
        failure or the timeout ended it, else the mode's own reason (None: it finished)."""
        if self.fleet.signal is not None:
            return signal.Signals(self.fleet.signal).name
        if errors and self.stopped_by in self.failure_reasons:
            return errors[0]["limit"] or errors[0]["errno"]
        return self.stopped_by

    def verdict(self, errors: List[dict], requested: int, verified: int, mismatches: int) -> Optional[str]:
        """stopped_by for the modes that open N: None when every one verified (however the
        run then ended, unless a signal did), else why not."""
        reason = self.ended_by(errors)
        if self.fleet.signal is None and verified >= requested and not mismatches:
            return None
        if reason is None:
            reason = MISMATCH if mismatches else UNVERIFIED
        return reason
