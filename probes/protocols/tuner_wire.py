"""tuner's own exchange (probes.wire) as a protocol: the server sends a 4-byte index,
the client echoes it, the server acknowledges with one byte.  The second check is
passive: the server sends nothing more while both hold, so still open is the answer.
Timed exchanges on held connections (--ping-every, --step) send ENQ, and the server
answers each with ACK (wire.py, step 5)."""
from __future__ import annotations

from .. import wire
from .base import NEED, REFUSED, VERIFIED, Exchange, Protocol, Scheme


class WireExchange(Exchange):
    __slots__ = ("have", "echoed")

    def __init__(self):
        super().__init__()
        self.have, self.echoed = b"", False

    def feed(self, data: bytes) -> int:
        self.out = b""
        if not self.echoed:
            self.have += data
            if len(self.have) < 4:
                return NEED
            self.out, data, self.echoed = self.have[:4], self.have[4:], True
            if not data:
                return NEED
        if data[:1] == wire.ACK:
            return VERIFIED
        self.words = "NAK: the server did not accept the echo of its index" if data[:1] == wire.NAK \
            else f"answered {data[:8]!r}, not ACK"
        return REFUSED


class Enq(Exchange):
    __slots__ = ()

    def __init__(self):
        super().__init__(wire.ENQ)

    def feed(self, data: bytes) -> int:
        self.out = b""
        if data[:1] == wire.ACK:
            return VERIFIED
        self.words = f"answered {data[:8]!r} to ENQ, not ACK"
        return REFUSED


class TunerWire(Protocol):
    name = "tuner"
    server_first = True
    counts_mismatches = True

    def opening(self) -> Exchange:
        return WireExchange()

    def pinging(self) -> Exchange:
        return Enq()

SCHEME = Scheme(
    name="tuner", order=0, usage="tuner://HOST:PORT", aliases=("HOST:PORT",),
    peer="tuner probe --serve",
    does="tuner's own exchange against `tuner probe --serve` (see the man page's WIRE PROTOCOL)",
    second="still open (no EOF, no reset)",
    build=lambda target, options: TunerWire())
