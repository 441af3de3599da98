"""The protocols `--connect URL` speaks: one small module per protocol, each a
non-blocking, sans-IO state machine the protocol-agnostic worker drives, and each
declaring itself (its SCHEME: a base.Scheme with the URL's form, default port, whether
it takes a path, the options it owns with their help, how it builds its Protocol).
This package is their registry: every list of schemes or of their options (the CLI's
checks and help, the man page's and docs/probe-services.md's tables, the JSON schema's
enum) is read from it.  Adding a protocol is adding its module (and its test).

A connection's exchange is an `Exchange`: `out` holds the bytes to write now (the
request when it is made, a reply after `feed`), and `feed(data)` says NEED (more bytes),
VERIFIED, or REFUSED with the server's own words in `words`.  The worker reads, feeds,
writes `out`, and drops the exchange once it is decided: a held connection keeps its
descriptor and a state byte, nothing of the parser, and its transport's Connection only
when the transport keeps one (plain keeps none; TLS will).  `Protocol.opening()` is the
first exchange, `Protocol.checking()` the second at the end of the hold (None: the check
is that the connection is still open, with no EOF or reset).

Only the stdlib is imported here: the probe's workers import this module.
"""
from __future__ import annotations

import codecs
import importlib
import ipaddress
import pkgutil
import socket
from typing import Dict, List, Optional, Tuple

from .base import (NEED, PLAIN, READ_SIZE, REFUSED, VERIFIED, Connection, Exchange, Option, Protocol,
                   Scheme, Target, TargetError, Transport)

__all__ = ["NEED", "PLAIN", "READ_SIZE", "REFUSED", "VERIFIED", "Connection", "Exchange", "Option",
           "Protocol", "Scheme", "Target", "TargetError", "Transport",
           "schemes", "scheme", "options", "owners", "parse_target", "unescape", "read_files", "make"]

_REGISTRY: Dict[str, Scheme] = {}


def schemes() -> List[Scheme]:
    """Every registered scheme, in its declared order (the modules of this package that
    define SCHEME or SCHEMES; read on first use)."""
    if not _REGISTRY:
        found = []
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if info.name == "base":
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            declared = getattr(module, "SCHEMES", None) or (getattr(module, "SCHEME", None),)
            found += [s for s in declared if isinstance(s, Scheme)]
        _REGISTRY.update((s.name, s) for s in sorted(found, key=lambda s: (s.order, s.name)))
    return list(_REGISTRY.values())


def scheme(name: str) -> Optional[Scheme]:
    schemes()
    return _REGISTRY.get(name)


def options() -> List[Option]:
    """Every protocol option once (an option two schemes own, --header, is one), in the
    order of the schemes that own them."""
    seen: Dict[str, Option] = {}
    for s in schemes():
        for o in s.options:
            seen.setdefault(o.name, o)
    return list(seen.values())


def owners(option: Option) -> List[Scheme]:
    """The schemes that take an option."""
    return [s for s in schemes() if any(o.name == option.name for o in s.options)]


def bare() -> Scheme:
    """The scheme of a URL written HOST:PORT (tuner's own exchange)."""
    return next(s for s in schemes() if s.aliases)


def parse_target(text: str) -> Target:
    """'SCHEME://[::1]:8080/x' -> Target; 'HOST:PORT' is the bare scheme's (tuner's own
    exchange).  Host names resolve to their first address (IPv4 or IPv6)."""
    name, sep, rest = text.partition("://")
    if not sep:
        name, rest = bare().name, text
    spec = scheme(name.lower())
    if spec is None:
        raise TargetError(f"{text!r}: unknown scheme {name.lower()!r} "
                          f"(one of {', '.join(s.name + '://' for s in schemes())})")
    hostport, slash, path = rest.partition("/")
    if slash and not spec.takes_path and path:
        raise TargetError(f"{text!r}: {spec.name}:// takes no path")
    host, port = _split_hostport(text, hostport, spec.default_port)
    family, address = _resolve(text, host)
    return Target(spec.name, address, port, family, "/" + path, hostport)


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


def read_files(target: Target, given: dict) -> dict:
    """The options given, each of the target's scheme's that names a file (Option.file_of:
    --password-file) replaced by the file's text under the option it holds (--password):
    what the orchestrator is handed, so its workers read no file.  TargetError for a
    file tuner will not read, or for both forms given; an option another scheme owns is
    left for make() to refuse, unread."""
    out = dict(given)
    for o in scheme(target.scheme).options:
        if not o.file_of or not o.given(given.get(o.name, o.default)):
            continue
        held = next(h for h in options() if h.name == o.file_of)
        if held.given(given.get(held.name, held.default)):
            raise TargetError(f"{held.flag} and {o.flag} both given: give one ({o.flag} keeps it out of ps)")
        # Only a probe given a file reads one (workers never do): the trust layer loads then.
        from tuner.host import trust
        try:
            out[held.name] = trust.read_secret(str(out.pop(o.name)), o.flag)
        except trust.UntrustedFile as exc:
            raise TargetError(str(exc)) from None
    return out


def make(target: Target, **given) -> Protocol:
    """The Protocol of a target with the protocol options given ({Option.name: value},
    defaults left out or passed); TargetError for an option its scheme does not take."""
    known = {o.name: o for o in options()}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TargetError(f"unknown protocol option(s): {', '.join(unknown)}")
    spec = scheme(target.scheme)
    takes = {o.name for o in spec.options}
    wrong = [o.flag for o in known.values() if o.given(given.get(o.name, o.default)) and o.name not in takes]
    if wrong:
        raise TargetError(f"{', '.join(wrong)} do(es) not apply to {spec.name}:// "
                          f"({'; '.join(f'{s.name}:// takes ' + ', '.join(o.flag for o in s.options) for s in schemes() if s.options)})")
    return spec.build(target, {o.name: _value(o, given.get(o.name, o.default)) for o in spec.options})


def _value(option: Option, value):
    if option.repeatable:
        return tuple(value or ())
    return option.default if value is None else value
