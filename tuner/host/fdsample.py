"""A service's held sockets read through a bounded sample of its own descriptors: how many
it holds on a port and what their buffers hold, estimated without walking the kernel's
socket table (issue 26: one step's sampling under 50 ms at 100,000 held).

Why not sock_diag past a few tens of thousands: a dump walks every TCP socket of the
host's established table, the load generator's included (~0.2 us each, 40 ms over the
200,000 sockets of 100,000 connections made on this host), then fills one message per
matching socket (~0.75 us each): 120 ms at 100,000 before Python reads a byte.

Here, per process of the service:
- its open descriptors are counted by the kernel (stat of /proc/PID/fd: Linux 6.2+ sums
  its bitmap) and its table size read from /proc/PID/status (FDSize); /proc/PID/fd is
  never listed (a listing makes a proc inode per entry, kernel memory charged to the
  reading of the service);
- descriptors 0..CENSUS-1 are each read (listeners, logs and epoll are opened first, so
  the few descriptors that are not held sockets are counted exactly), and further ones
  drawn at random until `budget` of them are open;
- each read is pidfd_getfd(2) (Linux 5.6+, ptrace access: root) duplicating the
  descriptor into tuner for two getsockopt calls and a getsockname (TCP_INFO's state,
  the local port, SO_MEMINFO: the nine figures SKMEMINFO carries), then closed at once:
  nothing is read from or written to the socket, nothing is created.  (Were the service
  to close that descriptor in those microseconds, tuner's close would be the socket's
  last, as the service's would have been.)
The count of held sockets above CENSUS is (open descriptors there) x (share of the drawn
open ones that are held sockets on the port); their buffer figures, the drawn held
sockets' sums scaled the same way.  A descriptor shared by two processes would count in
each (sock_diag counts a socket once); servers hand an accepted socket to one process.

`Unsupported` (an older kernel, no ptrace access, a seccomp filter) tells the caller to
read every socket through sock_diag instead.  Standard library only (the bottom layer).
"""
from __future__ import annotations

import ctypes
import errno
import os
import json
import random
import select
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from tuner.host import procpid

SYS_PIDFD_GETFD = 438          # the same number on every architecture (asm-generic)
SO_MEMINFO = 55                # socket(7): u32[SK_MEMINFO_VARS], sock_diag's SKMEMINFO
TCP_INFO = 11
CENSUS = 32                    # descriptors read one by one, open or not, per process
_MEMINFO = struct.Struct("=9I")
_LIBC: List[ctypes.CDLL] = []


class Unsupported(Exception):
    """The descriptors cannot be read this way here: read the socket table instead."""


@dataclass
class Estimate:
    """Held sockets on the port, summed over the service's processes.

    sockets     held sockets (established, close-wait) on the port, estimated
    cpu_seconds the CPU the child that read them used (isolated())
    read        descriptors duplicated and read (open or not)
    held_read   of them, held sockets on the port: the sample the figures rest on
    sums        the nine SO_MEMINFO figures summed over `sockets`, estimated
    """

    sockets: float = 0.0
    read: int = 0
    held_read: int = 0
    sums: List[float] = field(default_factory=lambda: [0.0] * 9)
    cpu_seconds: float = 0.0     # the reading child's CPU (isolated())


def _getfd(pidfd: int, fd: int) -> Optional[int]:
    """Our duplicate of descriptor `fd` of the process behind `pidfd`; None when that
    number is not open (EBADF)."""
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    dup = _LIBC[0].syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
    if dup >= 0:
        return dup
    code = ctypes.get_errno()
    if code == errno.EBADF:
        return None
    if code == errno.ESRCH:
        raise ProcessLookupError(code, os.strerror(code))
    raise Unsupported(f"pidfd_getfd: {os.strerror(code)}")


def read_held(pidfd: int, fd: int, port: int, states: int) -> Tuple[bool, Optional[tuple]]:
    """(open, SO_MEMINFO figures or None) of descriptor `fd`: figures only for a TCP
    socket whose local port is `port` and whose state is one of `states` (a bit mask
    of TCP states); (False, None) for a number not open.

    The duplicate is wrapped as an IPv6 TCP socket without asking the kernel what it is
    (three getsockopt calls saved): a descriptor that is not a TCP socket fails TCP_INFO
    (ENOTSOCK, EOPNOTSUPP), and getsockname decodes the family the kernel answers with
    (sin_port and sin6_port share their offset; the IPv6 buffer holds either)."""
    dup = _getfd(pidfd, fd)
    if dup is None:
        return False, None
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, dup)
    except OSError:
        os.close(dup)          # not a socket
        return True, None
    with sock:
        try:
            if not (1 << sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 1)[0]) & states:
                return True, None
            if sock.getsockname()[1] != port:
                return True, None
            return True, _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size))
        except OSError:
            return True, None


def _opened(pid: int) -> int:
    try:
        return procpid.fd_count(pid)
    except ValueError as e:        # before 6.2 a big process's would be listed
        raise Unsupported(str(e)) from None


def _table_size(pid: int) -> int:
    try:
        return int(procpid.proc_status(pid)["FDSize"])
    except (KeyError, ValueError):
        raise Unsupported(f"no FDSize in /proc/{pid}/status") from None


def _numbers(size: int, budget: int, rng: random.Random):
    """Descriptor numbers CENSUS..size-1 in random order without repeats: all of them when
    they are few, else draws (at most 8 x budget: a table mostly empty stops early)."""
    if size - CENSUS <= 4 * budget:
        numbers = list(range(CENSUS, size))
        rng.shuffle(numbers)
        yield from numbers
        return
    seen: set = set()
    for _ in range(8 * budget):
        fd = rng.randrange(CENSUS, size)
        if fd not in seen:
            seen.add(fd)
            yield fd


def process(pid: int, port: int, states: int, budget: int, rng: random.Random) -> Estimate:
    """One process's held sockets on `port`, from its low descriptors read one by one and
    `budget` open ones drawn above them."""
    opened = _opened(pid)
    size = _table_size(pid)
    try:
        pidfd = os.pidfd_open(pid)
    except PermissionError as e:
        raise Unsupported(f"pidfd_open: {e}") from None
    low: List[tuple] = []
    drawn: List[tuple] = []
    try:
        low_open = drawn_open = read = 0
        for fd in range(min(CENSUS, size)):
            is_open, figures = read_held(pidfd, fd, port, states)
            read += 1
            low_open += is_open
            if figures:
                low.append(figures)
        above = opened - low_open
        for fd in (_numbers(size, budget, rng) if above > 0 else ()):
            if drawn_open >= min(budget, above):
                break
            is_open, figures = read_held(pidfd, fd, port, states)
            read += 1
            drawn_open += is_open
            if figures:
                drawn.append(figures)
    finally:
        os.close(pidfd)
    if above > 0 and not drawn_open:
        raise Unsupported(f"none of pid {pid}'s {above:,} descriptors above {CENSUS} was found")
    # The drawn open descriptors stand for all `above`: each held one for `scale`.
    scale = above / drawn_open if drawn_open else 0.0
    sums = [sum(col) for col in zip(*low)] if low else [0] * 9
    if drawn:
        sums = [a + sum(col) * scale for a, col in zip(sums, zip(*drawn))]
    return Estimate(sockets=len(low) + len(drawn) * scale, read=read,
                    held_read=len(low) + len(drawn), sums=sums)


def open_descriptors(pids: Sequence[int]) -> Optional[int]:
    """Open descriptors of `pids` summed (gone ones skipped); None when this kernel does
    not count a big process's cheaply (procpid.fd_count: before 6.2)."""
    total = 0
    for pid in pids:
        try:
            total += procpid.fd_count(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        except ValueError:
            return None
    return total


def service(pids: Sequence[int], port: int, states: int, budget: int = 512,
            seed: Optional[int] = None) -> Estimate:
    """The held sockets on `port` of every process in `pids` (gone ones skipped), the
    `budget` of drawn descriptors shared in proportion to their open descriptors."""
    rng = random.Random(seed)
    counts = {}
    for pid in pids:
        try:
            counts[pid] = _opened(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    total = max(1, sum(counts.values()))
    out = Estimate()
    for pid, opened in counts.items():
        try:
            part = process(pid, port, states, max(16, budget * opened // total), rng)
        except (FileNotFoundError, ProcessLookupError):
            continue
        out.sockets += part.sockets
        out.read += part.read
        out.held_read += part.held_read
        out.sums = [a + b for a, b in zip(out.sums, part.sums)]
    return out


# How long the child reading the descriptors may take before tuner stops waiting: a
# sample reads ~20 ms at 100,000 held; a child stuck past this is stuck for good.
CHILD_SECONDS = 5.0


def isolated(pids: Sequence[int], port: int, states: int, budget: int = 512,
             seed: Optional[int] = None, timeout: Optional[float] = None) -> Estimate:
    """service(), run in a child process that tuner can walk away from.

    Why a child: the descriptors are the service's to choose, and closing a duplicate
    runs that file's flush.  A file on a FUSE mount the service's user runs (possible
    in its own user namespace wherever /dev/fuse is 0666) makes that close wait for its
    daemon's answer, uninterruptibly; a socket the service closed meanwhile with a long
    SO_LINGER makes it wait for its data.  Checking the type first is a race the service
    can win, so the duplicates live only in a child: if it does not answer within
    `timeout`, tuner kills it (it may stay stuck in the kernel, alone) and raises
    Unsupported, and the caller reads the sockets through sock_diag instead."""
    timeout = CHILD_SECONDS if timeout is None else timeout
    r, w = os.pipe()
    child = os.fork()
    if child == 0:                        # the child: read, write its figures, exit
        try:
            os.close(r)
            try:
                est = service(pids, port, states, budget, seed)
                out = {"sockets": est.sockets, "read": est.read, "held_read": est.held_read, "sums": est.sums}
            except Unsupported as e:
                out = {"unsupported": str(e)}
            except BaseException as e:    # noqa: BLE001 - the parent names it
                out = {"unsupported": f"{type(e).__name__}: {e}"}
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = _read_until(r, time.monotonic() + timeout)
    finally:
        os.close(r)
    if data is None:
        os.kill(child, signal.SIGKILL)
        _reap(child, wait=False)
        raise Unsupported(f"reading the service's descriptors took over {timeout:g} s (a file whose "
                          f"close waits, e.g. on a FUSE mount): every socket read through sock_diag")
    cpu = _reap(child, wait=True)
    try:
        out = json.loads(data)
    except ValueError:
        raise Unsupported("the descriptor-reading child ended without its figures") from None
    if "unsupported" in out:
        raise Unsupported(out["unsupported"])
    return Estimate(sockets=out["sockets"], read=out["read"], held_read=out["held_read"],
                    sums=out["sums"], cpu_seconds=cpu)


def _read_until(fd: int, deadline: float) -> Optional[bytes]:
    """All the child writes, up to its exit; None past `deadline`."""
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _reap(child: int, wait: bool) -> float:
    """The child's CPU seconds once reaped; a killed child stuck in the kernel is left to
    init once tuner exits (waitpid with WNOHANG, never a wait on it)."""
    try:
        pid, _, usage = os.wait4(child, 0 if wait else os.WNOHANG)
    except ChildProcessError:
        return 0.0
    return usage.ru_utime + usage.ru_stime if pid else 0.0
