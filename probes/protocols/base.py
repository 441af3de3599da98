"""What every protocol of probes/protocols/ shares: the verdicts, the Exchange and
Protocol interfaces, the Target a --connect URL names and its error.  Here, apart from
the package's parse_target and make (which imports each protocol's module), so the
protocols import these without importing the package that imports them.  Stdlib only:
the probe's workers import it.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

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


class Connection:
    """A transport's state for one connection, kept from connect to close (the hold
    included) by the worker, beside the descriptor.  `wrap(exchange)` returns the
    exchange as the socket sees it: its `out` is what goes on the wire, its `feed` takes
    what came off the wire (a TLS connection: ciphertext both ways, the handshake first,
    and `words` says why the transport refused)."""

    __slots__ = ()

    def wrap(self, exchange: Exchange) -> Exchange:
        raise NotImplementedError


class Transport:
    """How a connection's bytes reach the socket.  Plain: as they are, and nothing kept
    per connection (`connection()` is None, so a held connection costs its descriptor
    and one state byte).  A transport that keeps state per connection (TLS) returns a
    Connection there; the worker keeps it until the connection closes and wraps every
    exchange of that connection (the opening one and each check) in it."""

    name = "plain"
    per_connection = False    # True: connection() returns a Connection to keep
    in_flight: Optional[int] = None   # connections a worker opens at once and not yet verified (None: any)

    def connection(self) -> Optional[Connection]:
        return None


PLAIN = Transport()


class Protocol:
    name = ""
    server_first = False      # the server speaks first (tuner's exchange)
    counts_mismatches = False  # a refusal at open is a wrong echo, counted as a mismatch
    transport: Transport = PLAIN

    def opening(self) -> Exchange:
        raise NotImplementedError

    def checking(self) -> Optional[Exchange]:
        return None

    def pinging(self) -> Optional[Exchange]:
        """One round of the exchange on a held connection, timed for its latency
        (--ping-every, --step); None: the protocol has none (a connect-and-hold with nothing to send)."""
        return self.checking()


@dataclass(frozen=True)
class Option:
    """A `tuner probe --connect` option a protocol owns: its keyword (make()'s, the
    connect settings' key), its flag, the metavar and the help's words after 'With
    --connect SCHEME://'.  `repeatable`: a list (default empty); `shared`: the flag is
    also another mode's (--expect: --serve's N), so the CLI declares it once and this
    entry only says which schemes take it."""

    name: str
    flag: str
    metavar: str
    help: str
    default: object = None
    repeatable: bool = False
    shared: bool = False
    kind: type = str          # what the value is (the CLI parses it as this)
    bounds: Optional[Tuple[int, int]] = None   # a number's range (the CLI refuses others)
    unit: str = ""            # a number's unit, for the CLI's refusal: 'of seconds'
    secret: bool = False      # a credential: Ansible's no_log, so no log or result shows it
    # A FILE holding the value of the option so named (a secret's: --password-file for
    # --password), read once where the probe is configured, as tuner reads its own
    # files (tuner.host.trust.read_secret), so the secret is in no command line.
    file_of: str = ""

    def given(self, value) -> bool:
        """Whether a value differs from the default (an option given to a scheme)."""
        return bool(value) if self.repeatable else value is not None and value != self.default


@dataclass(frozen=True)
class Scheme:
    """What a protocol module declares (its SCHEME, or SCHEMES for several), read by the
    registry (probes/protocols/__init__.py) and everything generated from it: the URL's
    parsing, the options it owns, the CLI's checks and help, the man page's table,
    docs/probe-services.md's table and the JSON schema's enum.

    build(target, options) -> Protocol, options being {Option.name: value} of this
    scheme's options.  `order`: where it appears in every list (tuner's own first)."""

    name: str
    order: int
    usage: str                # the URL's form: 'SCHEME://HOST[:PORT]/PATH'
    does: str                 # what a connection does (docs' table, markdown)
    second: str               # the second check (docs' table, markdown)
    build: Callable[["Target", dict], "Protocol"]
    default_port: Optional[int] = None
    takes_path: bool = False
    options: Tuple[Option, ...] = ()
    aliases: Tuple[str, ...] = ()   # other URL forms (tuner's HOST:PORT), for the lists
    peer: str = ""            # the tuner command that serves it, when one does


@dataclass(frozen=True)
class Target:
    scheme: str               # a registered Scheme's name
    host: str                 # an address (resolved)
    port: int
    family: int               # socket.AF_INET or AF_INET6
    path: str = "/"
    host_header: str = ""     # HOST[:PORT] as given, for HTTP's Host header

    @property
    def endpoint(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family == socket.AF_INET6 else f"{self.host}:{self.port}"
