"""The protocols `--connect URL` speaks: one small module per protocol, each a
non-blocking, sans-IO state machine the protocol-agnostic worker drives.

    tuner://HOST:PORT, HOST:PORT   tuner's own exchange (probes.wire), the server speaks first
    tcp://HOST:PORT                connect and hold; --send TEXT / --expect TEXT: a line protocol
    http://HOST[:PORT]/PATH        HTTP/1.1 keep-alive requests (2xx/3xx serve, others refuse)
    ws://HOST[:PORT]/PATH          a WebSocket (RFC 6455), ping/pong the second time
    redis://HOST[:PORT]            PING -> +PONG

A connection's exchange is an `Exchange`: `out` holds the bytes to write now (the
request when it is made, a reply after `feed`), and `feed(data)` says NEED (more bytes),
VERIFIED, or REFUSED with the server's own words in `words`.  The worker reads, feeds,
writes `out`, and drops the exchange once it is decided: a held connection keeps its
descriptor and a state byte, nothing of the parser.  `Protocol.opening()` is the first
exchange, `Protocol.checking()` the second at the end of the hold (None: the check is
that the connection is still open, with no EOF or reset).

Only the stdlib is imported here: the probe's workers import this module.
"""
from __future__ import annotations

import codecs
import ipaddress
import socket
from typing import Optional, Tuple

from .base import NEED, READ_SIZE, REFUSED, VERIFIED, Exchange, Protocol, Target, TargetError

__all__ = ["NEED", "READ_SIZE", "REFUSED", "VERIFIED", "Exchange", "Protocol", "Target", "TargetError",
           "DEFAULT_PORTS", "SCHEMES", "parse_target", "unescape", "make"]


DEFAULT_PORTS = {"http": 80, "ws": 80, "redis": 6379}
SCHEMES = ("tuner", "tcp", "http", "ws", "redis")


def parse_target(text: str) -> Target:
    """'http://[::1]:8080/x' -> Target; 'HOST:PORT' is tuner://HOST:PORT.  Host names
    resolve to their first address (IPv4 or IPv6)."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "tuner", text
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise TargetError(f"{text!r}: unknown scheme {scheme!r} (one of {', '.join(s + '://' for s in SCHEMES)})")
    hostport, slash, path = rest.partition("/")
    if slash and scheme in ("tuner", "tcp", "redis") and path:
        raise TargetError(f"{text!r}: {scheme}:// takes no path")
    host, port = _split_hostport(text, hostport, DEFAULT_PORTS.get(scheme))
    family, address = _resolve(text, host)
    return Target(scheme, address, port, family, "/" + path, hostport)


def _split_hostport(text: str, hostport: str, default: Optional[int]) -> Tuple[str, int]:
    if hostport.startswith("["):
        host, bracket, tail = hostport[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise TargetError(f"{text!r}: an IPv6 address is written [ADDR]:PORT")
        port_text = tail[1:] if tail else ""
    else:
        host, colon, port_text = hostport.rpartition(":")
        if not colon:
            host, port_text = hostport, ""
        elif ":" in host:
            raise TargetError(f"{text!r}: an IPv6 address is written [ADDR]:PORT")
    if not host:
        raise TargetError(f"{text!r} names no host to connect to")
    if not port_text:
        if default is None:
            raise TargetError(f"{text!r} is not HOST:PORT with a port in 1..65535")
        return host, default
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise TargetError(f"{text!r} is not HOST:PORT with a port in 1..65535")
    return host, int(port_text)


def _resolve(text: str, host: str) -> Tuple[int, str]:
    try:
        ip = ipaddress.ip_address(host)
        return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), str(ip)
    except ValueError:
        pass
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as exc:
        raise TargetError(f"{text!r}: cannot resolve {host!r}: {exc}") from None
    return family, addr[0]


def unescape(text: str) -> bytes:
    r"""--send / --expect text with C-like escapes (\r \n \t \\ \xHH) -> bytes."""
    try:
        return codecs.escape_decode(text.encode("utf-8"))[0]
    except ValueError as exc:
        raise TargetError(f"{text!r}: {exc}") from None


def make(target: Target, send: Optional[str] = None, expect: Optional[str] = None,
         method: str = "GET", headers: Tuple[str, ...] = (), subprotocol: Optional[str] = None) -> Protocol:
    """The Protocol of a target with the options it takes; TargetError for an option
    its scheme does not take."""
    given = {"--send": send is not None, "--expect": expect is not None,
             "--method": method != "GET", "--header": bool(headers), "--subprotocol": subprotocol is not None}
    takes = {"tuner": (), "redis": (), "tcp": ("--send", "--expect"), "http": ("--method", "--header"),
             "ws": ("--header", "--subprotocol")}[target.scheme]
    wrong = [flag for flag, on in given.items() if on and flag not in takes]
    if wrong:
        raise TargetError(f"{', '.join(wrong)} do(es) not apply to {target.scheme}:// "
                          f"({'; '.join(f'{s}:// takes ' + (', '.join(t) or 'none') for s, t in _TAKES)})")
    if target.scheme == "tuner":
        from .tuner_wire import TunerWire
        return TunerWire()
    if target.scheme == "tcp":
        from .tcp import Tcp
        return Tcp(None if send is None else unescape(send), None if expect is None else unescape(expect))
    if target.scheme == "redis":
        from .redis import Redis
        return Redis()
    from .http import request_head
    head = request_head(method if target.scheme == "http" else "GET", target, headers)
    if target.scheme == "http":
        from .http import Http
        return Http(head, method.upper() == "HEAD")
    from .ws import WebSocket
    return WebSocket(head, subprotocol)


_TAKES = (("tcp", ("--send", "--expect")), ("http", ("--method", "--header")),
          ("ws", ("--header", "--subprotocol")))
