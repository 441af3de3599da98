"""What every protocol of probes/protocols/ shares: the verdicts, the Exchange and
Protocol interfaces, the Target a --connect URL names and its error.  Here, apart from
the package's parse_target and make (which imports each protocol's module), so the
protocols import these without importing the package that imports them.  Stdlib only:
the probe's workers import it.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Optional

NEED, VERIFIED, REFUSED = 0, 1, 2
READ_SIZE = 4096              # bytes read per event; a shorter read drained the socket


class TargetError(ValueError):
    """A --connect URL (or a protocol option) that cannot be used."""


class Exchange:
    """One connection's exchange in flight.  `out`: bytes to write now; `words`: the
    server's words once REFUSED; `needs_answer` False: verified once `out` is written."""

    __slots__ = ("out", "words")
    needs_answer = True

    def __init__(self, out: bytes = b""):
        self.out, self.words = out, ""

    def feed(self, data: bytes) -> int:
        raise NotImplementedError


class Protocol:
    name = ""
    server_first = False      # the server speaks first (tuner's exchange)

    def opening(self) -> Exchange:
        raise NotImplementedError

    def checking(self) -> Optional[Exchange]:
        return None


@dataclass(frozen=True)
class Target:
    scheme: str               # tuner | tcp | http | ws | redis
    host: str                 # an address (resolved)
    port: int
    family: int               # socket.AF_INET or AF_INET6
    path: str = "/"
    host_header: str = ""     # HOST[:PORT] as given, for HTTP's Host header

    @property
    def endpoint(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family == socket.AF_INET6 else f"{self.host}:{self.port}"
