"""The libc socket calls the probe workers make on plain integers, and how a client
socket is bound to its source address.

Workers keep no socket objects: descriptors are ints in arrays, and the hot loops call
libc through ctypes.  What they share lives here, so no worker imports another's
internals: socket addresses of either family, and the options every client socket gets
before bind()/connect() (`client_options`):

- IP_BIND_ADDRESS_NO_PORT: bind(source, 0) takes the address now and leaves the port to
  connect(), which picks it per (source, destination), so one source reaches many
  servers without a port search at bind();
- IP_FREEBIND for IPv6 AnyIP sources: a local route (`ip -6 route add local PREFIX dev
  lo`) makes the kernel accept packets to every address of PREFIX, but IPv6 bind() only
  accepts addresses configured on an interface, unless IPv6 ip_nonlocal_bind is on
  or the socket carries IP_FREEBIND.  (IPv4's bind() accepts what a local route covers.)
- IP_LOCAL_PORT_RANGE (Linux 6.3+), set to the namespace's own range: a socket with a
  range of its own makes connect() search ports one by one from where the last search
  ended, instead of all even ports first and the odd ones only once every even port is
  taken -- the search that slows connect() about 30-fold past half of a range
  (docs/anyip.md has the figures).  Older kernels refuse it (ENOPROTOOPT) and the
  probes keep the old share of each range (probes.config.port_share).
"""
from __future__ import annotations

import ctypes
import socket
import struct
from typing import Iterable, List, Tuple

from .kernel import IP_LOCAL_PORT_RANGE, own_port_range

SOCK_FLAGS = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
IP_FREEBIND = 15               # bind an address the kernel does not (yet) call local
IP_BIND_ADDRESS_NO_PORT = 24   # bind the address now, the port at connect(): no port search at bind
LINGER_0 = struct.pack("ii", 1, 0)

libc = ctypes.CDLL(None, use_errno=True)

# (level, option, value buffer, length) for libc.setsockopt.
Option = Tuple[int, int, object, int]


def family_of(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def sockaddr(ip: str, port: int):
    """A struct sockaddr_in or sockaddr_in6 for libc.bind/connect (pass len() of it)."""
    if family_of(ip) == socket.AF_INET6:
        raw = (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0)
               + socket.inet_pton(socket.AF_INET6, ip) + struct.pack("=I", 0))
    else:
        raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(ip) + bytes(8)
    return ctypes.create_string_buffer(raw, len(raw))


def _int_option(level: int, name: int, value: int) -> Option:
    return (level, name, ctypes.byref(ctypes.c_uint32(value)), 4)


def client_options(port_range: Tuple[int, int], bind: bool, freebind: bool) -> List[Option]:
    """The setsockopt calls a client socket gets before bind()/connect() (see above)."""
    out = []
    if bind:
        out.append(_int_option(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1))
    if freebind:
        out.append(_int_option(socket.SOL_IP, IP_FREEBIND, 1))
    if own_port_range():
        low, high = port_range
        out.append(_int_option(socket.SOL_IP, IP_LOCAL_PORT_RANGE, low | high << 16))
    return out


def reset_on_close(fds: Iterable[int]) -> None:
    """SO_LINGER 0 on every fd: closing it (process exit closes them all) sends a reset
    instead of a FIN, so neither end lingers in TIME_WAIT and a million-connection run
    leaves no sockets behind for a minute.  Closing them one by one in Python would only
    add interpreter time."""
    linger = ctypes.create_string_buffer(LINGER_0, 8)
    setsockopt = libc.setsockopt
    for fd in fds:
        setsockopt(fd, socket.SOL_SOCKET, socket.SO_LINGER, linger, 8)


def socket_error(fd: int) -> int:
    """SO_ERROR of fd (a non-blocking connect's outcome): 0 when it connected."""
    value, size = ctypes.c_int(0), ctypes.c_uint(4)
    libc.getsockopt(fd, socket.SOL_SOCKET, socket.SO_ERROR, ctypes.byref(value), ctypes.byref(size))
    return value.value
