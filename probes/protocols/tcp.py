"""tcp://: connect and hold.  With --send the text goes out once connected (and again
for the second check); with --expect the answer must start with that text (tcpkali's
-m, Tsung's raw sessions).  Nothing to send: verified once connected, and the second
check is that the connection is still open."""
from __future__ import annotations

from typing import Optional

from .base import NEED, REFUSED, VERIFIED, Exchange, Option, Protocol, Scheme


class Silent(Exchange):
    """Verified once `out` is written: no answer is awaited."""
    __slots__ = ()
    needs_answer = False

    def feed(self, data: bytes) -> int:
        return VERIFIED


class Expect(Exchange):
    __slots__ = ("expect", "have")

    def __init__(self, out: bytes, expect: bytes):
        super().__init__(out)
        self.expect, self.have = expect, b""

    def feed(self, data: bytes) -> int:
        self.out = b""
        self.have += data
        n = min(len(self.have), len(self.expect))
        if self.have[:n] != self.expect[:n]:
            self.words = f"answered {self.have[:40]!r}, not {self.expect[:40]!r}"
            return REFUSED
        return VERIFIED if n == len(self.expect) else NEED


class Tcp(Protocol):
    name = "tcp"

    def __init__(self, send: Optional[bytes], expect: Optional[bytes]):
        self.send, self.expect = send or b"", expect

    def opening(self) -> Exchange:
        return Expect(self.send, self.expect) if self.expect else Silent(self.send)

    def checking(self) -> Optional[Exchange]:
        # Nothing sent: the check is passive (still open, no EOF or reset).
        return self.opening() if self.send else None


def _build(target, options) -> Tcp:
    # Imported here: the package imports this module to read its SCHEME.
    from . import unescape

    send, expect = options["send"], options["expect"]
    return Tcp(None if send is None else unescape(send), None if expect is None else unescape(expect))


SCHEME = Scheme(
    name="tcp", order=1, usage="tcp://HOST:PORT",
    does="connect and hold; with `--send TEXT` sends it once connected, with `--expect TEXT` the answer "
         "must start with it (escapes like `\\r\\n`)",
    second="`--send` again and `--expect`; with nothing to send, still open",
    build=_build,
    options=(Option("send", "--send", "TEXT", "send TEXT once connected and again for the second check "
                                               "(escapes like \\r\\n)."),
             # --serve's --expect N too: the CLI declares the flag, this says tcp:// takes it.
             Option("expect", "--expect", "N|TEXT", "the answer's first bytes (TEXT, escapes like \\r\\n).",
                    shared=True)))
