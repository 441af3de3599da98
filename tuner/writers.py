"""Read and write one setting of each kind; undo is a write of the original value.

Every kind has `read(kind, netns, detail)` and `write(kind, netns, detail, value)` over
the same value representation the journal stores (sysctl text, rlimit int, alias bool,
file text or None), so applying, rolling back and reverting are the same operation
with different values.  `write` reads back and compares with the same normalisation
`read` applies, and raises WriteError (knob and reason) when the kernel refused the
value or kept another one.
"""
from __future__ import annotations

import contextlib
import errno
import os
import resource
import tempfile
from typing import Any, Dict, Optional

from .errors import TunerError
from .readings import in_netns, netns_exists, read_sysctl, sysctl_path


class WriteError(TunerError):
    """A write the kernel (or filesystem) refused; the message names the reason."""


class Gone(Exception):
    """The thing a setting belonged to no longer exists (process exited, netns deleted);
    nothing is left to restore."""


RLIMITS = {"RLIMIT_NOFILE": resource.RLIMIT_NOFILE}


def _reason(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, "error")
    return f"{name}: {e.strerror}" if e.strerror else name


def _check_netns(netns: Optional[str]) -> None:
    if netns is not None and not netns_exists(netns):
        raise Gone(f"network namespace {netns} no longer exists")


# ---------------------------------------------------------------- sysctl

def _sysctl_read(netns, detail) -> Optional[str]:
    _check_netns(netns)
    with in_netns(netns):
        return read_sysctl(detail["name"])


def _sysctl_write(netns, detail, value: str) -> None:
    _check_netns(netns)
    with in_netns(netns):
        # os.write, not a buffered file: the kernel's EINVAL must reach us from the write
        # itself, not get lost in a close() during garbage collection.
        fd = os.open(sysctl_path(detail["name"]), os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)


# ---------------------------------------------------------------- rlimit

def _process(detail):
    import psutil

    try:
        proc = psutil.Process(detail["pid"])
        # A reused pid is another process: its limits are not ours to restore.
        if abs(proc.create_time() - detail["create_time"]) > 0.01:
            raise Gone(f"process {detail['pid']} has exited")
    except psutil.NoSuchProcess:
        raise Gone(f"process {detail['pid']} has exited") from None
    return proc


def _rlimit_read(netns, detail) -> int:
    import psutil

    try:
        soft, hard = _process(detail).rlimit(RLIMITS[detail["resource"]])
    except psutil.NoSuchProcess:
        raise Gone(f"process {detail['pid']} has exited") from None
    return soft if detail["which"] == "soft" else hard


def _rlimit_write(netns, detail, value: int) -> None:
    import psutil

    proc = _process(detail)
    res = RLIMITS[detail["resource"]]
    try:
        soft, hard = proc.rlimit(res)
        # Lowering the hard limit below the soft one drags the soft one down with it.
        new = (value, hard) if detail["which"] == "soft" else (min(soft, value), value)
        proc.rlimit(res, new)
    except psutil.NoSuchProcess:
        raise Gone(f"process {detail['pid']} has exited") from None
    except psutil.AccessDenied:
        raise WriteError(f"EPERM: a hard limit can go no higher than fs.nr_open "
                         f"({read_sysctl('fs.nr_open')}) and goes up only with "
                         f"CAP_SYS_RESOURCE (otherwise: LimitNOFILE= in the unit, nofile in "
                         f"/etc/security/limits.d/, or shard across processes)") from None


# ---------------------------------------------------------------- alias

def _link_index(ipr, dev: str) -> Optional[int]:
    found = ipr.link_lookup(ifname=dev)
    return found[0] if found else None


def _alias_read(netns, detail) -> bool:
    from pyroute2 import IPRoute

    _check_netns(netns)
    with in_netns(netns), IPRoute() as ipr:
        index = _link_index(ipr, detail["dev"])
        if index is None:
            return False  # the device is gone, and its addresses with it
        return any((a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")) == detail["address"]
                   and a["prefixlen"] == detail["prefixlen"]
                   for a in ipr.get_addr(index=index))


def _alias_write(netns, detail, present: bool) -> None:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    _check_netns(netns)
    with in_netns(netns), IPRoute() as ipr:
        index = _link_index(ipr, detail["dev"])
        if index is None:
            if not present:
                return
            raise WriteError(f"device {detail['dev']} does not exist")
        try:
            ipr.addr("add" if present else "del", index=index, address=detail["address"],
                     prefixlen=detail["prefixlen"])
        except NetlinkError as e:
            raise WriteError(f"{errno.errorcode.get(e.code, e.code)}: {e.args[-1]}") from None


# ---------------------------------------------------------------- file

def _file_read(netns, detail) -> Optional[str]:
    try:
        with open(detail["path"]) as f:
            return f.read()
    except FileNotFoundError:
        return None


def missing_dirs(path: str):
    """Parent directories of `path` that do not exist yet, deepest last."""
    out = []
    d = os.path.dirname(path)
    while d and d != "/" and not os.path.isdir(d):
        out.append(d)
        d = os.path.dirname(d)
    return list(reversed(out))


def _file_write(netns, detail, content: Optional[str]) -> None:
    path = detail["path"]
    if content is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        # Directories tuner created for this file (a drop-in's NAME.service.d) go too.
        for d in reversed(detail.get("created_dirs", [])):
            with contextlib.suppress(OSError):
                os.rmdir(d)  # only when empty: someone else's files keep it
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tuner-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------- dispatch

_READ = {"sysctl": _sysctl_read, "rlimit": _rlimit_read, "alias": _alias_read, "file": _file_read}
_WRITE = {"sysctl": _sysctl_write, "rlimit": _rlimit_write, "alias": _alias_write,
          "file": _file_write}


def normalise(kind: str, value: Any) -> Any:
    if kind == "sysctl" and value is not None:
        return " ".join(str(value).split())
    return value


def same(kind: str, a: Any, b: Any) -> bool:
    return normalise(kind, a) == normalise(kind, b)


def read(kind: str, netns: Optional[str], detail: Dict[str, Any]) -> Any:
    """Current value; raises Gone when its process or namespace no longer exists."""
    return normalise(kind, _READ[kind](netns, detail))


def write(kind: str, netns: Optional[str], detail: Dict[str, Any], value: Any) -> None:
    """Write and verify; WriteError names the reason, Gone when there is nothing to write to."""
    try:
        _WRITE[kind](netns, detail, value)
    except OSError as e:
        raise WriteError(_reason(e)) from None
    got = read(kind, netns, detail)
    if not same(kind, got, value):
        raise WriteError(f"wrote {value!r} but it reads back as {got!r}")
