"""The per-connection transport seam of `--connect` (probes/protocols/base.py's
Transport and Connection): a transport that keeps state per connection has it kept by
the worker from connect to close, hold included, and every exchange of that connection
(the opening one and the second check) goes through it.

The transport here is a toy one, made for this test because TLS (the transport the seam
is for) comes with its own change: a one-byte key per connection, sent first, then every
byte XORed with it.  Everything else is real: the probe's orchestrator and forked
worker, loopback sockets, and a server process that speaks Redis's PING through that
transport and refuses (in Redis's words) a command it cannot read, so a second check
that skipped the connection's own transport state would be refused."""
import os
import subprocess
import sys

import pytest

from probes.connect import Client, ConnectConfig
from probes.protocols import Connection, Exchange, Transport, base
from realservers import free_port

SERVER = r"""
import selectors, socket, sys
PING = b"*1\r\n$4\r\nPING\r\n"
sel, keys, bufs = selectors.DefaultSelector(), {}, {}
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", int(sys.argv[1]))); ls.listen(1024); ls.setblocking(False)
sel.register(ls, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is ls:
            c, _ = ls.accept(); c.setblocking(False); sel.register(c, selectors.EVENT_READ)
            continue
        c = key.fileobj
        data = c.recv(4096)
        if not data:
            sel.unregister(c); c.close(); continue
        if c not in keys:
            keys[c], data, bufs[c] = data[0], data[1:], b""
        k = keys[c]
        bufs[c] += bytes(b ^ k for b in data)
        while len(bufs[c]) >= len(PING):
            said, bufs[c] = bufs[c][:len(PING)], bufs[c][len(PING):]
            answer = b"+PONG\r\n" if said == PING else b"-ERR unknown command\r\n"
            c.send(bytes(b ^ k for b in answer))
"""


def xor(data: bytes, key: int) -> bytes:
    return bytes(b ^ key for b in data)


class XorConnection(Connection):
    __slots__ = ("key", "keyed")

    def __init__(self):
        self.key, self.keyed = (os.urandom(1)[0] | 1), False

    def wrap(self, exchange: Exchange) -> Exchange:
        return XorExchange(self, exchange)


class XorExchange(Exchange):
    __slots__ = ("conn", "inner")

    def __init__(self, conn: XorConnection, inner: Exchange):
        prefix = b"" if conn.keyed else bytes([conn.key])   # the key goes first, once per connection
        conn.keyed = True
        super().__init__(prefix + xor(inner.out, conn.key))
        self.conn, self.inner = conn, inner

    def feed(self, data: bytes) -> int:
        verdict = self.inner.feed(xor(data, self.conn.key))
        self.out, self.words = xor(self.inner.out, self.conn.key), self.inner.words
        return verdict


class Xor(Transport):
    name = "xor"
    per_connection = True

    def connection(self):
        return XorConnection()


@pytest.fixture
def xor_server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield port
    finally:
        proc.kill()
        proc.wait()


def run(port: int, transport, n: int = 60, timeout: float = 10) -> dict:
    cfg = ConnectConfig(target=f"redis://127.0.0.1:{port}", connections=n, hold=0.3, timeout=timeout)
    plain = cfg.protocol

    def through(self=cfg):
        target, protocol = plain()
        protocol.transport = transport
        return target, protocol
    cfg.protocol = through
    return Client(cfg, lambda event: None).run()


def test_a_transports_state_is_kept_per_connection_through_both_checks(xor_server):
    result = run(xor_server, Xor())
    assert result["checked_twice"] and result["verified"] == 60, result["server"]
    assert result["server"]["check_refused"] == 0 and result["server"]["refused"] == 0


def test_without_the_transport_the_server_cannot_read_the_probe(xor_server):
    # The same server spoken to plainly: its first byte is taken for a key and what
    # follows is one byte short of a command, so nothing is answered: the seam is what
    # made the test above pass.
    result = run(xor_server, base.PLAIN, n=5, timeout=2)
    assert result["verified"] == 0 and result["server"]["no_answer"] == 5, result["server"]
