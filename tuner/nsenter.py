"""Entering a network namespace by descriptor, and coming back.

/proc/sys/net, /proc/net and new netlink sockets resolve against the caller's network
namespace when they are opened, so switching this (single-threaded) process in and back
is all report, apply and diagnose need.  setns(2) directly (os.setns from Python 3.12,
libc before): pyroute2's pushns/popns do the same but cost its package import (a third
of a second, most of a `tuner diagnose`).  A descriptor, never a name: given a name,
pyroute2 creates a namespace that does not exist, and entering must never create one.
"""
from __future__ import annotations

import contextlib
import errno
import os
from typing import Iterator

from .errors import PermissionNeeded

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):
        os.setns(fd, CLONE_NEWNET)
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(fd: int, what: str) -> Iterator[None]:
    """Run the body inside the network namespace open at `fd` (the caller keeps and
    closes it; `what` names it in the error). The way back is opened first, so a failed
    entry changes nothing and the body's end (an exception included) always returns."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(fd)
        except OSError as e:
            if e.errno == errno.EPERM:
                raise PermissionNeeded(f"entering {what} needs root: run tuner as root") from None
            raise
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)
