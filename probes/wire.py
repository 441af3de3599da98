"""The wire exchange of the split probe (`--serve` / `--connect`), and address helpers.

Trivial on purpose, so any TCP client can take part (a load generator, a shell):

    1. the client connects to the server's ADDR:PORT;
    2. the server sends 4 bytes: this connection's index, an unsigned 32-bit
       big-endian number unique within the server's run;
    3. the client sends the same 4 bytes back;
    4. the server answers 1 byte: 0x06 (ACK) when the echo matched -- the connection
       is verified, and both sides now hold it open, sending nothing more -- or 0x15
       (NAK) when it did not, and closes;
    5. while both hold, the client may send 0x05 (ENQ) at any time and the server
       answers each with 0x06 (ACK): one timed round trip on a held connection
       (`tuner probe --connect --ping-every`, `--step`).  Nothing else is read.

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
from typing import Optional, Tuple

INDEX = struct.Struct("!I")
ACK = b"\x06"
NAK = b"\x15"
ENQ = b"\x05"

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
    """'10.0.0.1:9000' -> ('10.0.0.1', 9000), '[fd00:77::1]:9000' -> ('fd00:77::1', 9000);
    host names resolve (IPv4), ':9000' listens on every IPv4 address, '[::]:9000' on
    every address."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise EndpointError(f"{text!r} is not ADDR:PORT with a port in 1..65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1])), int(port)
        except ValueError:
            raise EndpointError(f"{host!r} is not an IPv6 address") from None
    if ":" in host:
        raise EndpointError(f"{text!r}: write an IPv6 address in brackets, [{host}]:{port}")
    if not host:
        if not listen:
            raise EndpointError(f"{text!r} names no host to connect to")
        host = "0.0.0.0"
    try:
        addr = socket.gethostbyname(host)
    except OSError as exc:
        raise EndpointError(f"cannot resolve {host!r}: {exc}") from None
    return addr, int(port)


def endpoint_text(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


_V6_KEY = 1 << 128     # set on an IPv6 peer's key, so ::a.b.c.d and a.b.c.d stay apart
_V4_MAPPED = 0xFFFF << 32


def peer_key(raw: bytes) -> int:
    """A client's address from the sockaddr accept() filled in, as one int: IPv4 as its
    32-bit value (also when it came v4-mapped to an IPv6 listener), IPv6 with _V6_KEY set."""
    if struct.unpack_from("=H", raw)[0] == socket.AF_INET6:
        value = int.from_bytes(raw[8:24], "big")
        return value - _V4_MAPPED if value >> 32 == 0xFFFF else value | _V6_KEY
    return int.from_bytes(raw[4:8], "big")


def peer_text(key: int) -> str:
    if key & _V6_KEY:
        return str(ipaddress.IPv6Address(key ^ _V6_KEY))
    return str(ipaddress.IPv4Address(key))


def ip_int(addr: Optional[str]) -> int:
    """peer_text's inverse, for sorting addresses of either family."""
    if not addr:
        return 0
    ip = ipaddress.ip_address(addr)
    return int(ip) | (_V6_KEY if ip.version == 6 else 0)


def listener(addr: str, port: int, reuseport: bool = False) -> socket.socket:
    """A nonblocking listening socket on addr:port (closed again if any step fails).

    reuseport: several workers' listeners share one ADDR:PORT and the kernel spreads
    connections over them (the --serve side)."""
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
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
