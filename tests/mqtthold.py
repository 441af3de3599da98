"""How many MQTT connections a real broker holds at once, measured as a plain client does.

Not `tuner probe --connect mqtt://` (another module's work, tested on its own): this is
the tests' own oracle for tuner/apps/mosquitto.py.  Raw MQTT 3.1.1 over many sockets: a
CONNECT with a client id of its own on each (a broker disconnects an older session that
reuses an id), then CONNACK read on each.  Return code 0 and still open at the end is
held; any other return code, a close or a reset is refused (Mosquitto closes a
connection beyond max_connections at once, and one it cannot accept for lack of
descriptors: net__socket_accept's spare-socket trick).
"""
from __future__ import annotations

import resource
import socket
import struct
import time
from dataclasses import dataclass

from realservers import connect

KEEPALIVE = 600          # seconds: the broker drops nobody during a test


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _remaining_length(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n % 128, n // 128
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def connect_packet(client_id: str, keepalive: int = KEEPALIVE) -> bytes:
    """MQTT 3.1.1 CONNECT (clean session, no will, no credentials)."""
    body = _utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive) + _utf8(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


@dataclass
class Held:
    held: int        # CONNACK 0 and still open
    refused: int     # another return code, closed or reset
    codes: dict      # CONNACK return code -> count


def _connack(s: socket.socket, deadline: float):
    """The CONNACK's return code, or None when the broker closed (or never answered)."""
    buf = b""
    while len(buf) < 4:
        s.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = s.recv(4 - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf[3] if buf[0] == 0x20 else None


def _open(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def held(srv, n: int, batch: int = 50, settle: float = 1.0, prefix: str = "t",
         every_host: bool = False) -> Held:
    """Open n connections to srv (CONNECT on each as it opens), then count (see above);
    with every_host, to each of its addresses in turn (each its own listener)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks = []
    try:
        for i in range(n):
            try:
                host = srv.hosts[i % len(srv.hosts)] if every_host else srv.host
                s = connect(host, srv.port, srv.netns, timeout=5.0)
                s.sendall(connect_packet(f"{prefix}{i}-{time.monotonic_ns()}"))
            except OSError:
                continue
            socks.append(s)
            if i % batch == batch - 1:
                time.sleep(0.02)
        deadline = time.monotonic() + 10.0
        codes: dict = {}
        accepted = []
        for s in socks:
            code = _connack(s, deadline)
            codes[code] = codes.get(code, 0) + 1
            if code == 0:
                accepted.append(s)
        time.sleep(settle)
        kept = sum(1 for s in accepted if _open(s))
        return Held(kept, n - kept, codes)
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
