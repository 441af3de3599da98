"""redis://: PING -> +PONG, the same for the second check.  An error reply is the
server refusing in its own words ('-ERR max number of clients reached' when maxclients
is reached: Redis writes it and closes)."""
from __future__ import annotations

from .base import NEED, REFUSED, VERIFIED, Exchange, Protocol, Scheme

PING = b"*1\r\n$4\r\nPING\r\n"
LONGEST_LINE = 1024


class Ping(Exchange):
    __slots__ = ("have",)

    def __init__(self):
        super().__init__(PING)
        self.have = b""

    def feed(self, data: bytes) -> int:
        self.out = b""
        self.have += data
        end = self.have.find(b"\r\n")
        if end < 0:
            if len(self.have) <= LONGEST_LINE:
                return NEED
            end = LONGEST_LINE
        line = self.have[:end]
        if line == b"+PONG":
            return VERIFIED
        text = line.decode("utf-8", "replace")
        self.words = text[1:] if text.startswith("-") else f"answered {text[:60]!r}, not +PONG"
        return REFUSED


class Redis(Protocol):
    name = "redis"

    def opening(self) -> Exchange:
        return Ping()

    def checking(self) -> Exchange:
        return Ping()


SCHEME = Scheme(
    name="redis", order=4, usage="redis://HOST[:PORT]", default_port=6379,
    does="`PING` answered `+PONG`", second="`PING` again",
    build=lambda target, options: Redis())
