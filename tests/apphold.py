"""How many connections a real nginx holds at once, measured from the client side.

Not `tuner probe --connect http://`: its connections sit idle in keep-alive between the
two checks, and nginx closes idle keep-alive connections to make room for new ones
(ngx_drain_connections, up to 32 at a time per worker), so the probe holds a range below
the cap (916 of 1,020 here), which is nginx working as designed, not its capacity.
HAProxy's tests use the probe (tests/test_apps_haproxy.py).

Connections are opened in small batches (a pause between them lets the server read
each request before the next arrive), then each is looked at without blocking:
- partial: the request is left unfinished, so nginx keeps the connection busy (an idle
  keep-alive one it would close to make room, ngx_drain_connections); held = still open;
- answered: a whole request; held = answered and still open (HAProxy leaves what is
  beyond maxconn in the accept queue: open, but never answered).
"""
from __future__ import annotations

import resource
import socket
import time

from realservers import connect

PARTIAL = b"GET / HTTP/1.1\r\nHost: tuner\r\n"
WHOLE = PARTIAL + b"\r\n"


def _state(s: socket.socket) -> tuple:
    """(answered, closed) of one connection, read without blocking."""
    s.setblocking(False)
    answered = False
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return answered, True
            answered = True
    except BlockingIOError:
        return answered, False
    except OSError:
        return answered, True


def held(srv, n: int, answered: bool = False, batch: int = 20, settle: float = 1.5) -> int:
    """Open n connections to srv and count those it holds (see the module docstring)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks = []
    try:
        for i in range(n):
            try:
                s = connect(srv.host, srv.port, srv.netns, timeout=5.0)
                s.sendall(WHOLE if answered else PARTIAL)
            except OSError:
                continue
            socks.append(s)
            if i % batch == batch - 1:
                time.sleep(0.02)
        time.sleep(settle)
        states = [_state(s) for s in socks]
        return sum(1 for got, closed in states if not closed and (got or not answered))
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def within(predicted: int, measured: int) -> bool:
    """The issue's tolerance: max(3, 1%)."""
    return abs(predicted - measured) <= max(3, predicted // 100)
