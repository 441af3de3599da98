"""ws://: a WebSocket client (RFC 6455).  The opening handshake with a fresh
Sec-WebSocket-Key per connection; the answer must be 101 with the matching
Sec-WebSocket-Accept (and the subprotocol asked for, if any).  The second check is a
ping the server must answer with a pong of the same payload.  A close frame from the
server is it refusing, in its words: 'close 1013 Try Again Later'.  Other statuses
refuse like HTTP's ('503 Service Unavailable').

Hand-written framing (client frames masked, server frames read without keeping their
payload unless it is a control frame); tests/test_protocols.py checks it against
wsproto as the oracle."""
from __future__ import annotations

import base64
import hashlib
import os
import struct
from typing import Optional

from .base import NEED, REFUSED, VERIFIED, Exchange, Option, Protocol, Scheme
from .http import HEADER, MAX_HEAD, parse_head, request_head, split_head

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
PING_PAYLOAD = b"tuner"


def accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame(opcode: int, payload: bytes = b"", mask: Optional[bytes] = None) -> bytes:
    """One final client frame, masked (clients must mask, RFC 6455 5.3)."""
    mask = os.urandom(4) if mask is None else mask
    n = len(payload)
    size = bytes([0x80 | n]) if n < 126 else (bytes([0x80 | 126]) + struct.pack("!H", n) if n < 1 << 16
                                              else bytes([0x80 | 127]) + struct.pack("!Q", n))
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode]) + size + mask + masked


def close_words(payload: bytes) -> str:
    if len(payload) < 2:
        return "close (no status code)"
    code = struct.unpack("!H", payload[:2])[0]
    reason = payload[2:].decode("utf-8", "replace")
    return f"close {code}" + (f" {reason}" if reason else "")


class Frames(Exchange):
    """Server frames: a close refuses, a ping is answered, a pong of our payload
    verifies (when one is awaited), data frames are skipped."""

    __slots__ = ("buf", "skip", "awaiting_pong")

    def __init__(self, out: bytes = b"", awaiting_pong: bool = False):
        super().__init__(out)
        self.buf, self.skip, self.awaiting_pong = b"", 0, awaiting_pong

    def feed(self, data: bytes) -> int:
        self.out = b""
        return self.frames(data)

    def frames(self, data: bytes) -> int:
        if self.skip:                      # the rest of a data frame's payload
            taken = min(self.skip, len(data))
            self.skip -= taken
            data = data[taken:]
        self.buf += data
        while self.buf:
            parsed = self.header()
            if parsed is None:
                return NEED
            opcode, start, length = parsed
            if opcode < CLOSE:             # data: drop its payload as it comes
                taken = min(length, len(self.buf) - start)
                self.skip, self.buf = length - taken, self.buf[start + taken:]
                continue
            if len(self.buf) < start + length:
                return NEED
            payload, self.buf = self.payload(start, length), self.buf[start + length:]
            if opcode == CLOSE:
                self.words = close_words(payload)
                return REFUSED
            if opcode == PING:
                self.out += frame(PONG, payload)
            elif opcode == PONG and self.awaiting_pong and payload == PING_PAYLOAD:
                return VERIFIED
        return NEED

    def header(self):
        """(opcode, payload start, payload length) of the frame at buf, None if incomplete."""
        buf = self.buf
        if len(buf) < 2:
            return None
        opcode, n, start = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, start = struct.unpack_from("!H", buf, 2)[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, start = struct.unpack_from("!Q", buf, 2)[0], 10
        if buf[1] & 0x80:                  # servers must not mask; read it anyway
            start += 4
        return None if len(buf) < start else (opcode, start, n)

    def payload(self, start: int, length: int) -> bytes:
        data = self.buf[start:start + length]
        if self.buf[1] & 0x80:
            mask = self.buf[start - 4:start]
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        return data


class Handshake(Frames):
    """The opening handshake, then any frames that came with it (a close right away)."""

    __slots__ = ("accept", "subprotocol", "upgraded")

    def __init__(self, request: bytes, key: bytes, subprotocol: Optional[str]):
        super().__init__(request)
        self.accept, self.subprotocol, self.upgraded = accept_for(key), subprotocol, False

    def feed(self, data: bytes) -> int:
        self.out = b""
        if self.upgraded:
            return self.settled(self.frames(data))
        self.buf += data
        parts = split_head(self.buf)
        if parts is None:
            return NEED if len(self.buf) <= MAX_HEAD else self.refuse("a response head over 64 KiB")
        raw, rest = parts
        head = parse_head(raw)
        if head is None:
            return self.refuse(f"answered {raw[:40]!r}, not HTTP/1.x")
        status, reason, fields = head
        if status != 101:
            return self.refuse(f"{status} {reason}".strip())
        if fields.get("sec-websocket-accept", "").encode() != self.accept:
            return self.refuse("101 with a wrong Sec-WebSocket-Accept")
        if "websocket" not in fields.get("upgrade", "").lower():
            return self.refuse("101 without Upgrade: websocket")
        if self.subprotocol is not None and fields.get("sec-websocket-protocol") != self.subprotocol:
            return self.refuse(f"101 without subprotocol {self.subprotocol!r}")
        self.upgraded, self.buf = True, b""
        return self.settled(self.frames(rest))

    def settled(self, step: int) -> int:
        # Verified once no frame is left half read: the parser is dropped then, and the
        # next one (the second check) starts at a frame boundary.
        return VERIFIED if step == NEED and not self.buf and not self.skip else step

    def refuse(self, words: str) -> int:
        self.words = words
        return REFUSED


class WebSocket(Protocol):
    name = "ws"

    def __init__(self, head: bytes, subprotocol: Optional[str] = None):
        # The request head without its blank line; the per-connection key goes last.
        extra = (f"Sec-WebSocket-Protocol: {subprotocol}\r\n" if subprotocol else "")
        self.head = head[:-2] + (b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                 b"Sec-WebSocket-Version: 13\r\n" + extra.encode("latin-1"))
        self.subprotocol = subprotocol

    def opening(self) -> Exchange:
        key = base64.b64encode(os.urandom(16))
        return Handshake(self.head + b"Sec-WebSocket-Key: " + key + b"\r\n\r\n", key, self.subprotocol)

    def checking(self) -> Exchange:
        return Frames(frame(PING, PING_PAYLOAD), awaiting_pong=True)


SCHEME = Scheme(
    name="ws", order=3, usage="ws://HOST[:PORT]/PATH", default_port=80, takes_path=True,
    does="the WebSocket opening handshake (RFC 6455), `Sec-WebSocket-Accept` checked, `--subprotocol NAME` "
         "must be the one the server chose; held open",
    second="a ping the server answers with a pong",
    build=lambda target, options: WebSocket(request_head("GET", target, options["headers"]),
                                            options["subprotocol"]),
    options=(HEADER, Option("subprotocol", "--subprotocol", "NAME",
                            "the subprotocol to ask for (the server must choose it).")))
