"""One `--serve` worker: accept on its SO_REUSEPORT listener, run the wire exchange
(probes.wire) with every client, hold the verified connections, count what fails.

Everything a connection costs here is fixed-size and indexed by its descriptor
(state, index, peer address, echo deadline in arrays sized by RLIMIT_NOFILE), so a
misbehaving client can cost at most one descriptor: garbage is judged on its first
4 bytes and never buffered, a silent or stalled client is closed at its echo
deadline, and the per-address table is capped (MAX_PEERS; the rest is counted under
0.0.0.0).

--expect N is N slots shared by every worker (a semaphore: exact, however many
workers accept at the same instant).  A connection takes one at accept; a verified one
keeps it, one that fails verification gives it back.  While every slot is taken but not
every one verified, a slot may still free: the worker stops accepting and its clients
wait in the accept queue.  Once N have verified none can: it accepts again and resets
every one beyond N before the exchange.

Report lines on the fleet's pipe: TOTALS (running), PEER (one client address, after
release), FINAL (the last line; exiting) and fleet.ERROR (the server's own failure).
"""
from __future__ import annotations

import ctypes
import errno as E
import os
import select
import socket
import struct
import time
from array import array
from typing import Optional

from . import wire
from .fleet import ERROR, OPS, SIDES, Line, line_kinds
from .sockets import LINGER_0, SOCK_FLAGS, libc, reset_on_close

MAX_PEERS = 4096
# One slot per worker in the shared map: (held, pending, accepted, verified).  held:
# verified and still open; pending: accepted and waiting for the echo; accepted and
# verified: the running totals, so that the progress line reads all four at the same
# moment (the report lines arrive later), and a worker waiting for a --expect slot
# sees when every one has verified.
SLOT = struct.Struct("qqqq")
FREE, WAITING, VERIFIED = 0, 1, 2

TOTALS = Line("S", "accepted", "verified", "held", "pending", "over_expect", "dropped", *wire.FAILURES,
              counts=True)
# Per client address: the counters below, a list per address indexed by column.
PEER_COLUMNS = ("accepted", "verified", "dropped", "over_expect") + wire.FAILURES
PEER = Line("P", "address", *PEER_COLUMNS, text=("address",))
FINAL = Line("F", final=True)
LINES = line_kinds(TOTALS, PEER, FINAL)
A_ACCEPTED, A_VERIFIED, A_DROPPED, A_OVER = (PEER_COLUMNS.index(c) for c in PEER_COLUMNS[:4])
A_FAIL = {name: PEER_COLUMNS.index(name) for name in wire.FAILURES}
A_SIZE = len(PEER_COLUMNS)
RDHUP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
# accept() errnos that mean this worker is full (descriptors, kernel memory): it closes
# its listener and the others serve on; the orchestrator ends only when none is left.
LISTENER_FULL = (E.EMFILE, E.ENFILE, E.ENOBUFS, E.ENOMEM)
# accept() takes at most this many per wake-up, then the loop reads echoes, reports and
# sees a stop.  Draining to EAGAIN never returned while load hosts refilled the queue
# faster than it emptied (3 x 100,000 on 2 vCPUs, bench/bench_fleet.py): 99% of the
# clients got their index, no echo was read, and the echo deadline reset them.
ACCEPT_BATCH = 256


class ServeWorker:
    def __init__(self, k, workers, listener, report, stop, release, held_map, expect=None,
                 slots=None, echo_timeout=10.0, nofile=None, report_interval=0.25):
        self.k, self.workers, self.listener = k, workers, listener
        self.slots, self.waiting = slots, False   # --expect's semaphore; waiting for a slot
        self.report_fd, self.stop_fd, self.release_fd = report, stop, release
        self.held_map, self.expect, self.echo_timeout = held_map, expect, echo_timeout
        self.nofile, self.report_interval = nofile, report_interval
        import resource
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        size = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.state = bytearray(size)
        self.index = array("I", bytes(4 * size))
        self.peer = [0] * size      # wire.peer_key of each connection's client address
        self.deadline = array("d", bytes(8 * size))
        self.partial = {}           # fd -> the bytes of an echo that came in pieces
        self.pending = set()        # fds waiting for their echo
        self.peers = {}             # peer ip (int) -> counters (A_*)
        self.seq = 0                # connections this worker numbered (index = seq * workers + k)
        self.accepted = self.verified = self.held = self.over = self.dropped = 0
        self.failed = dict.fromkeys(wire.FAILURES, 0)
        self.addr = ctypes.create_string_buffer(28)   # a sockaddr_in6 (an IPv6 listener's peers)
        self.addrlen = ctypes.c_uint(28)
        self.linger = ctypes.create_string_buffer(LINGER_0, 8)

    # -- reporting -----------------------------------------------------------------------
    def send(self, line: Line, **values) -> None:
        line.write(self.report_fd, self.k, **values)

    def totals(self) -> None:
        self.send(TOTALS, accepted=self.accepted, verified=self.verified, held=self.held,
                  pending=len(self.pending), over_expect=self.over, dropped=self.dropped, **self.failed)

    def counters(self, ip: int) -> list:
        row = self.peers.get(ip)
        if row is None:
            if len(self.peers) >= MAX_PEERS:
                ip = 0
                row = self.peers.get(0)
            if row is None:
                row = self.peers[ip] = [0] * A_SIZE
        return row

    def publish(self) -> None:
        SLOT.pack_into(self.held_map, self.k * SLOT.size, self.held, len(self.pending),
                       self.accepted, self.verified)

    def verified_everywhere(self) -> int:
        return sum(slot[3] for slot in SLOT.iter_unpack(self.held_map))

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        poll = self.poll = select.epoll()
        poll.register(self.listener, select.EPOLLIN)
        poll.register(self.stop_fd, select.EPOLLIN)
        poll.register(self.release_fd, select.EPOLLIN)
        last = 0.0
        while True:
            released = False
            for fd, ev in poll.poll(self.report_interval):
                if fd == self.listener:
                    self.accept()
                elif fd == self.stop_fd:
                    poll.unregister(fd)
                    self.close_listener()
                elif fd == self.release_fd:
                    released = True
                elif self.state[fd] == WAITING:
                    self.on_echo(fd)
                elif self.state[fd] == VERIFIED:
                    self.on_held(fd)
            if self.waiting and self.slot_may_come():
                self.accept_again()
            now = time.monotonic()
            if now - last >= self.report_interval:
                last = now
                self.expire(now)
                self.totals()
            if released:
                break
        self.close_listener()
        self.totals()
        for ip, row in self.peers.items():
            self.send(PEER, address=wire.peer_text(ip), **dict(zip(PEER_COLUMNS, row)))
        self.send(FINAL)
        # Reset, not FIN: the server end then leaves nothing in TIME_WAIT behind it.
        reset_on_close(fd for fd in range(len(self.state)) if self.state[fd])
        return 0

    def close_listener(self) -> None:
        if self.listener is not None:
            if not self.waiting:
                self.poll.unregister(self.listener)
            os.close(self.listener)
            self.listener = None

    # -- --expect's slots ------------------------------------------------------------------
    def take_slot(self) -> Optional[bool]:
        """True: accept the next client into a slot; False: accept it to reset it (every
        expected connection has verified).  None: leave it queued, since a slot may still
        free (a pending connection can fail), and stop polling the listener till then."""
        if self.slots is None or self.slots.acquire(False):
            return True
        if self.verified_everywhere() >= self.expect:
            return False
        self.waiting = True
        self.poll.unregister(self.listener)
        return None

    def slot_may_come(self) -> bool:
        # A slot is free (a connection failed, maybe another worker's), or none ever will be.
        return self.slots.get_value() > 0 or self.verified_everywhere() >= self.expect

    def accept_again(self) -> None:
        self.waiting = False
        if self.listener is not None:
            self.poll.register(self.listener, select.EPOLLIN)
            self.accept()

    def accept(self) -> None:
        try:
            self._accept()
        finally:
            self.publish()   # the accepted count, also of connections reset at accept

    def _accept(self) -> None:
        accept4, get_errno, addr, addrlen = libc.accept4, ctypes.get_errno, self.addr, self.addrlen
        poll, state, write, pack = self.poll, self.state, os.write, wire.INDEX.pack
        ref = ctypes.byref(addrlen)
        for _ in range(ACCEPT_BATCH):
            if self.listener is None:
                return
            admit = self.take_slot()
            if admit is None:
                return
            addrlen.value = 28
            c = accept4(self.listener, addr, ref, SOCK_FLAGS)
            if c < 0:
                code = get_errno()
                if admit and self.slots is not None:
                    self.slots.release()   # nothing accepted: the slot stays free
                if code in (E.ECONNABORTED, E.EINTR):
                    continue  # that client gave up in the queue: take the next
                if code == E.EAGAIN:
                    return
                self.send(ERROR, side=SIDES.index("server"), op=OPS.index("accept"), errno=code,
                          index=self.accepted)
                if code in LISTENER_FULL:
                    # Full: closing the listener makes the kernel hash new connections to
                    # the other workers' listeners (those queued here are reset).
                    self.close_listener()
                return
            ip = wire.peer_key(addr.raw)
            row = self.counters(ip)
            self.accepted += 1
            row[A_ACCEPTED] += 1
            if not admit:   # beyond --expect, every slot verified: reset before the exchange
                self.over += 1
                row[A_OVER] += 1
                libc.setsockopt(c, socket.SOL_SOCKET, socket.SO_LINGER, self.linger, 8)
                os.close(c)
                continue
            index = (self.seq * self.workers + self.k) & 0xFFFFFFFF
            self.seq += 1
            self.peer[c], self.index[c] = ip, index
            try:
                write(c, pack(index))
            except OSError:
                self.fail(c, wire.RESET, reset=True)
                continue
            state[c] = WAITING
            self.deadline[c] = time.monotonic() + self.echo_timeout
            self.pending.add(c)
            self.publish()
            poll.register(c, select.EPOLLIN | RDHUP)

    def on_echo(self, fd: int) -> None:
        have = self.partial.get(fd, b"")
        try:
            data = os.read(fd, 4 - len(have))
        except BlockingIOError:
            return
        except OSError:
            self.fail(fd, wire.RESET, reset=True)
            return
        if not data:
            self.fail(fd, wire.SHORT if have else wire.CLOSED)
            return
        have += data
        if len(have) < 4:
            self.partial[fd] = have
            return
        self.partial.pop(fd, None)
        if have != wire.INDEX.pack(self.index[fd]):
            try:
                os.write(fd, wire.NAK)
            except OSError:
                pass
            self.fail(fd, wire.GARBAGE)
            return
        try:
            os.write(fd, wire.ACK)
        except OSError:
            self.fail(fd, wire.RESET, reset=True)
            return
        self.pending.discard(fd)
        self.state[fd] = VERIFIED
        # Held connections wake this worker when their peer goes away or sends ENQ.
        self.poll.modify(fd, select.EPOLLIN | RDHUP)
        self.verified += 1
        self.held += 1
        self.publish()
        self.counters(self.peer[fd])[A_VERIFIED] += 1

    def on_held(self, fd: int) -> None:
        """A held connection woke: ENQs are each answered with ACK (wire.py, step 5), other
        bytes are ignored; EOF or an error is its peer going away."""
        try:
            data = os.read(fd, 256)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            enq = data.count(wire.ENQ)
            if enq:
                try:
                    os.write(fd, wire.ACK * enq)
                except OSError:
                    pass   # its EOF or reset wakes this worker again
            return
        self.on_drop(fd)

    def on_drop(self, fd: int) -> None:
        self.poll.unregister(fd)
        self.state[fd] = FREE
        os.close(fd)
        self.held -= 1
        self.dropped += 1
        self.publish()
        self.counters(self.peer[fd])[A_DROPPED] += 1

    def fail(self, fd: int, kind: str, reset: bool = False) -> None:
        """Count a connection that did not verify and close it (with a reset after a
        timeout, so a stalled peer costs no FIN_WAIT/TIME_WAIT here).  Its --expect slot
        goes back: a client waiting in the accept queue can verify instead."""
        if self.slots is not None:
            self.slots.release()
        self.failed[kind] += 1
        self.counters(self.peer[fd])[A_FAIL[kind]] += 1
        self.pending.discard(fd)
        self.partial.pop(fd, None)
        if self.state[fd]:
            self.poll.unregister(fd)
        self.state[fd] = FREE
        if reset:
            libc.setsockopt(fd, socket.SOL_SOCKET, socket.SO_LINGER, self.linger, 8)
        os.close(fd)
        self.publish()

    def expire(self, now: float) -> None:
        deadline = self.deadline
        late = [fd for fd in self.pending if deadline[fd] <= now]
        for fd in late:
            self.fail(fd, wire.SHORT if fd in self.partial else wire.NO_ECHO, reset=True)
