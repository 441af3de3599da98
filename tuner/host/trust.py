"""The trust layer: what tuner, running as root, may open on someone else's behalf.

tuner runs as root and reads services that an unprivileged (maybe hostile) local user
may own: their config files, includes, include directories, data directory, sockets.
Everything here answers one question: would the service's own user have got this?
The rules, for every caller (tuner/apps/, the journal, the lock, metrics' --textfile):

1. Root reads only what the service's user could.  A file read on a service's behalf
   is opened as that service's credentials (fs uid, fs gid, supplementary groups,
   from /proc/PID/status) would be let through by the mode bits: root's DAC override
   does not apply unless the service itself holds it (CAP_DAC_OVERRIDE or
   CAP_DAC_READ_SEARCH in its CapEff).  A POSIX ACL on something the user does not own
   counts as "not readable" (its bits are not what the mode shows).
2. No check-then-open-by-name.  A path is walked from "/" one component at a time,
   each opened O_PATH | O_NOFOLLOW from the directory descriptor held before it, each
   directory checked for search permission; the last component is opened O_PATH from
   its held directory, fstat'ed (a regular file, not on a kernel pseudo-filesystem
   such as /proc or /sys, readable by the credentials), and only then reopened for
   reading through /proc/self/fd/N (O_RDONLY | O_NONBLOCK | O_NOCTTY): the inode
   checked is the inode read.  A device, FIFO, tty, socket, /proc/kmsg is never opened
   for reading.  A swap of any directory on the way during the walk changes nothing.
3. Links: a symlink is followed only when root owns it and the directory holding it
   (Debian's sites-enabled), at most LINK_HOPS of them; its target is read from the
   held descriptor and walked under the same rules.  Any other link is refused.
4. Who could have written it.  On top of readability, a caller names the `owners` it
   trusts to have written a file (root, plus the service's uid where its documentation
   has the service own its files): every directory on the way and the file must belong
   to one of them and be writable by nobody else (a sticky directory such as /tmp is
   passed when the entry under it is theirs); a file not owned by root has one link.
5. What the user could not read is described as the user would see it: "not readable
   by the service's user (uid N)" -- no size, no existence, no names listed, nothing
   of its content.  A file the user could read but that breaks rule 4 or is too big
   is named with its reason (the user could see that much).
6. Bounded work: one Budget per service read (files opened, bytes, includes followed,
   each file once by (st_dev, st_ino), a deadline).  Past it the caller says what it
   did not read.
7. A UNIX socket is connected through the O_PATH descriptor the walk ended on
   (/proc/self/fd/N), with write permission for the credentials, so its path cannot
   be swapped between check and connect.
8. tuner's own files (the journal, its lock, metrics' --textfile directory) follow the
   root-owned-file rule: owned by root or the invoking user, not group/world-writable,
   in a directory others cannot write to (sticky is fine), opened without following
   symlinks, never blocking on a FIFO, checked on the open descriptor.
9. Text a service chose (its comm, argv, exe path, config paths and values, what it
   answered on its socket, its Go build info) reaches a terminal only through
   `safe_text`, called at the edge by the renderers, never in each adapter: control
   characters (C0, DEL, C1, so every ESC sequence), format characters (bidi overrides
   and isolates, zero widths), line and paragraph separators and undecodable bytes
   shown escaped (`\\x1b`, `\\u202e`), a long string cut with a marker.  `--json`
   needs none of it: JSON escapes what it carries (ensure_ascii).
10. Parsers of what a service answers or configures are loops or depth-bounded: no
   recursion the service controls (Redis's RESP arrays, nginx's blocks).
11. A fix names a binary to run only when `trusted_binary` passes (root-owned, at a
   root-owned path) and root runs the process; otherwise it says "restart it as its
   owner (uid N) does".  Words from the service in a fix command are shlex-quoted; a
   systemd unit is named only when the system manager made it (not a name from a
   user's delegated cgroup subtree).

Stdlib only (ctypes for fstatfs); the bottom layer: imports nothing above tuner/host/.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shlex
import socket
import stat
import time
import unicodedata
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Set, Tuple

from tuner.host import procpid
from tuner.host.errors import EXIT_FAILED, TunerError

READ_MAX = 4 << 20         # one config file larger than this is not a config file
LINK_HOPS = 40             # as the kernel's MAXSYMLINKS
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
R, W, X = 4, 2, 1
ACL_XATTR = "system.posix_acl_access"
O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
O_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# Kernel filesystems whose "regular files" are interfaces, not files (statfs f_type):
# proc (/proc/kmsg drains the kernel log), sysfs, debugfs, tracefs, securityfs,
# configfs, cgroup, cgroup2, bpf, pstore, efivarfs, devpts, fusectl.
PSEUDO_FS = {0x9FA0, 0x62656572, 0x64626720, 0x74726163, 0x73636673, 0x62656570,
             0x27E0EB, 0x63677270, 0xCAFE4A11, 0x6165676C, 0xDE5E81E4, 0x1CD1, 0x65735543}


class Unreadable(Exception):
    """Not read on the service's behalf; str() is the reason, worded for the report."""


class OverBudget(Unreadable):
    """The service's read budget is spent: the rest is not read."""


# ---------------------------------------------------------------- credentials

@dataclass(frozen=True)
class Creds:
    """Whose eyes a read goes through: the service's filesystem uid and gids."""

    uid: int
    gid: int
    groups: Tuple[int, ...] = ()
    reads_all: bool = False     # CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH: reads and searches anything
    writes_all: bool = False    # CAP_DAC_OVERRIDE: may connect to any socket

    @classmethod
    def of_status(cls, status: dict) -> "Creds":
        """From /proc/PID/status as tuner.host.procpid.proc_status returns it: the
        filesystem ids (the 4th of Uid/Gid) are the ones the kernel checks files with."""
        uid = int((status.get("Uid") or "-1 -1 -1 -1").split()[-1])
        gid = int((status.get("Gid") or "-1 -1 -1 -1").split()[-1])
        groups = tuple(int(g) for g in (status.get("Groups") or "").split())
        caps = int(status.get("CapEff") or "0", 16)
        return cls(uid, gid, groups, bool(caps >> CAP_DAC_OVERRIDE & 1 or caps >> CAP_DAC_READ_SEARCH & 1),
                   bool(caps >> CAP_DAC_OVERRIDE & 1))

    @classmethod
    def of_pid(cls, pid: int) -> "Creds":
        return cls.of_status(procpid.proc_status(pid))

    def may(self, st: os.stat_result, want: int) -> bool:
        """Whether these credentials pass the mode bits of `st` for `want` (R, W, X)."""
        if self.reads_all and not want & W or self.writes_all:
            return True
        if st.st_uid == self.uid:
            bits = st.st_mode >> 6
        elif st.st_gid == self.gid or st.st_gid in self.groups:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        return bits & want == want

    def refusal(self) -> str:
        return f"not readable by the service's user (uid {self.uid})"


ROOT = Creds(0, 0, (), True, True)


def may(fd: int, st: os.stat_result, creds: Creds, want: int) -> bool:
    """creds.may, and an ACL on what the user does not own is a no (its named
    entries and mask are not in the mode bits)."""
    if not creds.may(st, want):
        return False
    if creds.reads_all and not want & W or creds.writes_all or st.st_uid == creds.uid:
        return True
    try:
        os.getxattr(f"/proc/self/fd/{fd}", ACL_XATTR)
    except OSError:
        return True
    return False


# ---------------------------------------------------------------- the budget

@dataclass
class Budget:
    """The work one service's read may cost, whatever its files say."""

    files: int = 128                 # files opened
    bytes: int = 16 << 20            # bytes read, all files together
    includes: int = 256              # include directives followed, all files together
    seconds: float = 5.0
    opened: int = 0
    spent: int = 0
    followed: int = 0
    seen: Set[Tuple[int, int]] = field(default_factory=set)
    deadline: float = 0.0

    def __post_init__(self):
        self.deadline = self.deadline or time.monotonic() + self.seconds

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise OverBudget(f"tuner's {self.seconds:g} s for reading one service ran out")
        if self.opened >= self.files:
            raise OverBudget(f"tuner reads at most {self.files} files for one service")
        if self.spent >= self.bytes:
            raise OverBudget(f"tuner reads at most {self.bytes:,} bytes for one service")

    def include(self) -> None:
        """One more include followed; OverBudget past the total."""
        self.check()
        if self.followed >= self.includes:
            raise OverBudget(f"tuner follows at most {self.includes} includes for one service")
        self.followed += 1


# ---------------------------------------------------------------- the walk

def _writers_fault(st: os.stat_result, owners: Optional[Sequence[int]], is_dir: bool) -> Optional[str]:
    """Why someone outside `owners` could have written this (None: nobody could)."""
    if owners is None:
        return None
    if st.st_uid not in owners:
        return f"belongs to uid {st.st_uid}, not to root" + (
            "" if owners == (0,) else f" or uid {', '.join(str(o) for o in owners if o)}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not (is_dir and st.st_mode & stat.S_ISVTX):
        return f"is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    if not is_dir and st.st_uid != 0 and st.st_nlink > 1:
        return f"has {st.st_nlink} hard links"
    return None


class _Walk:
    """Descriptors held from "/" down to where the walk is; closes them all."""

    def __init__(self, creds: Creds, owners: Optional[Sequence[int]]):
        self.creds, self.owners, self.hops = creds, owners, 0
        self.stack: List[Tuple[int, os.stat_result, str]] = []
        self.sticky = False
        self.last = ""

    def real(self) -> str:
        """The path the walk resolved (links replaced by their targets)."""
        return "/" + "/".join([s[2] for s in self.stack[1:]] + ([self.last] if self.last else []))

    def __enter__(self) -> "_Walk":
        self._root()
        return self

    def __exit__(self, *exc) -> None:
        while self.stack:
            os.close(self.stack.pop()[0])

    def _root(self) -> None:
        while self.stack:
            os.close(self.stack.pop()[0])
        fd = os.open("/", O_PATH_FLAGS | os.O_DIRECTORY)
        self.stack.append((fd, os.fstat(fd), "/"))
        self._enter_dir(fd, self.stack[-1][1], "/", (0,) if self.owners is not None else None)

    def _enter_dir(self, fd: int, st: os.stat_result, where: str, owners) -> None:
        if not may(fd, st, self.creds, X):
            raise Unreadable(self.creds.refusal())
        fault = _writers_fault(st, owners, True)
        if fault:
            raise Unreadable(f"{where} {fault}")
        self.sticky = bool(st.st_mode & stat.S_ISVTX and st.st_mode & stat.S_IWOTH)

    def _link(self, fd: int, st: os.stat_result, parts: List[str]) -> None:
        """Follow a root's link in a root's directory: its text, read from the held
        descriptor, is walked under the same rules."""
        self.hops += 1
        if self.hops > LINK_HOPS or st.st_uid != 0 or self.stack[-1][1].st_uid != 0:
            raise Unreadable("is a link that someone other than root could have made")
        target = os.readlink("", dir_fd=fd)
        parts[:0] = [p for p in target.split("/") if p not in ("", ".")]
        if target.startswith("/"):
            self._root()

    def to(self, path: str) -> Tuple[int, os.stat_result]:
        """The O_PATH descriptor (caller closes it) and stat of `path`'s last
        component, every directory before it searchable and trusted."""
        if not path.startswith("/"):
            raise Unreadable("is not an absolute path")
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if not parts:
            fd = os.open("/", O_PATH_FLAGS | os.O_DIRECTORY)
            return fd, os.fstat(fd)
        while parts:
            name = parts.pop(0)
            if name == "..":
                if len(self.stack) > 1:
                    os.close(self.stack.pop()[0])
                continue
            fd = os.open(name, O_PATH_FLAGS, dir_fd=self.stack[-1][0])
            st = os.fstat(fd)
            if self.sticky and self.owners is not None and st.st_uid not in self.owners:
                os.close(fd)
                raise Unreadable(f"lies in a shared directory and belongs to uid {st.st_uid}")
            if stat.S_ISLNK(st.st_mode):
                try:
                    self._link(fd, st, parts)
                finally:
                    os.close(fd)
                continue
            if not parts:
                self.last = name
                return fd, st
            if not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise NotADirectoryError(errno.ENOTDIR, "not a directory")
            self.stack.append((fd, st, name))
            self._enter_dir(fd, st, self.real(), self.owners)
        fd = os.open(".", O_PATH_FLAGS | os.O_DIRECTORY, dir_fd=self.stack[-1][0])
        return fd, os.fstat(fd)


_LIBC: list = []     # libc, loaded once for fstatfs


def _fs_type(fd: int) -> Optional[int]:
    """statfs f_type of an open descriptor (the first word of struct statfs)."""
    try:
        if not _LIBC:
            _LIBC.append(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True))
        buf = ctypes.create_string_buffer(256)
        if _LIBC[0].fstatfs(fd, buf) != 0:
            return None
        return int.from_bytes(buf.raw[:ctypes.sizeof(ctypes.c_long)], "little", signed=False) & 0xFFFFFFFF
    except OSError:
        return None


# ---------------------------------------------------------------- reading files

@dataclass
class File:
    path: str
    data: bytes
    st: os.stat_result

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def _check_file(fd: int, st: os.stat_result, owners, limit: int) -> None:
    """Rule 4 and the size, for a file the user may read (reopen checked that first)."""
    fault = _writers_fault(st, owners, False)
    if fault:
        raise Unreadable(fault)
    if st.st_size > limit:
        raise Unreadable(f"is {st.st_size} bytes: not a config file")


def reopen(fd: int, st: os.stat_result, creds: Creds, flags: int = 0) -> int:
    """A descriptor for reading the very inode the O_PATH descriptor `fd` holds, opened
    through /proc/self/fd/N (never by name again), only if `creds` may read it and it
    is a regular file (or, with O_DIRECTORY in `flags`, a directory) on no kernel
    pseudo-filesystem; Unreadable otherwise."""
    want_dir = bool(flags & os.O_DIRECTORY)
    kind_ok = stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)
    if not may(fd, st, creds, R | (X if want_dir else 0)):
        raise Unreadable(creds.refusal())
    if not kind_ok or _fs_type(fd) in PSEUDO_FS:
        raise Unreadable("is not a directory" if want_dir else "is not a regular file")
    rfd = os.open(f"/proc/self/fd/{fd}", O_READ_FLAGS | flags)
    again = os.fstat(rfd)
    if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
        os.close(rfd)
        raise Unreadable("changed while it was opened")
    return rfd


def read_file(path: str, creds: Creds = ROOT, budget: Optional[Budget] = None,
              owners: Optional[Sequence[int]] = (0,), limit: int = READ_MAX) -> File:
    """`path` read as `creds` could (rules 1-6); Unreadable with the reason, or
    FileNotFoundError when a directory the user may search lacks it."""
    budget = budget or Budget()
    budget.check()
    with _Walk(creds, owners) as walk:
        fd, st = walk.to(path)
    try:
        if (st.st_dev, st.st_ino) in budget.seen:
            raise Unreadable("read once already (a file that includes itself, or a repeat)")
        rfd = reopen(fd, st, creds)
    finally:
        os.close(fd)
    try:
        _check_file(rfd, st, owners, min(limit, budget.bytes - budget.spent))
        budget.opened += 1
        budget.seen.add((st.st_dev, st.st_ino))
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(rfd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        budget.spent += size
        return File(path, b"".join(chunks)[:limit], st)
    finally:
        os.close(rfd)


def read_text(path: str, creds: Creds = ROOT, budget: Optional[Budget] = None,
              owners: Optional[Sequence[int]] = (0,), limit: int = READ_MAX) -> str:
    return read_file(path, creds, budget, owners, limit).text


def list_dir(path: str, creds: Creds = ROOT, budget: Optional[Budget] = None,
             owners: Optional[Sequence[int]] = (0,)) -> List[str]:
    """The names in directory `path` if `creds` may read and search it (else
    Unreadable: no name leaves here); sorted, without dot files."""
    budget = budget or Budget()
    budget.check()
    with _Walk(creds, owners) as walk:
        fd, st = walk.to(path)
    try:
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        rfd = reopen(fd, st, creds, os.O_DIRECTORY)
    finally:
        os.close(fd)
    fault = _writers_fault(st, owners, True)
    if fault:
        os.close(rfd)
        raise Unreadable(fault)
    try:
        budget.opened += 1
        return sorted(n for n in os.listdir(rfd) if not n.startswith("."))
    finally:
        os.close(rfd)


def is_dir(path: str, creds: Creds = ROOT, owners: Optional[Sequence[int]] = (0,)) -> bool:
    """Whether `path` is a directory the walk reaches (False for what it cannot)."""
    try:
        with _Walk(creds, owners) as walk:
            fd, st = walk.to(path)
        os.close(fd)
    except (OSError, Unreadable):
        return False
    return stat.S_ISDIR(st.st_mode)


def why_not(path: str, err: Exception) -> str:
    """One line for what was not read: `PATH not read: REASON`."""
    if isinstance(err, Unreadable):
        return f"{path} not read: {err}"
    if isinstance(err, FileNotFoundError):
        return f"{path} not read: it does not exist"
    if isinstance(err, NotADirectoryError):
        return f"{path} not read: a part of it is not a directory"
    if isinstance(err, PermissionError):
        return f"{path} not read: permission denied (run tuner as root)"
    if isinstance(err, OSError) and err.errno == errno.ELOOP:
        return f"{path} not read: a link on the way"
    return f"{path} not read: {getattr(err, 'strerror', None) or err}"


# ---------------------------------------------------------------- sockets

def unix_connect(path: str, creds: Creds = ROOT, owners: Optional[Sequence[int]] = (0,),
                 timeout: float = 1.0) -> socket.socket:
    """A connection to the UNIX socket at `path`, walked as `creds` (rule 7): through
    the descriptor the walk ended on, so the path cannot be swapped after the check."""
    with _Walk(creds, owners) as walk:
        fd, st = walk.to(path)
    try:
        if not stat.S_ISSOCK(st.st_mode):
            raise Unreadable("is not a socket" if may(fd, st, creds, R) or creds.may(st, W)
                             else creds.refusal())
        if not may(fd, st, creds, W):
            raise Unreadable(creds.refusal().replace("readable", "writable"))
        fault = _writers_fault(st, owners, False)
        if fault:
            raise Unreadable(fault)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(f"/proc/self/fd/{fd}")
        except OSError:
            sock.close()
            raise
        return sock
    finally:
        os.close(fd)


# ---------------------------------------------------------------- tuner's own files

class UntrustedFile(TunerError):
    """A journal, lock or output directory another user could have written or planted."""

    exit_code = EXIT_FAILED


def invoker_owners() -> Tuple[int, ...]:
    """Who may own tuner's own files: root, or the invoking user when not root."""
    return (0, os.geteuid())


def others_may_write(st: os.stat_result) -> bool:
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def own_dir(directory: str, what: str = "journal") -> None:
    """Refuse a directory someone other than root (or us) owns or can write to, unless
    it is sticky (then others cannot rename or remove our files in it)."""
    st = os.stat(directory)
    if st.st_uid not in invoker_owners():
        raise UntrustedFile(f"{what} directory {directory} is owned by uid {st.st_uid}: tuner "
                            f"runs as root and will not trust files there; use a directory "
                            f"owned by root (e.g. the default /var/lib/tuner)")
    if others_may_write(st) and not st.st_mode & stat.S_ISVTX:
        raise UntrustedFile(f"{what} directory {directory} can be written by other users "
                            f"(mode {stat.S_IMODE(st.st_mode):04o}): use one only root can "
                            f"write, or a sticky one such as /tmp")


def own_file(fd: int, path: str, what: str = "journal") -> os.stat_result:
    """The open file behind `path` is a regular file of ours nobody else can write."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedFile(f"{what} {path} is not a regular file: move it away")
    if st.st_uid not in invoker_owners():
        raise UntrustedFile(f"{what} {path} is owned by uid {st.st_uid}, not root: tuner will "
                            f"not act on a file another user wrote; nothing was changed "
                            f"(inspect it, then move it away)")
    if others_may_write(st):
        raise UntrustedFile(f"{what} {path} is mode {stat.S_IMODE(st.st_mode):04o}: other users "
                            f"can write it, so tuner will not act on it; nothing was changed "
                            f"(inspect it, chmod go-w, then run again)")
    return st


def open_nofollow(path: str, flags: int, what: str = "journal", mode: int = 0o600) -> int:
    """os.open without following a symlink at `path` (O_NOFOLLOW), and never blocking on
    a FIFO (O_NONBLOCK)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UntrustedFile(f"{what} {path} is a symlink: tuner does not follow links for "
                                f"files it acts on as root; give the real path") from None
        raise


SECRET_MAX = 64 << 10     # bytes of a credential file: a password, not a document
OTHERS_RW = stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH


def read_secret(path: str, what: str) -> str:
    """A credential the invoker keeps in a file (`what` names the option: '--password-file'),
    read as tuner reads its own files (rule 8: owned by root or the invoker, opened
    without following a symlink, never blocking on a FIFO, a regular file, checked on
    the open descriptor) and, being a secret, readable and writable by its owner alone:
    a file others may read is refused, saying `chmod 600 FILE`.  Its text (UTF-8), one
    trailing newline dropped (`echo TEXT > FILE` writes one); UntrustedFile otherwise."""
    try:
        fd = open_nofollow(path, os.O_RDONLY, what=what)
    except OSError as e:
        raise UntrustedFile(f"{what} {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_mode & OTHERS_RW:
            raise UntrustedFile(f"{what} {path} is mode {stat.S_IMODE(st.st_mode):04o}: other users can read "
                                f"it; chmod 600 {shlex.quote(path)} (and change the password if someone may have)")
        own_file(fd, path, what=what)
        trusted_way(fd, path, what)
        data = _read_upto(fd, SECRET_MAX + 1)
    finally:
        os.close(fd)
    return secret_text(data, f"{what} {path}")


def trusted_way(fd: int, path: str, what: str) -> None:
    """Every directory on the way to `path` is root's or the invoker's and nobody else's
    to write (rule 8; sticky is fine), walked from "/" as rule 2 walks (a link only if
    root made it), and the walk ends on the inode `fd` holds: O_NOFOLLOW guards the last
    component alone, so a directory another user could swap would let them hand root
    any root-owned file of that name (as a password, as a run file to act on)."""
    try:
        with _Walk(ROOT, tuple(sorted(set(invoker_owners())))) as walk:
            wfd, st = walk.to(os.path.abspath(path))
            os.close(wfd)
    except Unreadable as e:
        raise UntrustedFile(f"{what} {path}: {e}; keep it in a directory only root (or you) "
                            f"can write") from None
    except OSError as e:
        raise UntrustedFile(f"{what} {path}: {e.strerror}") from None
    got = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (got.st_dev, got.st_ino):
        raise UntrustedFile(f"{what} {path} changed while it was opened: run again")


def secret_text(data: bytes, where: str) -> str:
    """A credential's bytes as read (from a file, or a pipe: --password-file -) as its
    text: at most SECRET_MAX bytes, UTF-8, one trailing newline dropped, not empty (a
    file or pipe left empty by mistake); UntrustedFile saying `where` otherwise."""
    if len(data) > SECRET_MAX:
        raise UntrustedFile(f"{where} is larger than {SECRET_MAX:,} bytes: not a password")
    data = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data
    if not data:
        raise UntrustedFile(f"{where} holds no password (empty)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UntrustedFile(f"{where} is not UTF-8 text") from None


def _read_upto(fd: int, limit: int) -> bytes:
    out = b""
    while len(out) < limit:
        chunk = os.read(fd, limit - len(out))
        if not chunk:
            break
        out += chunk
    return out


# ---------------------------------------------------------------- text a service chose

TEXT_LIMIT = 300          # characters of one service string as printed (argv, a path, a reply)
# Unicode categories that move the cursor, erase, retitle a window or reorder what a
# reader sees: Cc control (C0, DEL, C1), Cf format (bidi, zero width), Cs surrogates
# (undecodable bytes, os.fsdecode's surrogateescape), Zl/Zp line/paragraph separators.
_UNSAFE = ("Cc", "Cf", "Cs", "Zl", "Zp")
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escaped(c: str) -> str:
    code = ord(c)
    if c in _SHORT:
        return _SHORT[c]
    if 0xDC80 <= code <= 0xDCFF:      # a byte surrogateescape could not decode: the byte
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def safe_text(s: object, limit: Optional[int] = TEXT_LIMIT) -> str:
    """`s` (anything a service chose) as text that is safe to print to a terminal:
    every character that is not plain printable text shown escaped, and, past `limit`
    printed characters (None: no limit), cut with a marker saying how much was left."""
    text = s if isinstance(s, str) else str(s)
    if text.isprintable() and text.isascii() and (limit is None or len(text) <= limit):
        return text     # the usual case: nothing to do
    out, size = [], 0
    for i, c in enumerate(text):
        piece = _escaped(c) if unicodedata.category(c) in _UNSAFE else c
        if limit is not None and size + len(piece) > limit:
            out.append(f"…[{len(text) - i:,} more characters]")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)
