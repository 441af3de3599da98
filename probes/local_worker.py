"""One worker process: open its share of loopback connections, verify each, hold, close.

The hot loop calls libc through ctypes on plain integers: no socket objects, no
per-connection Python objects beyond the int itself (descriptors live in
array('i')).  Work happens in the order the kernel finishes it fastest on
loopback, where a connect() completes its handshake before it returns: per batch,
open the clients, accept what arrived, write index j on accepted connection j,
let every client of the batch echo what it got, check the echoes.  Reads are tried
directly; only stragglers wait in epoll (drain) after the last batch.

Reports go to the orchestrator as the report lines below (fleet.Line), plus
fleet.ERROR for a failure (the worker then stops opening).

Two pipes come the other way, both signalled by the orchestrator closing its end
(EOF reaches every worker at once): `stop` (stop opening, verify what you have) and
`release` (close everything and exit).
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

from .fleet import ERROR, OPS, SIDES, Line, line_kinds
from .sockets import SOCK_FLAGS, client_options, libc, reset_on_close, sockaddr

BATCH = 128                   # connects between accept rounds; the accept queue never holds more
REPORT_EVERY = 1024            # connections between progress reports while opening,
REPORT_SECONDS = 0.5           # ... or this long, when fewer opened: a slow ramp (ports running
                               # out) still moves in the progress and the timeline, about twice a
                               # sample, without a line per batch from every worker
PACK = struct.Struct("<I").pack

PROGRESS = Line("A", "opened", "accepted", "verified", counts=True)
ACCEPTED_ALL = Line("D", "t_established", counts=True)            # every connection of the share accepted
TIMED_OUT = Line("T", "opened", "accepted", counts=True)  # the deadline passed with some pending
VERIFIED = Line("V", "accepted", "verified", "mismatches", "t_verified", counts=True, final=True)
LINES = line_kinds(PROGRESS, ACCEPTED_ALL, TIMED_OUT, VERIFIED)  # (exchange over; now holding)


class LocalWorker:
    def __init__(self, k, share, listener, port, sources, report, stop, release, deadline,
                 rate=None, accept_pause=0.0, nofile=None, port_range=(32768, 60999)):
        self.k, self.share, self.listener = k, share, listener
        self.dst = sockaddr("127.0.0.1", port)
        self.sources = [sockaddr(ip, 0) for ip in sources]
        self.options = client_options(port_range, bind=bool(sources), freebind=False)
        self.report_fd, self.stop_fd, self.release_fd = report, stop, release
        self.deadline, self.rate, self.accept_pause, self.nofile = deadline, rate, accept_pause, nofile
        self.cli = array("i")
        self.srv = array("i")
        self.written = bytearray(share)  # 1: index j went out on srv[j]
        self.seen = bytearray(share)     # 1: a client received index j (twice is a mismatch)
        self.pending_cli = []            # client fds whose index has not arrived yet
        self.pending_srv = []            # server indices whose echo has not arrived yet
        self.verified = self.mismatches = 0
        self.failed = False          # a failure was reported: open nothing more
        self.server_failed = False   # ... and it was accept(): nothing more can be accepted
        self.stopped = False         # the orchestrator said stop

    # -- reporting ---------------------------------------------------------------------
    def send(self, line: Line, **values) -> None:
        line.write(self.report_fd, self.k, **values)

    def report_error(self, side: str, op: str, code: int, index: int) -> None:
        self.send(ERROR, side=SIDES.index(side), op=OPS.index(op), errno=code or 0, index=index)

    def fail(self, side: str, op: str, code: int, index: int) -> None:
        self.failed = True
        self.server_failed = side == "server"
        self.report_error(side, op, code, index)

    def progress(self) -> None:
        self.send(PROGRESS, opened=len(self.cli), accepted=len(self.srv), verified=self.verified)

    # -- phases ------------------------------------------------------------------------
    def run(self) -> int:
        if self.nofile is not None:
            import resource
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))
        self.stop_poll = select.epoll()
        self.stop_poll.register(self.stop_fd, select.EPOLLIN)
        self.establish()
        self.wait_accepts()
        # A deadline that has passed (timeout, stop) still leaves time to verify what is open.
        self.drain(max(self.deadline, time.monotonic() + 2.0))
        self.send(VERIFIED, accepted=len(self.srv), verified=self.verified, mismatches=self.mismatches,
                  t_verified=time.monotonic_ns())
        os.read(self.release_fd, 1)  # blocks until the orchestrator releases (EOF)
        # Only the client ends: their reset closes the server ends too (process exit
        # closes every descriptor).
        reset_on_close(self.cli)
        return 0

    def establish(self) -> None:
        """Per batch: open clients, accept, send indexes, echo, verify.  Doing the exchange
        while the batch's sockets are still in cache costs the kernel far less than
        separate passes over every socket (measured: ~25% less time per connection)."""
        cli, srv, monotonic = self.cli, self.srv, time.monotonic
        n, rate = self.share, self.rate
        batch = BATCH if not rate else max(1, min(BATCH, int(rate / 50)))
        start = last_report = monotonic()
        reported = 0
        i = 0
        while i < n:
            i0, j0 = i, len(srv)
            i = self.open_clients(i, min(n, i + batch))
            self.accept_queued()
            j1 = len(srv)
            self.send_indexes(j0, j1)
            waiting = self.echo(cli[i0:i])
            if waiting:
                self.pending_cli += waiting
            waiting = self.verify(range(j0, j1))
            if waiting:
                self.pending_srv += waiting
            if self.failed or not self.paced(start, i):
                return
            if i - reported >= REPORT_EVERY or (i > reported and monotonic() - last_report >= REPORT_SECONDS):
                reported, last_report = i, monotonic()
                self.progress()
        if len(srv) == n:
            self.send(ACCEPTED_ALL, t_established=time.monotonic_ns())

    def open_clients(self, i: int, end: int) -> int:
        """Start non-blocking connects for clients i..end (the hot loop: its names are
        locals); returns the index after the last one started (a failure stops early)."""
        sock, connect, bind, setsockopt = libc.socket, libc.connect, libc.bind, libc.setsockopt
        get_errno, close, cli_add = ctypes.get_errno, os.close, self.cli.append
        dst, sources, options = self.dst, self.sources, self.options
        m = len(sources)
        AF, FLAGS, EINPROGRESS = socket.AF_INET, socket.SOCK_STREAM | SOCK_FLAGS, E.EINPROGRESS
        while i < end:
            fd = sock(AF, FLAGS, 0)
            if fd < 0:
                self.fail("client", "socket", get_errno(), i)
                break
            for level, name, value, size in options:
                setsockopt(fd, level, name, value, size)
            if m and bind(fd, sources[i % m], 16):
                self.fail("client", "bind", get_errno(), i)
                close(fd)
                break
            if connect(fd, dst, 16):
                code = get_errno()
                if code != EINPROGRESS:
                    self.fail("client", "connect", code, i)
                    close(fd)
                    break
            cli_add(fd)
            i += 1
        return i

    def accept_queued(self) -> None:
        """Accept what the loopback handshakes have queued so far."""
        accept4, get_errno, lfd, srv_add = libc.accept4, ctypes.get_errno, self.listener, self.srv.append
        while True:
            c = accept4(lfd, None, None, SOCK_FLAGS)
            if c < 0:
                code = get_errno()
                if code != E.EAGAIN:
                    self.fail("server", "accept", code, len(self.srv))
                return
            srv_add(c)

    def paced(self, start: float, i: int) -> bool:
        """Between batches: False when a stop came or the deadline passed; otherwise wait
        for connection i's turn under --rate (and the accept pause), then True."""
        stop_poll = self.stop_poll.poll
        if stop_poll(0):
            self.stopped = True
            return False
        if self.accept_pause:
            time.sleep(self.accept_pause)
        if self.rate:
            ahead = start + i / self.rate - time.monotonic()
            if ahead > 0:
                # Wait for the next connection's turn on the stop pipe, so a stop or the
                # deadline ends a slow ramp at once.
                left = self.deadline - time.monotonic()
                if stop_poll(max(0.0, min(ahead, left))):
                    self.stopped = True
                    return False
                if ahead >= left:
                    return False
        return True

    def wait_accepts(self) -> None:
        """Accept the connections still queued (or retried after a drop) until the deadline."""
        accept4, get_errno = libc.accept4, ctypes.get_errno
        srv_add, opened = self.srv.append, len(self.cli)
        if len(self.srv) >= opened or self.server_failed:
            self.progress()
            return
        poll = select.epoll()
        poll.register(self.listener, select.EPOLLIN)
        poll.register(self.stop_fd, select.EPOLLIN)
        last_report = time.monotonic()
        while len(self.srv) < opened:
            now = time.monotonic()
            if now >= self.deadline:
                self.send(TIMED_OUT, opened=opened, accepted=len(self.srv))
                break
            events = poll.poll(min(0.2, self.deadline - now))
            if any(fd == self.stop_fd for fd, _ in events):
                self.stopped = True
                # Still take what is already queued: those connections are established.
                events = [(self.listener, 0)]
            if events:
                j0 = len(self.srv)
                while True:
                    c = accept4(self.listener, None, None, SOCK_FLAGS)
                    if c < 0:
                        code = get_errno()
                        if code != E.EAGAIN:
                            self.fail("server", "accept", code, len(self.srv))
                        break
                    srv_add(c)
                # Their clients are pending already; the echoes come back in drain().
                self.send_indexes(j0, len(self.srv))
                self.pending_srv += [j for j in range(j0, len(self.srv)) if self.written[j]]
                if self.stopped or self.failed:
                    break
                if self.accept_pause:
                    time.sleep(self.accept_pause)
            if time.monotonic() - last_report >= 0.25:
                last_report = time.monotonic()
                self.progress()
        poll.close()
        self.progress()
        if not self.failed and not self.stopped and len(self.srv) == self.share:
            self.send(ACCEPTED_ALL, t_established=time.monotonic_ns())

    def send_indexes(self, j0: int, j1: int) -> None:
        """Server side: index j out on accepted connection j."""
        srv, written, write, pack = self.srv, self.written, os.write, PACK
        j = j0
        while j < j1:
            try:
                for j in range(j, j1):
                    write(srv[j], pack(j))
                    written[j] = 1
                j = j1
            except OSError as exc:
                self.report_error("server", "write", exc.errno, j)
                j += 1

    def echo(self, fds) -> list:
        """Client side: read the index that arrived, check it is one that was sent and not
        seen before, send it back.  Returns the fds with nothing to read yet."""
        read, write, seen, limit = os.read, os.write, self.seen, len(self.srv)
        waiting = []
        bad = 0
        for fd in fds:
            try:
                data = read(fd, 4)
            except BlockingIOError:
                waiting.append(fd)
                continue
            except OSError as exc:
                self.report_error("client", "read", exc.errno, -1)
                continue
            v = int.from_bytes(data, "little") if len(data) == 4 else limit
            if v >= limit or seen[v]:
                bad += 1
                continue
            seen[v] = 1
            try:
                write(fd, data)
            except OSError as exc:
                self.report_error("client", "echo", exc.errno, v)
        self.mismatches += bad
        return waiting

    def verify(self, js) -> list:
        """Server side: the echo on srv[j] must be j.  Returns the js still waiting."""
        srv, written, read, pack = self.srv, self.written, os.read, PACK
        waiting = []
        good = bad = 0
        for j in js:
            if not written[j]:
                continue
            try:
                data = read(srv[j], 4)
            except BlockingIOError:
                waiting.append(j)
                continue
            except OSError as exc:
                self.report_error("server", "read", exc.errno, j)
                continue
            if data == pack(j):
                good += 1
            else:
                bad += 1
        self.verified += good
        self.mismatches += bad
        return waiting

    def drain(self, deadline: float) -> None:
        """Wait in epoll for the straggling reads, until every index sent is checked.
        Clients still waiting when none is left never had their server end accepted."""
        if not self.pending_srv:
            return
        poll = select.epoll()
        owner = {}
        for fd in self.pending_cli:
            poll.register(fd, select.EPOLLIN)
            owner[fd] = -1
        for j in self.pending_srv:
            poll.register(self.srv[j], select.EPOLLIN)
            owner[self.srv[j]] = j
        left = len(self.pending_srv)
        while left:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            for fd, _ in poll.poll(min(timeout, 0.5)):
                j = owner[fd]
                if (self.echo((fd,)) if j < 0 else self.verify((j,))):
                    continue  # woken without data: keep waiting
                poll.unregister(fd)
                if j >= 0:
                    left -= 1
        poll.close()
