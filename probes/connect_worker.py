"""One `--connect` worker: open its share of connections to a remote server, run the
client half of the wire exchange (probes.wire) on each, hold the verified ones.

Unlike the loopback worker, the handshake completes after connect() returns, so
every pending connection waits in epoll; per-connection state is one byte in an
array indexed by descriptor.  Source addresses (IPv4 or IPv6, AnyIP prefixes
included) are spread like the local probe's, each socket set up by
sockets.client_options: bind(source, 0), the port picked at connect() per (source,
destination) pair.  The first socket/bind/connect failure
stops opening (the limit is found; more attempts would only repeat it) while the
connections already open still verify.

Report lines: PROGRESS, TIMED_OUT, VERIFIED below and fleet.ERROR (a failure).
"""
from __future__ import annotations

import ctypes
import errno as E
import os
import select
import socket
import time
from typing import List, Optional

from . import wire
from .fleet import ERROR, OPS, SIDES, Line, line_kinds
from .sockets import SOCK_FLAGS, client_options, family_of, libc, reset_on_close, sockaddr

# established: the server's index arrived (the server accepted it).
PROGRESS = Line("A", "opened", "established", "verified", counts=True)
# The deadline passed with `pending` connections not verified; `unaccepted` of them had
# completed the TCP handshake (into the server's accept queue) and never got an index:
# the server stopped accepting them.
TIMED_OUT = Line("T", "opened", "pending", "unaccepted", counts=True)
VERIFIED = Line("V", "opened", "established", "verified", "mismatches", "t_verified",
                counts=True, final=True)                 # exchange over; now holding
LINES = line_kinds(PROGRESS, TIMED_OUT, VERIFIED)

WAIT_INDEX, WAIT_ACK, HELD = 1, 2, 3
BATCH = 256
# A connect() that fails asynchronously shows up as the socket error on the first read.
CONNECT_ERRORS = {E.ECONNREFUSED, E.ETIMEDOUT, E.EHOSTUNREACH, E.ENETUNREACH, E.EADDRNOTAVAIL}


class ConnectWorker:
    def __init__(self, k, share, host, port, sources, report, stop, release, deadline,
                 rate=None, nofile=None, port_range=(32768, 60999), freebind=False):
        self.k, self.share = k, share
        self.family = family_of(host)
        self.dst = sockaddr(host, port)
        self.sources = [sockaddr(ip, 0) for ip in sources]
        self.options = client_options(port_range, bind=bool(sources), freebind=freebind)
        self.report_fd, self.stop_fd, self.release_fd = report, stop, release
        self.deadline, self.rate = deadline, rate
        import resource
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.state = bytearray(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.partial = {}
        self.fds: List[int] = []
        self.opened = self.established = self.verified = self.mismatches = self.pending = 0
        self.failed = self.stopped = False

    def send(self, line: Line, **values) -> None:
        line.write(self.report_fd, self.k, **values)

    def error(self, op: str, code: int, index: int) -> None:
        self.send(ERROR, side=SIDES.index("client"), op=OPS.index(op), errno=code or 0, index=index)

    def run(self) -> int:
        poll = self.poll = select.epoll()
        poll.register(self.stop_fd, select.EPOLLIN)
        start = last = time.monotonic()
        while True:
            now = time.monotonic()
            opening = not (self.failed or self.stopped) and self.opened < self.share
            if opening:
                due = self.share if not self.rate else min(self.share, int((now - start) * self.rate) + 1)
                self.open(min(due, self.opened + BATCH))
            elif not self.pending:
                break
            if now >= self.deadline:
                if self.pending:
                    self.send(TIMED_OUT, opened=self.opened, pending=self.pending,
                              unaccepted=self.unaccepted())
                break
            wait = 0 if opening and (not self.rate or self.opened < due) else 0.05
            for fd, _ in poll.poll(wait):
                if fd == self.stop_fd:
                    poll.unregister(fd)
                    self.stopped = True
                    # Verify what is open, briefly: whoever stops us wants it over soon.
                    self.deadline = min(self.deadline, time.monotonic() + 2.0)
                else:
                    self.on_data(fd)
            if now - last >= 0.25:
                last = now
                self.send(PROGRESS, opened=self.opened, established=self.established, verified=self.verified)
        self.send(VERIFIED, opened=self.opened, established=self.established, verified=self.verified,
                  mismatches=self.mismatches, t_verified=time.monotonic_ns())
        os.read(self.release_fd, 1)  # blocks until the orchestrator releases (EOF)
        # Reset, not FIN, like the local probe: nothing lingers in TIME_WAIT afterwards.
        reset_on_close(fd for fd in self.fds if self.state[fd])
        return 0

    def unaccepted(self) -> int:
        """Pending connections the kernel completed (getpeername succeeds: the handshake
        is done, so they sit in the server's accept queue) that never received a byte."""
        addr, size = ctypes.create_string_buffer(28), ctypes.c_uint(28)
        getpeername, ref = libc.getpeername, ctypes.byref(size)
        count = 0
        for fd in self.fds:
            if self.state[fd] == WAIT_INDEX and fd not in self.partial:
                size.value = 28
                if getpeername(fd, addr, ref) == 0:
                    count += 1
        return count

    def open(self, upto: int) -> None:
        sock, connect, bind, setsockopt, get_errno = libc.socket, libc.connect, libc.bind, libc.setsockopt, ctypes.get_errno
        dst, sources, state, register = self.dst, self.sources, self.state, self.poll.register
        m, dst_len, options, family = len(sources), len(self.dst), self.options, self.family
        src_len = len(sources[0]) if m else 0
        flags = socket.SOCK_STREAM | SOCK_FLAGS
        ev = select.EPOLLIN | select.EPOLLRDHUP
        i = self.opened
        while i < upto:
            fd = sock(family, flags, 0)
            if fd < 0:
                self.fail("socket", get_errno(), i)
                return
            for level, name, value, size in options:
                setsockopt(fd, level, name, value, size)
            # Offset by worker, so workers sharing the sources start on different ones.
            if m and bind(fd, sources[(i + self.k) % m], src_len):
                self.fail("bind", get_errno(), i, fd)
                return
            if connect(fd, dst, dst_len):
                code = get_errno()
                if code != E.EINPROGRESS:
                    self.fail("connect", code, i, fd)
                    return
            state[fd] = WAIT_INDEX
            register(fd, ev)
            self.fds.append(fd)
            self.pending += 1
            i += 1
            self.opened = i

    def fail(self, op: str, code: int, index: int, fd: Optional[int] = None) -> None:
        self.failed = True
        self.error(op, code, index)
        if fd is not None:
            os.close(fd)

    def drop(self, fd: int) -> None:
        self.poll.unregister(fd)
        self.state[fd] = 0
        self.pending -= 1
        self.partial.pop(fd, None)
        os.close(fd)

    def on_data(self, fd: int) -> None:
        st = self.state[fd]
        want = 4 - len(self.partial.get(fd, b"")) if st == WAIT_INDEX else 1
        try:
            data = os.read(fd, want)
        except BlockingIOError:
            return
        except OSError as exc:
            connecting = st == WAIT_INDEX and fd not in self.partial and exc.errno in CONNECT_ERRORS
            self.error("connect" if connecting else "read" if st == WAIT_INDEX else "verify",
                       exc.errno, self.opened)
            self.failed = self.failed or connecting  # the limit is found: open nothing more
            self.drop(fd)
            return
        if not data:  # the server closed before the exchange finished
            self.error("read" if st == WAIT_INDEX else "verify", E.ECONNRESET, self.opened)
            self.drop(fd)
            return
        if st == WAIT_INDEX:
            have = self.partial.pop(fd, b"") + data
            if len(have) < 4:
                self.partial[fd] = have
                return
            self.established += 1
            try:
                os.write(fd, have)
            except OSError as exc:
                self.error("echo", exc.errno, self.opened)
                self.drop(fd)
                return
            self.state[fd] = WAIT_ACK
            return
        if data == wire.ACK:
            self.state[fd] = HELD
            self.poll.unregister(fd)
            self.pending -= 1
            self.verified += 1
        else:
            self.mismatches += 1
            self.drop(fd)
