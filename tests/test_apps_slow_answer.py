"""A service that answers a byte at a time cannot keep tuner reading: the whole answer
has a deadline (twice the socket's timeout), not each recv (tuner/apps/base.recv_by).
Real sockets on 127.0.0.1; the dripping server is this test's own thread."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from tuner.apps import base, redis


@pytest.fixture
def dripping():
    """A loopback server that, once sent anything, answers one byte every 0.2 s until the
    test ends: never a whole answer, never a closed connection."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    stop = threading.Event()

    def serve():
        conn, _ = srv.accept()
        with conn:
            conn.recv(100)
            while not stop.is_set():
                try:
                    conn.sendall(b"$")   # a Redis bulk string's start, and never its end
                except OSError:
                    return
                stop.wait(0.2)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()
    finally:
        stop.set()
        srv.close()
        thread.join(5)


def connect(address, timeout=0.5):
    sock = socket.create_connection(address, timeout=timeout)
    return sock


def test_exchange_ends_by_its_deadline(dripping):
    started = time.monotonic()
    got = base.exchange(connect(dripping), b"show info\n")
    took = time.monotonic() - started
    # Each byte came well inside the 0.5 s timeout; the whole answer had 1 s.
    assert got and set(got) == {ord("$")}
    assert took < 2.5, took


def test_redis_question_ends_by_its_deadline(dripping):
    started = time.monotonic()
    with connect(dripping) as sock, pytest.raises(socket.timeout):
        redis.ask(sock, "INFO", "clients")
    assert time.monotonic() - started < 2.5
