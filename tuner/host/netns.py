"""Network namespaces, in one home: where `ip netns` names them, listing and checking a
name, and entering one (by name, or by a descriptor a caller opened: a process's
/proc/PID/ns/net) and coming back.

/proc/sys/net, /proc/net and new netlink sockets resolve against the caller's network
namespace when they are opened, so switching this (single-threaded) process in and back
is all report, apply and diagnose need.  setns(2) directly (os.setns from Python 3.12,
libc before): pyroute2's pushns/popns do the same but cost its package import (a third
of a second, most of a `tuner diagnose`).  Entered by descriptor, never by a name given
to pyroute2: given a name, pyroute2 creates a namespace that does not exist (and
resolves one containing '/' against the working directory), and reading must never
create one.  Standard library and tuner.host.errors only (the bottom layer).
"""
from __future__ import annotations

import contextlib
import errno
import os
from typing import Iterator, List, Optional

from tuner.host.errors import PermissionNeeded, UsageError

# Where `ip netns add` binds named network namespaces (iproute2's NETNS_RUN_DIR).
RUN_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000


def names() -> List[str]:
    """The names `ip netns list` shows: entries of RUN_DIR. Only listed, never created
    (a host with no named namespace has no such directory)."""
    try:
        return sorted(os.listdir(RUN_DIR))
    except (FileNotFoundError, NotADirectoryError):
        return []


def exists(name: str) -> bool:
    return name in names()


def check_syntax(name: Optional[str], option: str = "--netns") -> Optional[str]:
    """A namespace name is a name, not a path (checked as the option is parsed, and on
    what a journal entry names).

    pyroute2 resolves a name containing '/' against the working directory and creates a
    missing namespace there, so '../../tmp/bait' given to a read-only report would
    create a namespace and bind mounts."""
    if name is not None and (name in ("", ".", "..") or "/" in name or "\0" in name):
        raise UsageError(f"{option} {name!r} is not a namespace name: give a name as "
                         f"'ip netns list' shows it, not a path")
    return name


def check_name(name: Optional[str], option: str = "--netns") -> Optional[str]:
    """A name `ip netns list` shows: checked before any namespace call."""
    if name is None:
        return None
    check_syntax(name, option)
    if not exists(name):
        raise UsageError(f"no network namespace named {name!r}: list them with 'ip netns list'")
    return name


def own_inode() -> int:
    """Inode of this process's network namespace (equal inodes: the same namespace)."""
    return os.stat("/proc/self/ns/net").st_ino


def name_of(inode: int) -> Optional[str]:
    """The `ip netns` name whose bind mount is namespace `inode` (None: our own; "?": a
    namespace without a name, a container's: found, but not by name)."""
    if inode == own_inode():
        return None
    try:
        listed = sorted(os.listdir(RUN_DIR))
    except OSError:
        return None
    for name in listed:
        try:
            if os.stat(os.path.join(RUN_DIR, name)).st_ino == inode:
                return name
        except OSError:
            continue
    return "?"


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):
        os.setns(fd, CLONE_NEWNET)
        return
    import ctypes  # Python < 3.12 only: libc's setns

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


@contextlib.contextmanager
def in_netns(name: Optional[str]) -> Iterator[None]:
    """Run the body inside network namespace `name` (None: stay where we are), the name
    checked first and its bind mount opened without following a link."""
    if name is None:
        yield
        return
    check_name(name)
    fd = os.open(os.path.join(RUN_DIR, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with entered(fd, f"network namespace {name!r}"):
            yield
    finally:
        os.close(fd)
