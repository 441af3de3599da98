"""One `--connect` worker: open its share of connections to a server, run the target's
protocol (probes/protocols) on each, hold the verified ones, and check them a second
time when the orchestrator says the hold is over.

Protocol-agnostic: a connection in flight has an Exchange (bytes in -> need more,
verified, refused with the server's words); a decided one keeps its descriptor and one
state byte in an array indexed by descriptor, nothing of the parser.  Source addresses
are spread like the local probe's (IP_BIND_ADDRESS_NO_PORT plus bind(source, 0)).

Who stalled is counted per connection.  This host's own failures (socket, bind,
connect errors such as EMFILE or EADDRNOTAVAIL) stop opening (the limit is found) and
go out as fleet.ERROR lines with the knob table's classification; the server's answers
are counts (SERVER, CHECKED) and its words (WORDS) and never stop the run: every
connection is opened and judged.

Report lines: PROGRESS, SERVER + WORDS + VERIFIED (the first check is over), then after
the check pipe closed, WORDS + CHECKED; fleet.ERROR for this host's failures.
"""
from __future__ import annotations

import ctypes
import errno as E
import os
import select
import socket
import time
from collections import Counter
from typing import Dict, List, Optional
from urllib.parse import quote

from .connect_held import (CHECKING, CONNECTING, HEARD, HELD, HOLD_ROUND, LATENCY, PINGING, PINGS, SAMPLED,
                           SENT, STEP, HeldTraffic)
from .fleet import ERROR, OPS, SIDES, Line, line_kinds
from .latency import Histogram
from .protocols import NEED, READ_SIZE, Connection, Exchange, Protocol
from .protocols import VERIFIED as PASSED   # a verdict; VERIFIED below is a report line
from .sockets import SOCK_FLAGS, client_options, family_of, libc, reset_on_close, sockaddr, socket_error

PROGRESS = Line("A", "opened", "established", "verified", counts=True)
# How the connections that did not verify at open ended, on the server's side.
SERVER = Line("S", "refused", "closed", "reset", "not_listening", "not_connected", "unaccepted", "no_answer",
              "tls_failed", "tls_stalled", counts=True)
VERIFIED = Line("V", "opened", "established", "verified", "mismatches", "t_verified",
                counts=True, final=True)                 # first check over; now holding
# The second check at the end of the hold: verified twice, or how the server ended it.
CHECKED = Line("C", "checked", "verified_twice", "check_refused", "closed_in_hold", "reset_in_hold",
               "check_silent", "t_checked", counts=True)
# The server's words (percent-encoded) and how many connections got them; when: 0 at
# open, 1 at the second check.
WORDS = Line("W", "when", "count", "words", text=("words",))
# What opening cost this worker: its CPU (user + system) from start to the first check's
# end, and under TLS the handshakes, full and resumed.
COST = Line("U", "cpu_us", "full", "resumed", counts=True)
# TLS: handshakes by what they negotiated ('TLSv1.3 TLS_AES_256_GCM_SHA384 X25519',
# percent-encoded), this worker's first first; the handshake latency histogram's chunks.
KIND = Line("K", "count", "kind", text=("kind",))
HANDSHAKES = Line("H", "chunk", text=("chunk",))
LINES = line_kinds(PROGRESS, SERVER, VERIFIED, CHECKED, WORDS, PINGS, STEP, LATENCY, SAMPLED, COST, KIND,
                   HANDSHAKES)

BATCH = 256
STALLED = 1.0                 # seconds without a connection in flight decided: the window widens by a BATCH
DISTINCT_WORDS = 8            # distinct answers a worker reports per check; more are 'other'
OTHER_WORDS = "(other answers)"
# A connect() that fails asynchronously, ended by the server's side (nothing listens:
# a reset; no SYN-ACK before the kernel gave up).  Other errnos are this host's.
NOT_LISTENING, SYN_UNANSWERED = {E.ECONNREFUSED}, {E.ETIMEDOUT}
MSG_PEEK_DONTWAIT = socket.MSG_PEEK | socket.MSG_DONTWAIT


def cpu_us() -> int:
    """This process's CPU time so far (user + system), in microseconds (getrusage: finer
    than os.times()'s clock ticks, which round a small run's CPU to nothing)."""
    import resource   # the workers' own: imported once, at the first call
    r = resource.getrusage(resource.RUSAGE_SELF)
    return int((r.ru_utime + r.ru_stime) * 1e6)


class ConnectWorker(HeldTraffic):
    def __init__(self, k, share, host, port, sources, protocol: Protocol, report, stop, release,
                 check, deadline, check_timeout, rate=None, nofile=None, port_range=(32768, 60999),
                 freebind=False, control=None, step_timeout=None, ping_every=None, sample=0):
        self.k, self.share, self.protocol = k, share, protocol
        self.family = family_of(host)
        self.dst = sockaddr(host, port)
        self.sources = [sockaddr(ip, 0) for ip in sources]
        self.options = client_options(port_range, bind=bool(sources), freebind=freebind)
        self.report_fd, self.stop_fd, self.release_fd, self.check_fd = report, stop, release, check
        self.deadline, self.check_timeout, self.rate = deadline, check_timeout, rate
        import resource
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.state = bytearray(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.exchanges: Dict[int, Exchange] = {}     # connections in flight only
        # The transport's state per open connection, held ones too; empty for plain
        # (a held connection then keeps its descriptor and state byte only).
        self.conns: Dict[int, Connection] = {}
        # TLS: the transport counts its handshakes (per worker, a copy after fork) into
        # this histogram; the figures go out with the first check's.
        self.tls = protocol.transport if protocol.transport.name == "tls" else None
        self.handshakes = Histogram()
        self.in_flight = protocol.transport.in_flight
        self.decided_at = self.widened_at = time.monotonic()   # when one in flight last was, the window last widened
        if self.tls is not None:
            self.tls.record = self.handshakes.record
        self.opened = self.established = self.verified = self.pending = 0
        self.server = Counter()                       # SERVER's and CHECKED's columns
        self.words = Counter()
        self.failed = self.stopped = False
        # Without --step the whole share is one step; with it, the control block says.
        self.target, self.step_timeout = share, step_timeout
        self.init_held(control, ping_every, sample)
        # Client-first protocols learn of the connect through EPOLLOUT, once (edge-triggered).
        self.events = (select.EPOLLIN | select.EPOLLRDHUP if protocol.server_first
                       else select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET)

    def send(self, line: Line, **values) -> None:
        line.write(self.report_fd, self.k, **values)

    def error(self, op: str, code: int, index: int) -> None:
        self.send(ERROR, side=SIDES.index("client"), op=OPS.index(op), errno=code or 0, index=index)

    # -- the run -------------------------------------------------------------------------
    def run(self) -> int:
        self.cpu0 = cpu_us()
        self.poll = select.epoll()
        self.poll.register(self.stop_fd, select.EPOLLIN)
        self.open_and_verify()
        self.report_open()
        if self.wait_for_check():
            self.report_window(HOLD_ROUND)
            self.check()
            self.report_words(1)
            self.send(CHECKED, t_checked=time.monotonic_ns(),
                      **{c: self.server[c] for c in CHECKED.columns if c != "t_checked"})
            os.read(self.release_fd, 1)  # blocks until the orchestrator releases (EOF)
        # Reset, not FIN, like the local probe: nothing lingers in TIME_WAIT afterwards.
        reset_on_close(self.with_state(lambda st: st != 0))
        return 0

    def open_and_verify(self) -> None:
        """Open and verify up to the target (the share, or the current step's part of it),
        holding (and pinging) between steps, until the share is decided or it stops."""
        start = last = time.monotonic()
        base = stepped = 0
        while True:
            now = time.monotonic()
            target = self.step_target()
            if target is not None:   # a new step: its own deadline, the rate counted from now
                self.target, start, base = min(target, self.share), now, self.opened
                self.deadline = now + self.step_timeout
            alone = self.needs_session()
            room = 1 if alone else self.room(now)
            opening = (not (self.failed or self.stopped) and self.opened < self.target and not (alone and self.pending)
                       and room > 0)
            if opening:
                due = self.target if not self.rate else min(self.target, base + int((now - start) * self.rate) + 1)
                self.open(min(due, self.opened + room))
            elif not self.pending:
                if self.target >= self.share or self.failed or self.stopped:
                    return
                if stepped != self.step_seen:   # this step's part is decided: say so once
                    stepped = self.step_seen
                    self.report_pings()
                    self.send(STEP, stepped=stepped)
            if now >= self.deadline and (self.pending or opening):
                self.give_up()
                return
            self.sweep(now)
            self.follow_rounds(now)
            self.turn(0 if opening and (not self.rate or self.opened < due) else self.held_wait())
            if now - last >= 0.25:
                last = now
                self.send(PROGRESS, opened=self.opened, established=self.established, verified=self.verified)

    def room(self, now: float) -> int:
        """How many connections may open now: a BATCH, or under a transport that bounds
        those in flight (TLS: the handshakes' temporaries, allocated together, would leave
        the heap fragmented under the held connections' state) what its window leaves,
        and a BATCH more after STALLED seconds in which none in flight was decided (a
        server that accepts no more: its accept queue and the SYNs it drops are still
        seen, as without the window)."""
        if self.in_flight is None:
            return BATCH
        if now - max(self.decided_at, self.widened_at) >= STALLED and now < self.deadline:
            self.widened_at = now
            return BATCH
        return min(BATCH, self.in_flight - self.pending)

    def turn(self, wait: float) -> None:
        for fd, ev in self.poll.poll(wait):
            if fd == self.stop_fd:
                self.poll.unregister(fd)
                self.stopped = True
                # Verify what is open, briefly: whoever stops us wants it over soon.
                self.deadline = min(self.deadline, time.monotonic() + 2.0)
            else:
                self.on_event(fd, ev)

    def needs_session(self) -> bool:
        """Under --resume, until a session is had: connections open one at a time, so the
        first full handshake's session is what the others resume."""
        tls = self.tls
        return tls is not None and tls.settings.resume and tls.session is None

    def report_open(self) -> None:
        self.report_cost()
        if self.control is None:   # the hold's latency starts now; a ramp's rounds cut their own
            self.window.clear()
        self.report_words(0)
        self.send(SERVER, **{c: self.server[c] for c in SERVER.columns})
        mismatches = self.server["refused"] if self.protocol.counts_mismatches else 0
        self.send(VERIFIED, opened=self.opened, established=self.established, verified=self.verified,
                  mismatches=mismatches, t_verified=time.monotonic_ns())

    def report_cost(self) -> None:
        tls = self.tls
        if tls is not None:
            for kind, count in tls.kinds.items():
                self.send(KIND, count=count, kind=quote(kind[:200], safe="") or "-")
            for chunk in self.handshakes.encode():
                self.send(HANDSHAKES, chunk=chunk)
        self.send(COST, cpu_us=cpu_us() - self.cpu0, full=tls.full if tls else 0, resumed=tls.resumed if tls else 0)

    def report_words(self, when: int) -> None:
        for words, count in self.words.items():
            self.send(WORDS, when=when, count=count, words=quote(words[:200], safe="") or "-")
        self.words.clear()

    def refused(self, words: str) -> None:
        if words not in self.words and len(self.words) >= DISTINCT_WORDS:
            words = OTHER_WORDS
        self.words[words] += 1

    # -- opening -------------------------------------------------------------------------
    def open(self, upto: int) -> None:
        sock, connect, bind, setsockopt, get_errno = libc.socket, libc.connect, libc.bind, libc.setsockopt, ctypes.get_errno
        dst, sources, state, register, events = self.dst, self.sources, self.state, self.poll.register, self.events
        m, size, options, opening = len(sources), len(self.dst), self.options, self.protocol.opening
        transport = self.protocol.transport
        new_conn = transport.connection if transport.per_connection else None
        src_len = len(sources[0]) if m else 0
        flags = socket.SOCK_STREAM | SOCK_FLAGS
        i = self.opened
        while i < upto:
            fd = sock(self.family, flags, 0)
            if fd < 0:
                self.fail("socket", get_errno(), i)
                return
            for level, name, value, length in options:
                setsockopt(fd, level, name, value, length)
            # Offset by worker, so workers sharing the sources start on different ones.
            if m and bind(fd, sources[(i + self.k) % m], src_len):
                self.fail("bind", get_errno(), i, fd)
                return
            if connect(fd, dst, size):
                code = get_errno()
                if code not in NOT_LISTENING and code != E.EINPROGRESS:
                    self.fail("connect", code, i, fd)
                    return
                if code in NOT_LISTENING:          # a reset right away (loopback)
                    self.server["not_listening"] += 1
                    os.close(fd)
                    i += 1
                    self.opened = i
                    continue
            i += 1
            self.opened = i
            state[fd] = CONNECTING
            ex = opening()
            if new_conn is not None:
                conn = self.conns[fd] = new_conn()
                ex = conn.wrap(ex)
            self.exchanges[fd] = ex
            register(fd, events)
            self.pending += 1

    def with_state(self, wanted) -> List[int]:
        """Descriptors whose state byte is wanted(state).  The state array, not a list of
        the descriptors opened: a descriptor closed at open is reused by a later connection,
        and a list would hold it twice."""
        return [fd for fd, st in enumerate(self.state) if st and wanted(st)]

    def fail(self, op: str, code: int, index: int, fd: Optional[int] = None) -> None:
        self.failed = True
        self.error(op, code, index)
        if fd is not None:
            os.close(fd)

    # -- the first check -----------------------------------------------------------------
    def on_event(self, fd: int, ev: int) -> None:
        ex = self.exchanges.get(fd)
        if ex is None:
            return
        if self.state[fd] == PINGING:
            self.ping_answer(fd, ex)
            return
        if self.state[fd] == CONNECTING and not self.protocol.server_first:
            if not self.connected(fd, ex, ev):
                return
            if not ex.needs_answer:
                self.decided(fd, PASSED, ex)
                return
        if ev & (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLERR | select.EPOLLHUP):
            self.read(fd, ex)

    def connected(self, fd: int, ex: Exchange, ev: int) -> bool:
        """The connect's outcome (SO_ERROR asked only when epoll says there is one); the
        request goes out when it succeeded."""
        code = socket_error(fd) if ev & (select.EPOLLERR | select.EPOLLHUP) else 0
        if code == 0 and ex.out:
            code = self.write(fd, ex.out)
        if code:
            self.connect_failed(fd, code)
            return False
        self.state[fd] = SENT
        self.established += 1
        return True

    def write(self, fd: int, data: bytes) -> int:
        """0, or the errno of a write that failed (a request fits the empty send buffer)."""
        try:
            os.write(fd, data)
        except OSError as exc:
            return exc.errno or E.EIO
        return 0

    def connect_failed(self, fd: int, code: int) -> None:
        if code in NOT_LISTENING:
            self.server["not_listening"] += 1
        elif code in SYN_UNANSWERED:
            self.server["not_connected"] += 1
        elif code in (E.ECONNRESET, E.EPIPE):
            self.server["reset"] += 1
        else:   # unreachable, no address: this host's network
            self.error("connect", code, self.opened)
            self.failed = True
        self.forget(fd)

    def read(self, fd: int, ex: Exchange) -> None:
        while True:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if self.state[fd] == CONNECTING:
                    self.connect_failed(fd, exc.errno)
                else:
                    self.server["reset"] += 1
                    self.forget(fd)
                return
            if not data:   # the server closed before it answered
                self.server["closed"] += 1
                self.forget(fd)
                return
            if self.state[fd] == CONNECTING:   # the server spoke first: it accepted
                self.established += 1
            self.state[fd] = HEARD
            verdict = ex.feed(data)
            if ex.out and self.write(fd, ex.out):
                self.server["reset"] += 1
                self.forget(fd)
                return
            if verdict != NEED:
                self.decided(fd, verdict, ex)
                return
            if len(data) < READ_SIZE:   # drained: an edge or a level event brings more
                return

    def decided(self, fd: int, verdict: int, ex: Exchange) -> None:
        self.decided_at = time.monotonic()
        if verdict == PASSED:
            self.poll.unregister(fd)
            del self.exchanges[fd]
            self.state[fd] = HELD
            self.pending -= 1
            self.verified += 1
            self.held += 1
            return
        self.server["tls_failed" if getattr(ex, "handshaking", False) else "refused"] += 1
        self.refused(ex.words)
        self.forget(fd)

    def forget(self, fd: int, in_flight: bool = True) -> None:
        """A connection the server ended (or refused): closed, its exchange dropped; one in
        flight (not yet verified at open) is no longer pending."""
        self.decided_at = time.monotonic()
        self.exchanges.pop(fd, None)
        self.conns.pop(fd, None)
        self.state[fd] = 0
        self.pending -= in_flight
        os.close(fd)   # leaves the epoll set with it

    def give_up(self) -> None:
        """The deadline: say what each connection still in flight waits for.  Those the
        kernel completed (getpeername succeeds) sit in the server's accept queue or were
        accepted and not answered; the others never got a SYN-ACK.  They stay open until
        release, so the orchestrator can still read the server's accept queue."""
        addr, size = ctypes.create_string_buffer(28), ctypes.c_uint(28)
        getpeername, ref = libc.getpeername, ctypes.byref(size)
        for fd in list(self.exchanges):
            size.value = 28
            st = self.state[fd]
            if getpeername(fd, addr, ref) != 0:
                self.server["not_connected"] += 1
            elif st == CONNECTING and self.protocol.server_first:
                self.server["unaccepted"] += 1   # not one byte of the server's greeting
            elif getattr(self.exchanges[fd], "handshaking", False) and st != CONNECTING:
                self.server["tls_stalled"] += 1  # accepted, and the handshake never finished
            else:
                self.server["no_answer"] += 1
            self.poll.unregister(fd)
            self.state[fd] = SENT   # kept open, never held
        self.exchanges.clear()
        self.pending = 0

    # -- the second check ----------------------------------------------------------------
    def wait_for_check(self) -> bool:
        """Hold until the orchestrator closes the check pipe (True) or releases (False):
        pinging with --ping-every, sampling when a step's round asks, idle otherwise."""
        controls = (self.check_fd, self.release_fd)
        for fd in controls:
            self.poll.register(fd, select.EPOLLIN)
        last = time.monotonic()
        while True:
            now = time.monotonic()
            self.sweep(now)
            self.follow_rounds(now)
            if now - last >= 1.0 and self.ping_every:
                last = now
                self.report_pings()
            for fd, ev in self.poll.poll(self.held_wait() if self.ping_every or self.control else -1):
                if fd in controls:
                    for c in controls:
                        self.poll.unregister(c)
                    return fd == self.check_fd
                if fd == self.stop_fd:   # stopped after the share was open: nothing to do
                    self.poll.unregister(fd)
                else:
                    self.on_event(fd, ev)

    def check(self) -> None:
        held = self.with_state(lambda st: st in (HELD, PINGING))
        self.server["checked"] = len(held)
        checking = self.protocol.checking
        for fd in held:
            if self.state[fd] == PINGING:   # its exchange in flight is its second check
                self.state[fd] = CHECKING
                continue
            ex = checking()
            if ex is None:
                self.still_open(fd)
                continue
            if fd in self.conns:
                ex = self.conns[fd].wrap(ex)
            code = self.write(fd, ex.out)
            if code:
                self.server["closed_in_hold" if code == E.EPIPE else "reset_in_hold"] += 1
                self.forget(fd, in_flight=False)
                continue
            ex.out = b""
            self.exchanges[fd] = ex
            self.state[fd] = CHECKING
            self.poll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        self.poll.register(self.release_fd, select.EPOLLIN)
        self.answers(time.monotonic() + self.check_timeout)

    def still_open(self, fd: int) -> None:
        """The passive check: no EOF and no reset waiting (MSG_PEEK leaves any data)."""
        byte = ctypes.create_string_buffer(1)
        got = libc.recv(fd, byte, 1, MSG_PEEK_DONTWAIT)
        code = ctypes.get_errno() if got < 0 else 0
        if got > 0 and fd in self.conns:
            got, code = self.still_open_tls(fd)
        if got > 0 or code in (E.EAGAIN, E.EWOULDBLOCK):
            self.server["verified_twice"] += 1
        else:
            self.server["closed_in_hold" if got == 0 else "reset_in_hold"] += 1
            self.forget(fd, in_flight=False)

    def still_open_tls(self, fd: int):
        """(got, errno) of the passive check on a TLS connection with records waiting:
        read through TLS, a close_notify or an alert is the server ending it."""
        try:
            data = os.read(fd, 65536)
        except OSError as exc:
            return -1, exc.errno
        if not data:
            return 0, 0
        closed = self.conns[fd].closed_in_hold(data)
        return (0, 0) if closed else (1, 0) if closed is False else (-1, E.ECONNRESET)

    def answers(self, deadline: float) -> None:
        while self.exchanges and time.monotonic() < deadline:
            for fd, _ in self.poll.poll(0.05):
                if fd == self.release_fd:
                    deadline = 0   # released early (a signal): what is left did not answer
                    continue
                ex = self.exchanges.get(fd)
                if ex is not None:
                    self.check_answer(fd, ex)
        self.server["check_silent"] += len(self.exchanges)
        self.exchanges.clear()

    def check_answer(self, fd: int, ex: Exchange) -> None:
        data = self.read_answer(fd)
        if data is None:
            self.forget(fd, in_flight=False)
        if not data:
            return
        verdict = ex.feed(data)
        if ex.out:
            self.write(fd, ex.out)
        if verdict == NEED:
            return
        del self.exchanges[fd]
        if verdict == PASSED:
            self.poll.unregister(fd)
            self.state[fd] = HELD
            self.server["verified_twice"] += 1
        else:
            self.server["check_refused"] += 1
            self.refused(ex.words)
            self.forget(fd, in_flight=False)
