"""Go programs: no connection cap of their own; since Go 1.19 the soft RLIMIT_NOFILE is
raised to the hard limit at start.

A Go binary is recognised by its build information (the `.go.buildinfo` ELF section,
which carries the Go version since Go 1.18), read from the file the process runs
(/proc/PID/exe, the mapped file itself, if its user could read it), never executed.  Package os raises the soft
descriptor limit to the hard one when the program starts (Go 1.19+), so soft = hard is
what a Go server runs with, and raising the soft limit from outside gains nothing: the
hard limit (LimitNOFILE= of its unit) is the one to raise, with a restart.
"""
from __future__ import annotations

import os
import re
import struct
from typing import BinaryIO, Optional, Tuple

from tuner.host import procpid, trust
from . import base
from .base import AppCap, ProcView

MAGIC = b"\xff Go buildinf:"
SECTION = b".go.buildinfo"
RAISES_SINCE = (1, 19)
MAX_SECTIONS = 4096
VERSION = re.compile(r"^go(\d+)\.(\d+)")


def _sections(f: BinaryIO) -> Optional[Tuple[str, list]]:
    """(byte order, [(name offset, file offset, size)]) of an ELF file, None if not ELF."""
    ident = f.read(64)
    if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        return None
    end = "<" if ident[5] == 1 else ">"
    if ident[4] == 2:
        shoff, = struct.unpack_from(end + "Q", ident, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", ident, 0x3A)
        layout, fields = end + "IIQQQQ", (0, 4, 5)
    else:
        shoff, = struct.unpack_from(end + "I", ident, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", ident, 0x2E)
        layout, fields = end + "IIIIII", (0, 4, 5)
    if not 0 < shnum <= MAX_SECTIONS or shentsize < struct.calcsize(layout) or shstrndx >= shnum:
        return None
    f.seek(shoff)
    table = f.read(shentsize * shnum)
    out = []
    for i in range(shnum):
        if (i + 1) * shentsize > len(table):
            return None
        row = struct.unpack_from(layout, table, i * shentsize)
        out.append(tuple(row[k] for k in fields))
    return end, [out[shstrndx]] + out          # the section names' table first


def _varint(data: bytes, at: int) -> Tuple[int, int]:
    value = shift = 0
    while at < len(data) and shift < 35:
        b = data[at]
        value |= (b & 0x7F) << shift
        at += 1
        if not b & 0x80:
            break
        shift += 7
    return value, at


def build_version(f: BinaryIO) -> Optional[str]:
    """The Go version in an ELF file's build information ("go1.21.5"), "go" when it is a
    Go binary of before 1.18 (no inline version), None when it is no Go binary."""
    found = _sections(f)
    if found is None:
        return None
    _, (strtab, *sections) = found
    f.seek(strtab[1])
    names = f.read(min(strtab[2], 1 << 16))
    for name_at, offset, size in sections:
        if names[name_at:name_at + len(SECTION) + 1] != SECTION + b"\0":
            continue
        f.seek(offset)
        head = f.read(min(size, 512))
        if not head.startswith(MAGIC) or len(head) < 32:
            return None
        if not head[15] & 2:
            return "go"
        n, at = _varint(head, 32)
        return head[at:at + n].decode("ascii", "replace") if n else "go"
    return None


def version_of(proc: ProcView) -> Optional[str]:
    """The build information of the file the process runs, read only if its own user
    could read that file (a program may run a binary its user may execute, not read)."""
    try:
        fd = os.open(f"/proc/{proc.pid}/exe", os.O_PATH | os.O_CLOEXEC)
        try:
            rfd = trust.reopen(fd, os.fstat(fd), base.creds_of(proc))
        finally:
            os.close(fd)
        with os.fdopen(rfd, "rb") as f:
            return build_version(f)
    except (OSError, trust.Unreadable, struct.error, ValueError, IndexError):
        return None                   # unreadable, or an ELF file that does not parse


def raises_limit(version: str) -> Optional[bool]:
    m = VERSION.match(version)
    return None if not m else (int(m.group(1)), int(m.group(2))) >= RAISES_SINCE


def read_version(proc: ProcView, version: str) -> AppCap:
    soft, hard = proc.nofile_soft, proc.nofile_hard
    cap = AppCap("go", f"{version}: no connection cap of its own", None,
                 f"build information of {proc.exe_name or 'the executable'} (pid {proc.pid})",
                 base.DEFAULT, "Go's net package caps no connections; a program may (a semaphore, "
                 "netutil.LimitListener): tell tuner with --app-limit N")
    raises = raises_limit(version)
    if raises and soft == hard:
        cap.notes.append(f"pid {proc.pid} ({version}): Go raises its soft RLIMIT_NOFILE to the hard "
                         f"limit at start (Go 1.19+), so soft = hard = {hard or 0:,}: only a higher hard "
                         f"limit (LimitNOFILE= and a restart) gives it more descriptors")
    elif raises:
        cap.notes.append(f"pid {proc.pid} ({version}): Go raises its soft RLIMIT_NOFILE to the hard limit "
                         f"at start (Go 1.19+), yet soft {soft or 0:,} < hard {hard or 0:,}: the limit "
                         f"was lowered after it started, or the program does not use package os")
    elif raises is False:
        cap.notes.append(f"pid {proc.pid} ({version}): before Go 1.19 a program keeps the soft "
                         f"RLIMIT_NOFILE it was started with ({soft or 0:,})")
    return cap


GO_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, "": 1}


def go_size(text: str) -> Optional[int]:
    """'512MiB' -> 536870912, as the Go runtime reads GOMEMLIMIT; None for 'off' or junk."""
    number = text.rstrip("BKMGTi")
    unit = text[len(number):]
    if not number.isdigit() or unit not in GO_UNITS:
        return None
    return int(number) * GO_UNITS[unit]


def memory_cap(proc: ProcView) -> Optional[base.MemoryCap]:
    """GOMEMLIMIT: a soft limit (the garbage collector works harder to stay under it,
    nothing fails there); None when unset or off."""
    try:
        value = procpid.environ(proc.pid, ("GOMEMLIMIT",)).get("GOMEMLIMIT")
    except OSError:
        return None
    size = go_size(value) if value else None
    if size is None:
        return None
    return base.MemoryCap(size, f"GOMEMLIMIT={value} (environment)", base.SOFT, base.READ, 0,
                          "a soft limit: past it the garbage collector runs harder, the process "
                          "is not stopped")


class Go(base.Adapter):
    name = "go"

    def recognise(self, proc: ProcView) -> bool:
        return version_of(proc) is not None

    def read(self, proc: ProcView) -> AppCap:
        return read_version(proc, version_of(proc) or "go")

    def memory_cap(self, proc: ProcView) -> Optional[base.MemoryCap]:
        return memory_cap(proc)


ADAPTER = Go()
