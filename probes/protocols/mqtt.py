"""mqtt://: MQTT 3.1.1 (OASIS standard, 2014), the protocol of most million-connection
deployments (EMQX, HiveMQ, VerneMQ, Mosquitto; emqtt-bench is their load tool).

A connection sends CONNECT (clean session, a client id unique to it: --client-id-prefix,
a random token per worker process and a counter; --username, --password-file or
--password, --keepalive) and reads the broker's first packet, which must be CONNACK: return code 0 verifies, any
other is the broker refusing in the specification's words (3.2.2.3: 'CONNACK 3 server
unavailable').  The second check is PINGREQ answered by PINGRESP.  A broker at its
connection cap (Mosquitto's max_connections) closes without a CONNACK: the worker counts
that as the server closing before it answered.

Sans-IO and hand-written (a packet's fixed header and a 2-byte CONNACK body, nothing of
a packet kept once decided); tests/test_protocol_mqtt.py checks it against paho-mqtt as
the oracle (its client's CONNECT bytes, its reading of CONNACK)."""
from __future__ import annotations

import os
import struct
from typing import Optional, Tuple

from .base import NEED, REFUSED, VERIFIED, Exchange, Option, Protocol, Scheme, TargetError

CONNECT, CONNACK, PINGREQ, PINGRESP = 1, 2, 12, 13
PACKET_NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
                7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
                12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT"}
# MQTT 3.1.1, 3.2.2.3: the CONNACK return codes and their names.
RETURN_CODES = {1: "unacceptable protocol version", 2: "identifier rejected", 3: "server unavailable",
                4: "bad user name or password", 5: "not authorized"}
PING = bytes([PINGREQ << 4, 0])
LEVEL = 4                      # protocol level of 3.1.1
CLEAN_SESSION, PASSWORD_FLAG, USERNAME_FLAG = 0x02, 0x40, 0x80
MAX_SKIP = 1 << 20             # bytes of other packets skipped while waiting, at most


def remaining_length(n: int) -> bytes:
    """The fixed header's Remaining Length (2.2.3): 7 bits a byte, low first."""
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, keepalive: int, username: Optional[str] = None,
                   password: Optional[str] = None) -> bytes:
    """CONNECT (3.1) with a clean session."""
    flags = CLEAN_SESSION | (USERNAME_FLAG if username is not None else 0) \
        | (PASSWORD_FLAG if password is not None else 0)
    body = utf8("MQTT") + bytes([LEVEL, flags]) + struct.pack("!H", keepalive) + utf8(client_id)
    body += (utf8(username) if username is not None else b"") + (utf8(password) if password is not None else b"")
    return bytes([CONNECT << 4]) + remaining_length(len(body)) + body


def header(buf: bytes) -> Optional[Tuple[int, int, int]]:
    """(packet type, body start, body length) of the packet at buf; None if incomplete;
    (-1, 0, 0) for a Remaining Length longer than its four bytes (2.2.3)."""
    n, shift = 0, 0
    for i in range(1, min(len(buf), 5)):
        byte = buf[i]
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return buf[0] >> 4, i + 1, n
        shift += 7
    return (-1, 0, 0) if len(buf) >= 5 else None


class Packets(Exchange):
    """Reads the broker's packets until the one awaited: CONNACK (its return code
    decides) or PINGRESP.  Other packets are skipped; the buffer holds at most one."""

    __slots__ = ("buf", "awaiting")

    def __init__(self, out: bytes, awaiting: int):
        super().__init__(out)
        self.buf, self.awaiting = b"", awaiting

    def feed(self, data: bytes) -> int:
        self.out = b""
        self.buf += data
        while self.buf:
            parsed = header(self.buf)
            if parsed is None:
                return NEED
            kind, start, length = parsed
            if kind < 0:
                return self.refuse("a packet with a malformed Remaining Length")
            if kind != self.awaiting and self.awaiting == CONNACK:
                # 3.2.0: the first packet from the server must be CONNACK.
                return self.refuse(f"answered {PACKET_NAMES.get(kind, f'packet type {kind}')}, not CONNACK")
            if len(self.buf) < start + length:
                return NEED if length <= MAX_SKIP else self.refuse(f"a packet of {length:,} bytes")
            body, self.buf = self.buf[start:start + length], self.buf[start + length:]
            if kind == self.awaiting:
                return self.decide(kind, body)
        return NEED

    def decide(self, kind: int, body: bytes) -> int:
        if kind == PINGRESP:
            return VERIFIED
        if len(body) != 2:
            return self.refuse(f"a CONNACK of {len(body)} bytes, not 2")
        code = body[1]
        if code == 0:
            return VERIFIED
        return self.refuse(f"CONNACK {code} {RETURN_CODES.get(code, 'a return code 3.1.1 does not define')}")

    def refuse(self, words: str) -> int:
        self.words = words
        return REFUSED


class Mqtt(Protocol):
    name = "mqtt"

    def __init__(self, prefix: str, keepalive: int, username: Optional[str], password: Optional[str]):
        self.prefix, self.keepalive, self.username, self.password = prefix, keepalive, username, password
        self.renew()
        # Workers are forked: each draws its own token, so client ids never repeat
        # across workers (or load hosts) and a broker never takes one session over.
        os.register_at_fork(after_in_child=self.renew)

    def renew(self) -> None:
        self.token, self.count = os.urandom(4).hex(), 0

    def client_id(self) -> str:
        self.count += 1
        return f"{self.prefix}{self.token}{self.count:x}"

    def opening(self) -> Exchange:
        return Packets(connect_packet(self.client_id(), self.keepalive, self.username, self.password), CONNACK)

    def checking(self) -> Exchange:
        return Packets(PING, PINGRESP)


def _build(target, options) -> Mqtt:
    keepalive = options["keepalive"]
    if not isinstance(keepalive, int) or not 0 <= keepalive <= 65535:
        raise TargetError(f"--keepalive {keepalive!r} is not 0..65535 seconds")
    prefix = options["client_id_prefix"]
    if len(prefix.encode("utf-8")) > 256 or any(c in prefix for c in "\0\r\n"):
        raise TargetError(f"--client-id-prefix {prefix[:40]!r}: at most 256 bytes, no control characters")
    if options["password"] is not None and options["username"] is None:
        raise TargetError("--password (or --password-file) needs --username (MQTT 3.1.1 sends no password without a user name)")
    return Mqtt(prefix, keepalive, options["username"], options["password"])


SCHEME = Scheme(
    name="mqtt", order=5, usage="mqtt://HOST[:PORT]", default_port=1883,
    does="MQTT 3.1.1 CONNECT with a clean session and a client id unique to the connection "
         "(`--client-id-prefix`, `--username`, `--password-file` or `--password`, `--keepalive S`); CONNACK 0 serves, any other "
         "return code is the broker refusing (`CONNACK 5 not authorized`), a close before CONNACK is the "
         "broker at its cap",
    second="PINGREQ answered by PINGRESP",
    build=_build,
    options=(Option("client_id_prefix", "--client-id-prefix", "PREFIX",
                    "each connection's client id starts with PREFIX; a random token per worker and a "
                    "counter follow.", default="tuner"),
             Option("username", "--username", "NAME", "the CONNECT's user name."),
             Option("password", "--password", "TEXT",
                    "the CONNECT's password (needs --username; other users see it in ps: prefer "
                    "--password-file).", secret=True),
             Option("password_file", "--password-file", "FILE",
                    "the CONNECT's password, read from FILE (its text, one trailing newline dropped; "
                    "needs --username): owned by root or you, mode 600 (tuner refuses a file others "
                    "can read, or a symlink), and kept out of every command line; '-' reads it from "
                    "stdin (a pipe, or asked for at a terminal).", file_of="password"),
             Option("keepalive", "--keepalive", "SECONDS",
                    "the CONNECT's keep alive (default 0: the broker never times a silent connection "
                    "out; otherwise hold less than 1.5 x SECONDS: nothing is sent during the hold).",
                    default=0, kind=int, bounds=(0, 65535), unit="of seconds")))
