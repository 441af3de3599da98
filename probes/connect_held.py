"""Traffic on the connections a `--connect` worker holds: the protocol's own exchange
(an HTTP request on keep-alive, a WebSocket ping, a Redis PING, --send/--expect,
tuner's ENQ/ACK) timed into a latency histogram (probes.latency).

Two sources of exchanges, both recorded into one window histogram:

- `--ping-every S`: every held connection gets one exchange per S seconds, spread
  evenly: a cursor sweeps the descriptor table once per S seconds and pings each held
  descriptor it passes.  No timer, queue or list per connection: a connection costs its
  state byte and, while an exchange is in flight only, the exchange and its send time.
  One still waiting when the cursor comes round again is counted late (not pinged
  twice).
- a step's sample round (`--step`): the orchestrator bumps the round in the shared
  control block; the worker pings up to `sample` of its held connections spread over
  ROUND_SPREAD, waits for their answers (or the check timeout), then reports its
  window (LATENCY chunks, PINGS, SAMPLED) and starts a new one.

The control block (an anonymous shared mmap the orchestrator writes, workers read):
CONTROL (step, sample round) then one TARGET per worker: the connections it holds once
that step is open.  Workers poll it each loop turn; nothing is sent to them.
"""
from __future__ import annotations

import errno as E
import os
import select
import struct
import time
from array import array
from collections import Counter
from typing import Optional

from .fleet import Line
from .latency import Histogram
from .protocols import NEED, READ_SIZE
from .protocols import VERIFIED as PASSED

# A connection's state byte (one home: connect_worker's states and this module's).
CONNECTING, SENT, HEARD, HELD, CHECKING, PINGING = 1, 2, 3, 4, 5, 6
CONTROL = struct.Struct("qq")        # step, sample round
TARGET = struct.Struct("q")          # per worker, after CONTROL
HOLD_ROUND = 0                       # LATENCY's round for the window reported at the check

# Held now (verified, not lost since) and the exchanges on held connections so far.
PINGS = Line("P", "held", "pings_sent", "pings_answered", "pings_late", "pings_refused", counts=True)
STEP = Line("T", "stepped", counts=True)                 # this worker's share of the step is open
LATENCY = Line("L", "round", "chunk", text=("chunk",))   # a window histogram's chunk (latency.encode)
SAMPLED = Line("Q", "sampled", counts=True)              # the round's window is reported
PING_TICK = 0.01     # seconds between the cursor's moves while --ping-every runs
ROUND_SPREAD = 0.5   # seconds a step's round spreads its sample over


def control_block(workers: int) -> "mmap.mmap":
    """The shared control block for `workers` workers (created before they fork)."""
    import mmap   # only the orchestrator of a --step run needs one
    return mmap.mmap(-1, CONTROL.size + TARGET.size * workers)


def set_step(block, step: int, targets) -> None:
    for k, t in enumerate(targets):
        TARGET.pack_into(block, CONTROL.size + TARGET.size * k, t)
    CONTROL.pack_into(block, 0, step, CONTROL.unpack_from(block, 0)[1])


def set_round(block, rnd: int) -> None:
    CONTROL.pack_into(block, 0, CONTROL.unpack_from(block, 0)[0], rnd)


class HeldTraffic:
    """Mixed into ConnectWorker: uses its state, poll, exchanges, conns, protocol,
    server, write, refused and forget."""

    def init_held(self, control, ping_every: Optional[float], sample: int) -> None:
        self.control, self.ping_every, self.sample = control, ping_every, sample
        self.sent_ns = array("q", bytes(8 * len(self.state)))
        self.window = Histogram()
        self.pings = Counter()
        self.held = 0
        self.cursor, self.swept_at, self.top = 0.0, None, 0
        self.step_seen = self.round_seen = 0
        self.sampling = None          # [round, descriptors, pinged so far, start] while a round is out
        # A protocol with nothing to send has no exchange: its rounds report no latency.
        self.can_ping = self.protocol.pinging() is not None

    # -- the orchestrator's control block ------------------------------------------------
    def step_target(self) -> Optional[int]:
        """This worker's target when the orchestrator opened a new step, else None."""
        if self.control is None:
            return None
        step = CONTROL.unpack_from(self.control, 0)[0]
        if step == self.step_seen:
            return None
        self.step_seen = step
        return TARGET.unpack_from(self.control, CONTROL.size + TARGET.size * self.k)[0]

    def follow_rounds(self, now: float) -> None:
        if self.control is None:
            return
        if self.sampling is None:
            rnd = CONTROL.unpack_from(self.control, 0)[1]
            if rnd != self.round_seen:
                self.round_seen = rnd
                self.start_round(rnd, now)
        if self.sampling is not None:
            self.go_on_round(now)

    def start_round(self, rnd: int, now: float) -> None:
        """Choose the round's sample: held connections spread over the table."""
        held = [fd for fd, st in enumerate(self.state) if st == HELD] if self.can_ping else []
        stride = max(1, len(held) // max(self.sample, 1))
        self.sampling = [rnd, held[::stride][:self.sample], 0, now]

    def go_on_round(self, now: float) -> None:
        """Ping the sample spread over ROUND_SPREAD (a burst of them all at once would time
        the service's queue, not its answer), then wait for the answers (at most the check
        timeout) and report the window."""
        rnd, fds, sent, start = self.sampling
        due = min(len(fds), int(len(fds) * (now - start) / ROUND_SPREAD) + 1)
        if sent < due:
            stamp = time.monotonic_ns()
            for fd in fds[sent:due]:
                if self.state[fd] == HELD:
                    self.ping(fd, stamp)
            self.sampling[2] = sent = due
        if sent < len(fds):
            return
        if now >= start + ROUND_SPREAD + self.check_timeout or all(self.state[fd] != PINGING for fd in fds):
            self.sampling = None
            self.report_window(rnd)

    def report_window(self, rnd: int) -> None:
        """The window histogram (then a new one), the ping counts, and SAMPLED rnd."""
        if self.window.count:
            for chunk in self.window.encode():
                self.send(LATENCY, round=rnd, chunk=chunk)
        self.window.clear()
        self.report_pings()
        if rnd != HOLD_ROUND:
            self.send(SAMPLED, sampled=rnd)

    def report_pings(self) -> None:
        self.send(PINGS, held=self.held, **{f"pings_{c}": self.pings[c]
                                            for c in ("sent", "answered", "late", "refused")})

    # -- --ping-every: the cursor ------------------------------------------------------
    def sweep(self, now: float) -> None:
        """Move the cursor by the descriptors due since the last move and ping the held
        ones it passes: the table [0, top) once per ping_every seconds."""
        if not self.ping_every:
            return
        if self.swept_at is None or self.cursor == 0.0:
            # (Re)start a pass: the table's used part, so holes at its end cost no time.
            self.top = len(self.state.rstrip(b"\0"))
            self.swept_at = now if self.swept_at is None else self.swept_at
        top = max(self.top, 1)
        upto = min(self.cursor + (now - self.swept_at) / self.ping_every * top, top)
        self.swept_at = now
        state, stamp = self.state, time.monotonic_ns()
        for fd in range(int(self.cursor), int(upto)):
            st = state[fd]
            if st == HELD:
                self.ping(fd, stamp)
            elif st == PINGING:
                self.pings["late"] += 1
        self.cursor = 0.0 if upto >= top else upto

    def ping(self, fd: int, stamp: int) -> None:
        ex = self.protocol.pinging()
        if fd in self.conns:   # a transport with state (TLS): the exchange as the socket sees it
            ex = self.conns[fd].wrap(ex)
        code = self.write(fd, ex.out)
        if code:
            self.server["closed_in_hold" if code == E.EPIPE else "reset_in_hold"] += 1
            self.drop_held(fd)
            return
        ex.out = b""
        self.exchanges[fd] = ex
        self.state[fd] = PINGING
        self.sent_ns[fd] = stamp
        self.poll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        self.pings["sent"] += 1

    def read_answer(self, fd: int) -> Optional[bytes]:
        """One read of a held connection's answer (a ping's, or the second check's): its
        bytes, b"" while none has come; None when the server closed or reset it, counted
        here (closed_in_hold, reset_in_hold) for the caller to let the connection go."""
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return b""
        except OSError:
            data = None
        if not data:
            self.server["closed_in_hold" if data == b"" else "reset_in_hold"] += 1
            return None
        return data

    def ping_answer(self, fd: int, ex) -> None:
        data = self.read_answer(fd)
        if data is None:
            self.drop_held(fd)
        if not data:
            return
        verdict = ex.feed(data)
        if ex.out:
            self.write(fd, ex.out)     # what the server asked for meanwhile (a pong)
        if verdict == NEED:
            return
        del self.exchanges[fd]
        if verdict == PASSED:
            self.window.record((time.monotonic_ns() - self.sent_ns[fd]) // 1000)
            self.poll.unregister(fd)
            self.state[fd] = HELD
            self.pings["answered"] += 1
            return
        self.pings["refused"] += 1
        self.refused(ex.words)
        self.drop_held(fd)

    def drop_held(self, fd: int) -> None:
        """A held connection the server ended during the hold."""
        self.held -= 1
        self.forget(fd, in_flight=False)

    def held_wait(self) -> float:
        """How long the loop may sleep in poll(): the cursor and a round move often enough."""
        return PING_TICK if self.ping_every or self.sampling else 0.05
