"""The libc socket calls the three probe workers make on plain integers.

Workers keep no socket objects: descriptors are ints in arrays, and the hot loops call
libc through ctypes.  What they share lives here, so no worker imports another's
internals.
"""
from __future__ import annotations

import ctypes
import socket
import struct
from typing import Iterable

SOCK_FLAGS = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
IP_BIND_ADDRESS_NO_PORT = 24  # bind the address now, the port at connect(): no port search at bind
LINGER_0 = struct.pack("ii", 1, 0)

libc = ctypes.CDLL(None, use_errno=True)


def sockaddr(ip: str, port: int):
    """A struct sockaddr_in for libc.bind/connect."""
    raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(ip) + bytes(8)
    return ctypes.create_string_buffer(raw, len(raw))


def reset_on_close(fds: Iterable[int]) -> None:
    """SO_LINGER 0 on every fd: closing it (process exit closes them all) sends a reset
    instead of a FIN, so neither end lingers in TIME_WAIT and a million-connection run
    leaves no sockets behind for a minute.  Closing them one by one in Python would only
    add interpreter time."""
    linger = ctypes.create_string_buffer(LINGER_0, 8)
    setsockopt = libc.setsockopt
    for fd in fds:
        setsockopt(fd, socket.SOL_SOCKET, socket.SO_LINGER, linger, 8)
