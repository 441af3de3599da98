"""Forked workers of one orchestrator: the pipes that steer them, signals, reaping,
and the report lines they send.

Shared by the three modes (local probe, --serve, --connect), which differ in what
their workers do and report, not in how workers are started and ended:

- one `report` pipe all workers write short text lines to (each far below PIPE_BUF,
  so lines from different workers never interleave), each line a `Line` kind whose
  named columns the worker that writes it and the orchestrator that reads it share;
- control pipes the other way, signalled by closing the orchestrator's end (EOF
  reaches every worker at once): `stop` (stop opening/accepting), `check` (the hold is
  over: check every held connection a second time; --connect's workers only) and
  `release` (close everything and exit);
- SIGINT/SIGTERM/SIGHUP only record which signal came (self.signal) and wake the
  poll through a wakeup pipe; the orchestrator decides what it means;
- workers are forked after gc.freeze() with those signals blocked around fork(),
  carry PR_SET_PDEATHSIG, and never return into orchestrator code;
- leaving the `with` block releases, reaps and (after a grace) SIGKILLs every worker,
  so no worker outlives its orchestrator whatever ended the run.
"""
from __future__ import annotations

import gc
import os
import select
import signal
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1
SIDES = ("client", "server")
# Worker operations, as small codes in ERROR lines.
OPS = ("socket", "bind", "connect", "accept", "write", "read", "echo", "verify", "listen")


class Line:
    """One kind of report line: `K TAG col1 col2 ...`, integers (or the `text` columns).

    counts: its columns are the worker's running figures (the orchestrator keeps the
            latest of each per worker and sums them by name);
    final:  the worker has sent its last figures (it may exit now)."""

    def __init__(self, tag: str, *columns: str, counts: bool = False, final: bool = False,
                 text: Sequence[str] = ()):
        self.tag, self.columns = tag.encode(), columns
        self.counts, self.final, self.text = counts, final, frozenset(text)

    def write(self, fd: int, k: int, **values) -> None:
        if len(values) != len(self.columns):
            raise TypeError(f"{self.tag!r} line takes {self.columns}, got {tuple(values)}")
        os.write(fd, f"{k} {self.tag.decode()} {' '.join(str(values[c]) for c in self.columns)}\n".encode())

    def read(self, fields: List[bytes]) -> dict:
        return {c: (v.decode() if c in self.text else int(v)) for c, v in zip(self.columns, fields)}


# A failure of a worker's own socket call (every mode): SIDES[side], OPS[op], errno, and
# the index of the connection it happened at.
ERROR = Line("E", "side", "op", "errno", "index")


def line_kinds(*lines: Line) -> Dict[bytes, Line]:
    return {line.tag: line for line in (ERROR, *lines)}


def start_worker(make: Callable, k: int, **kwargs) -> None:
    """Body of a freshly forked worker: `make(k, **kwargs).run()` -> exit code.  Never
    returns into the orchestrator's code."""
    code = 70
    try:
        # Ctrl-C reaches the whole process group; the orchestrator decides what it means
        # and tells the workers through the pipes.  The orchestrator's wakeup pipe and
        # handlers are not the worker's.
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        from .sockets import libc
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != kwargs.pop("parent"):
            os._exit(1)  # the orchestrator died between fork and prctl
        code = make(k, **kwargs).run()
    except BaseException:  # report any crash on stderr, then still leave through _exit
        import traceback
        traceback.print_exc()
    finally:
        os._exit(code)


class Fleet:
    def __init__(self):
        self.signal: Optional[int] = None
        self.pids: Dict[int, int] = {}          # pid -> worker index
        self.exit_status: Dict[int, int] = {}   # worker index -> wait status
        self.killed: set = set()                # worker indexes the orchestrator SIGKILLed
        self._buf = b""

    # -- setup and teardown --------------------------------------------------------------
    def __enter__(self) -> "Fleet":
        self.report_r, self.report_w = os.pipe()
        self.stop_r, self.stop_w = os.pipe()
        self.release_r, self.release_w = os.pipe()
        self.check_r, self.check_w = os.pipe()
        os.set_blocking(self.report_r, False)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self._old_handlers = {s: signal.signal(s, self._on_signal) for s in SIGNALS}
        self._old_wakeup = signal.set_wakeup_fd(self.wake_w)
        self.poll = select.epoll()
        self.poll.register(self.report_r, select.EPOLLIN)
        self.poll.register(self.wake_r, select.EPOLLIN)
        gc.collect()
        gc.freeze()  # the collector never walks (so never copies) the heap workers inherit
        return self

    def __exit__(self, *exc) -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        self.end()
        gc.unfreeze()
        signal.set_wakeup_fd(self._old_wakeup)
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        self.poll.close()
        for fd in (self.report_r, self.wake_r, self.wake_w):
            os.close(fd)
        for fd in (self.report_w, self.stop_r, self.release_r, self.check_r, self.check_w):
            if fd is not None:
                os.close(fd)

    def _on_signal(self, signum, frame) -> None:
        if self.signal is None:
            self.signal = signum

    # -- workers -------------------------------------------------------------------------
    def fork(self, k: int, body: Callable[[], None], close_in_child: Iterable[int] = ()) -> int:
        """Fork worker k running body() (which must end the process itself); returns its pid."""
        # Blocked around fork so no signal runs the orchestrator's handler in a child.
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            pid = os.fork()
        except OSError:  # EAGAIN: a pids limit; the caller names it
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            raise
        if pid == 0:
            try:
                gc.disable()
                for fd in (self.report_r, self.stop_w, self.release_w, self.check_w, self.wake_r,
                           self.wake_w, *close_in_child):
                    if fd is not None:
                        os.close(fd)
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stdout carries the orchestrator's events
                body()
            finally:
                os._exit(70)  # never run the orchestrator's code in a worker
        self.pids[pid] = k
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        return pid

    def fork_per_listener(self, listeners: list, body: Callable[[int, int], None]) -> None:
        """Fork worker k with body(k, listener k's fd), one per listener, then started().

        The parent closes each listener once its worker has it, and a worker closes the
        listeners of the workers after it, so every listener lives in exactly one process.
        """
        for k, listener in enumerate(listeners):
            fd = listener.fileno()
            self.fork(k, lambda k=k, fd=fd: body(k, fd),
                      close_in_child=[s.fileno() for s in listeners[k + 1:]])
            listener.close()
        self.started()

    def started(self) -> None:
        """Every worker is forked (or no more can be): drop the ends only workers use, so
        EOF means what it says."""
        for name in ("report_w", "stop_r", "release_r", "check_r"):
            if getattr(self, name) is not None:
                os.close(getattr(self, name))
                setattr(self, name, None)

    def worker_args(self) -> dict:
        return {"report": self.report_w, "stop": self.stop_r, "release": self.release_r,
                "parent": os.getpid()}

    def read(self, timeout: float) -> List[List[bytes]]:
        """Report lines (split into fields) that arrived within timeout seconds: everything
        in the pipe, not just one read's worth."""
        lines: List[List[bytes]] = []
        for fd, _ in self.poll.poll(timeout):
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    break
                if not chunk:
                    break  # every worker has exited and the pipe is empty
                if fd != self.wake_r:  # the wakeup pipe only says a signal came (self.signal)
                    self._buf += chunk
        if b"\n" in self._buf:
            *done, self._buf = self._buf.split(b"\n")
            lines = [line.split() for line in done if line]
        return lines

    def collect(self, timeout: float) -> Tuple[List[List[bytes]], List[int]]:
        """(report lines, indexes of the workers that exited), in that order of handling.

        A worker writes its last lines and then exits, but read() and reap() are two
        steps: lines written after the read and an exit seen by the reap would make a
        worker that ended normally look as if it died without reporting.  So when anyone
        was reaped the pipe is read again: whatever a reaped worker wrote is in it by
        now, and the caller sees those lines before it judges the exit."""
        lines = self.read(timeout)
        ended = self.reap()
        if ended:
            lines += self.read(0)
        return lines, ended

    def reap(self) -> List[int]:
        """Indexes of the workers that exited since the last call."""
        ended = []
        while self.pids and len(self.exit_status) < len(self.pids):
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            k = self.pids.get(pid)
            if k is not None:
                self.exit_status[k] = status
                ended.append(k)
        return ended

    @property
    def live(self) -> List[int]:
        return [k for k in self.pids.values() if k not in self.exit_status]

    # -- ending --------------------------------------------------------------------------
    def stop(self) -> None:
        if self.stop_w is not None:
            os.close(self.stop_w)
            self.stop_w = None

    def check(self) -> None:
        """The hold is over: workers that hold check each connection a second time."""
        if self.check_w is not None:
            os.close(self.check_w)
            self.check_w = None

    def release(self) -> None:
        self.stop()
        if self.release_w is not None:
            os.close(self.release_w)
            self.release_w = None

    def kill_all(self) -> None:
        for pid, k in self.pids.items():
            if k not in self.exit_status:
                self.killed.add(k)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def end(self, grace: float = 10.0) -> None:
        """Release and reap every worker; SIGKILL those still alive after `grace` seconds."""
        self.release()
        deadline = time.monotonic() + grace
        while len(self.exit_status) < len(self.pids):
            self.reap()
            if len(self.exit_status) >= len(self.pids):
                break
            if time.monotonic() > deadline:
                self.kill_all()
                deadline = float("inf")
            time.sleep(0.02)


def describe_exit(status: int) -> tuple:
    """(code, text) of a wait status: code is -signal when killed by one."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return -sig, f"killed by {signal.Signals(sig).name}" + (" (the OOM killer?)" if sig == signal.SIGKILL else "")
    code = os.WEXITSTATUS(status)
    return code, f"exited with status {code}"
