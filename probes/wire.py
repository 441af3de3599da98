"""The wire exchange of the split probe (`--serve` / `--connect`), and address helpers.

Trivial on purpose, so any TCP client can take part (a load generator, a shell):

    1. the client connects to the server's ADDR:PORT;
    2. the server sends 4 bytes: this connection's index, an unsigned 32-bit
       big-endian number unique within the server's run;
    3. the client sends the same 4 bytes back;
    4. the server answers 1 byte: 0x06 (ACK) when the echo matched -- the connection
       is verified, and both sides now hold it open, sending nothing more -- or 0x15
       (NAK) when it did not, and closes.

The server closes without answering when the echo does not complete within its
--echo-timeout (counted as no-echo when nothing came, short when part of it came),
when the client resets or closes first (reset / closed), and right after accept,
with a reset and before any byte, when --expect connections are already admitted
(accepted and verifying, or verified and held: over-expect).  A peer that closes a
verified connection is counted as dropped.  From a shell:

    exec 3<>/dev/tcp/HOST/PORT; head -c4 <&3 >&3; head -c1 <&3 | od -An -tx1   # 06
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from typing import List, Optional, Tuple

INDEX = struct.Struct("!I")
ACK = b"\x06"
NAK = b"\x15"

# How the server counts connections that did not verify (keys of its JSON result).
GARBAGE = "garbage"          # 4 bytes came back that were not the index
SHORT = "short"              # part of the echo came, then nothing until --echo-timeout
NO_ECHO = "no_echo"          # nothing came back before --echo-timeout
RESET = "reset"              # the client reset the connection before it verified
CLOSED = "closed"            # the client closed (FIN) before it verified
FAILURES = (GARBAGE, SHORT, NO_ECHO, RESET, CLOSED)


class EndpointError(ValueError):
    """An ADDR:PORT that cannot be used."""


def parse_endpoint(text: str, listen: bool = False) -> Tuple[str, int]:
    """'10.0.0.1:9000' -> ('10.0.0.1', 9000); host names resolve (IPv4), ':9000' listens
    on every address."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise EndpointError(f"{text!r} is not ADDR:PORT with a port in 1..65535")
    if not host:
        if not listen:
            raise EndpointError(f"{text!r} names no host to connect to")
        host = "0.0.0.0"
    try:
        addr = socket.gethostbyname(host)
    except OSError as exc:
        raise EndpointError(f"cannot resolve {host!r}: {exc}") from None
    return addr, int(port)


def local_sources(cidr: str, limit: int = 1 << 16) -> List[str]:
    """Local addresses inside cidr, in order (at most `limit`): the source addresses a
    client spreads over.  Addresses of cidr that are not local are left out, so a
    /24 with 17 aliases gives 17 sources, not 254 bind() failures.  Counted the way
    `tuner report` counts source addresses (tuner.localnet: interface addresses and
    local routes, AnyIP prefixes included)."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise EndpointError(f"--source-net: {exc}") from None
    if net.version != 4:
        raise EndpointError("--source-net must be an IPv4 network")
    from tuner import localnet

    nets = localnet.source_networks(localnet.read_addresses(), localnet.read_local_routes(),
                                    within=str(net))
    return localnet.source_addresses(nets, limit)


def peer_text(ip_int: int) -> str:
    return str(ipaddress.IPv4Address(ip_int))


def ip_int(addr: Optional[str]) -> int:
    return int(ipaddress.IPv4Address(addr)) if addr else 0


def listener(addr: str, port: int, reuseport: bool = False) -> socket.socket:
    """A nonblocking listening socket on addr:port (closed again if any step fails).

    reuseport: several workers' listeners share one ADDR:PORT and the kernel spreads
    connections over them (the --serve side)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((addr, port))
        s.listen(65535)  # the kernel caps it (somaxconn)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s
