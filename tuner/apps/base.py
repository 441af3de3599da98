"""What every application adapter shares: the view of a process it is given, the cap it
returns, and the trust rules for reading a service from outside as root.

A server often caps its own connections below what the kernel and its descriptor
limit allow (nginx `worker_connections`, HAProxy `maxconn`, Redis `maxclients`,
PostgreSQL `max_connections`).  `tuner diagnose` asks the adapter that recognises the
service for that cap and takes the minimum over kernel, process and application.

How to add an adapter (one module in tuner/apps/; the registry in __init__.py finds
every module defining ADAPTER, nothing else lists it):

    from .base import Adapter, AppCap, AppFix, ProcView, Untrusted, read_trusted

    class Redis(Adapter):
        name = "redis"

        def recognise(self, proc: ProcView) -> bool:      # cheap, never fails
            return proc.exe_name == "redis-server"

        def read(self, proc: ProcView) -> AppCap:         # never raises for what it
            ...                                            # cannot read: says so

        def fix(self, proc, cap, want) -> AppFix | None:  # the setting for `want`
            ...                                            # connections

    ADAPTER = Redis()

Rules (tuner runs as root; the service's own user may be hostile):
- `proc` is built once by diagnose from the kernel's view (/proc/PID/{exe,cmdline,
  status,limits}, sock_diag for listeners): never walk /proc/PID/fd.
- Open files only through the trust layer (tuner/host/trust.py, its rules at its top),
  as the service's own credentials (`creds_of(proc)`) and within one `trust.Budget`
  per read: root reads only what the service's user could, walked from "/" on held
  descriptors, and what that user could not read is "not readable by the service's
  user (uid N)", nothing more.  Execute a binary only through `trusted_binary` +
  `run_trusted` (root-owned, not writable, at a root-owned path, the very file the
  process runs).  Connect only through `local_connect` / `unix_connect`.
- What could not be read goes into AppCap.unread with the reason, and `allows` is
  None: diagnose then says its prediction is an upper bound and how to tell tuner the
  cap (`--app-limit N`).  Never a silent guess: a value the application would take by
  default is sureness DEFAULT, one derived by the application's own rule COMPUTED.
- Tests start the real server (tests/realservers.py) with a known cap and with the
  package's defaults, and compare with a real probe.
"""
from __future__ import annotations

import os
import shlex
import socket
import stat
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence, Tuple

from tuner.host import procfs, procpid, trust

# How sure an AppCap's `allows` is.
READ = "read"            # the application said it (CONFIG GET, show info) or its config does
COMPUTED = "computed"    # derived by the application's own documented rule (from ulimit, ...)
DEFAULT = "default"      # not set anywhere tuner could read: the application's default
UNKNOWN = "unknown"      # could not be read: allows is None, unread says why
GIVEN = "given"          # told by the user (--app-limit N)
SURENESS = (READ, COMPUTED, DEFAULT, UNKNOWN, GIVEN)

RELOAD, RESTART = "reload", "restart"

TRUSTED_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RUN_TIMEOUT = 5.0          # seconds for a trusted binary's config dump
READ_MAX = trust.READ_MAX
CAP_SYS_RESOURCE = procfs.CAP_SYS_RESOURCE


# A file, binary or socket tuner will not read as root; the message says why.
Untrusted = trust.Unreadable


# ---------------------------------------------------------------- the process

@dataclass(frozen=True)
class ProcView:
    """One process as the kernel shows it, read once by diagnose for the adapters."""

    pid: int
    ppid: int
    name: str                          # comm (/proc/PID/status Name)
    exe: Optional[str]                 # readlink /proc/PID/exe: may end " (deleted)"
    cmdline: Tuple[str, ...]
    uid: int
    gid: int
    nofile_soft: Optional[int]
    nofile_hard: Optional[int]
    netns_inode: Optional[int]
    cwd: Optional[str] = None          # readlink /proc/PID/cwd (PostgreSQL runs in its data dir)
    fds: Optional[int] = None          # descriptors open now (stat of /proc/PID/fd: no walk)
    threads: int = 1                   # /proc/PID/status Threads
    unit: Optional[str] = None         # the systemd unit it runs in, if any (for reload commands)
    cap_sys_resource: bool = False     # may raise RLIMIT_NOFILE past its hard limit (for its children)
    listeners: Tuple[Tuple[str, int], ...] = ()   # (address, port) of the service's TCP listeners
    children: Tuple["ProcView", ...] = ()          # direct children (workers), one level
    creds: Optional[trust.Creds] = None            # fs uid/gids and DAC capabilities (trust.Creds)

    @property
    def exe_name(self) -> str:
        """Basename of the executable ("" when unreadable), without " (deleted)"."""
        exe = (self.exe or "").removesuffix(" (deleted)")
        return os.path.basename(exe)

    @property
    def ports(self) -> List[int]:
        return sorted({port for _, port in self.listeners})

    def option(self, *flags: str) -> Optional[str]:
        """The value of a command-line option: `-c FILE`, `-cFILE`, `--conf=FILE`."""
        return option(self.cmdline, *flags)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["children"] = [c.pid for c in self.children]
        d.pop("creds", None)          # how tuner reads for it, not a figure of the process
        return d


def option(argv: Sequence[str], *flags: str) -> Optional[str]:
    """The last value given to any of `flags` in argv (the last one wins, as getopt)."""
    found = None
    for i, arg in enumerate(argv):
        for flag in flags:
            if arg == flag and i + 1 < len(argv):
                found = argv[i + 1]
            elif flag.startswith("--") and arg.startswith(flag + "="):
                found = arg[len(flag) + 1:]
            elif not flag.startswith("--") and len(flag) == 2 and arg.startswith(flag) and len(arg) > 2:
                found = arg[2:]
    return found


def _readlink(pid: int, what: str) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/{what}")
    except OSError:
        return None


def children_of(pid: int) -> List[int]:
    """Direct children, from /proc/PID/task/*/children (the kernel's list, O(children))."""
    out: List[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        text = procfs.read_text(f"/proc/{pid}/task/{tid}/children")
        out += [int(c) for c in (text or "").split()]
    return sorted(set(out))


def _fd_count(pid: int) -> Optional[int]:
    try:
        return procpid.fd_count(pid)
    except (OSError, ValueError):
        return None


def view(pid: int, listeners: Sequence[Tuple[str, int]] = (), depth: int = 1,
         unit: Optional[str] = None) -> ProcView:
    """Read one process (and its children, `depth` levels) for the adapters.  A process
    that exits meanwhile reads as what was left (OSError is not raised from here)."""
    try:
        status = procpid.proc_status(pid)
    except OSError:
        status = {}
    try:
        soft, hard = procpid.proc_limits(pid).get("Max open files", (None, None))
    except OSError:
        soft = hard = None
    try:
        cmd = tuple(procpid.cmdline(pid))
        netns: Optional[int] = procpid.netns_inode(pid)
    except OSError:
        cmd, netns = (), None
    kids = tuple(view(c, (), depth - 1) for c in children_of(pid)) if depth > 0 else ()
    return ProcView(pid=pid, ppid=int(status.get("PPid", "0")), name=status.get("Name", "?"),
                    exe=_readlink(pid, "exe"), cmdline=cmd,
                    uid=int(status.get("Uid", "-1 0").split()[0]),
                    gid=int(status.get("Gid", "-1 0").split()[0]),
                    nofile_soft=soft, nofile_hard=hard, netns_inode=netns,
                    cwd=_readlink(pid, "cwd"), fds=_fd_count(pid), unit=unit,
                    threads=int(status.get("Threads", "1")),
                    cap_sys_resource=bool(int(status.get("CapEff", "0"), 16) >> CAP_SYS_RESOURCE & 1),
                    listeners=tuple(listeners), children=kids,
                    creds=trust.Creds.of_status(status) if status else None)


# ---------------------------------------------------------------- what an adapter returns

@dataclass
class AppFix:
    """How to raise the application's cap: the lines to write, where, the descriptor
    limit each process needs with them, and whether a reload takes them or a restart."""

    lines: List[str]                   # config lines as written: "worker_connections 2048;"
    file: Optional[str]                # where to write them: "/etc/nginx/nginx.conf:12"
    nofile: Optional[int]              # soft RLIMIT_NOFILE each process needs with them
    action: str                        # RELOAD | RESTART
    command: str                       # "kill -HUP 812" / "systemctl restart redis-server"
    allows: Optional[int] = None       # what the service holds with the fix
    why: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AppCap:
    """The application's own connection cap as an adapter read it."""

    app: str                           # "nginx"
    setting: str                       # "worker_connections 512 x 2 workers"
    allows: Optional[int]              # connections the service accepts under it; None: unknown,
                                       # or (sureness DEFAULT) no cap of its own: `capless`
    where: str                         # "/etc/nginx/nginx.conf:12", "CONFIG GET over 127.0.0.1:6379"
    sureness: str                      # one of SURENESS
    why: str                           # how the figure follows from the setting
    fix: Optional[AppFix] = None
    unread: List[str] = field(default_factory=list)   # what could not be read, and why
    notes: List[str] = field(default_factory=list)    # runtime facts worth saying (Go, Node)
    # Descriptors it opens for a moment on each accept (Mosquitto built with libwrap reads
    # /etc/hosts.allow): it stops that many short of its RLIMIT_NOFILE.
    accept_fds: int = 0
    # [low, high]: the idle keep-alive connections it keeps, where it closes idle ones to
    # make room for new ones before its cap (nginx's ngx_drain_connections); None: the
    # cap holds for idle connections too.
    idle: Optional[List[int]] = None

    @property
    def label(self) -> str:
        """The binding limit's name: `nginx worker_connections 512 x 2 workers (/etc/nginx/nginx.conf:12)`."""
        return f"{self.app} {self.setting}" + (f" ({self.where})" if self.where else "")

    @property
    def known(self) -> bool:
        return self.allows is not None

    @property
    def capless(self) -> bool:
        """No cap of its own (Node, the JVM, Go, asyncio): nothing to read, so nothing
        unknown; the kernel and the descriptor limit decide."""
        return self.allows is None and self.sureness == DEFAULT

    def to_dict(self) -> dict:
        d = asdict(self)
        d["label"] = self.label
        return d


def unknown(app: str, setting: str, where: str, *unread: str) -> AppCap:
    """The cap could not be read: say what and why; diagnose adds how to tell tuner."""
    return AppCap(app, setting, None, where, UNKNOWN,
                  f"{app}'s own cap could not be read", unread=list(unread))


# What a runtime's own memory cap counts (MemoryCap.kind): the heap its objects live in
# (the runtime fails past it: the JVM's OutOfMemoryError, V8's "heap limit" abort), a soft
# target the runtime collects harder to stay under (Go's GOMEMLIMIT: nothing fails there),
# the data the application stores (Redis maxmemory: clients are not refused there, writes
# are), or the memory of its clients as the application itself counts it (Redis
# maxmemory-clients: past it the application disconnects clients, a connection cap).
HEAP, SOFT, DATA, CLIENTS = "heap", "soft", "data", "clients"


@dataclass
class MemoryCap:
    """A runtime's own memory cap as its adapter read it (issue 26): the cost model sets
    it against the service's measured application memory per connection."""

    bytes: Optional[int]               # None: the runtime has one but it could not be read
    source: str                        # "--max-old-space-size=128 (command line)"
    kind: str                          # HEAP, SOFT or DATA
    sureness: str                      # READ (given), COMPUTED (the runtime's default rule), UNKNOWN
    base: int = 0                      # what an idle process already holds of it (assumed)
    why: str = ""
    # Set against the heap's own pages (servicecost's heap_bytes: V8's), not the whole
    # process's PSS; `young` is what the runtime may commit beside the cap, uncounted by
    # it, and grows first while objects survive (V8's two semi-spaces).
    heap_pages: bool = False
    young: int = 0
    # DATA and CLIENTS caps are set against what the application itself counts, not its
    # PSS: what it counts now against the cap and over how many connections, and what it
    # did past the cap so far (Redis: clients evicted), read with the cap.
    used: Optional[int] = None
    connections: Optional[int] = None
    evicted: Optional[int] = None
    name: str = ""                     # the setting's short name: "maxmemory-clients 1 MiB"
    does: str = ""                     # what the application does past it: "evicts clients"

    @property
    def per_connection(self) -> Optional[float]:
        """Bytes per connection as the application counts them now (used / connections)."""
        return self.used / self.connections if self.used is not None and self.connections else None

    def to_dict(self) -> dict:
        return asdict(self)


class Adapter:
    """One application: recognise its process, read its cap, size the fix."""

    name = "?"
    # A runtime's listen() backlog when the program passes none, and how to set it
    # (diagnose's backlog fix and note name them): 50, "Java: ServerSocket(port, N) ...";
    # or, for an application no setting of which changes it, what it passes and why
    # (backlog_fixed: "Mosquitto passes 100 to listen() ...").
    backlog_default: Optional[int] = None
    backlog_setting: Optional[str] = None
    backlog_fixed: Optional[str] = None

    def recognise(self, proc: ProcView) -> bool:
        raise NotImplementedError

    def read(self, proc: ProcView) -> AppCap:
        raise NotImplementedError

    def fix(self, proc: ProcView, cap: AppCap, want: int) -> Optional[AppFix]:
        """The change that lets the service hold `want` connections; None when the
        application has no setting for it (or needs none)."""
        return None

    def memory_cap(self, proc: ProcView) -> Optional[MemoryCap]:
        """The runtime's own memory cap (its heap limit), None when it has none: read from
        its flags and environment, never by running it."""
        return None

    def memory_caps(self, proc: ProcView) -> List[MemoryCap]:
        """Every memory cap of the application's own (a runtime's heap; Redis's
        maxmemory-clients and maxmemory, read from the server): its memory_cap by default."""
        cap = self.memory_cap(proc)
        return [] if cap is None else [cap]

    def memory_fix(self, proc: ProcView, kind: str, want: int, per_connection: float) -> Optional[AppFix]:
        """The setting that lets its own memory cap of `kind` hold `want` connections at
        `per_connection` bytes each (as the application counts them); None: none."""
        return None


# ---------------------------------------------------------------- trust: files

def creds_of(proc: ProcView) -> trust.Creds:
    """The service's credentials: what it could read is what tuner reads for it."""
    return proc.creds or trust.Creds(proc.uid, proc.gid)


def read_trusted(path: str, owners: Sequence[int] = (0,), creds: trust.Creds = trust.ROOT,
                 budget: Optional[trust.Budget] = None) -> str:
    """The text of a config file read as root only if `creds` could read it and nobody
    but `owners` (root by default; add the service's uid only where its documentation
    has it own the file) can have written it or any directory on its way (the rules
    of tuner/host/trust.py); Untrusted (with the reason) otherwise, OSError when a
    directory the user may search lacks it."""
    return trust.read_text(path, creds, budget, tuple(owners))


def read_trusted_bytes(path: str, owners: Sequence[int] = (0,), limit: int = READ_MAX) -> bytes:
    """read_trusted's bytes as root, up to `limit` (a trusted binary's build options)."""
    return trust.read_file(path, trust.ROOT, trust.Budget(bytes=limit + 1), tuple(owners), limit).data


why_not = trust.why_not


def note(unread: List[str], line: str) -> None:
    """Add a line to AppCap.unread once (a config that includes one file 50 times says so once)."""
    if line not in unread:
        unread.append(line)


# ---------------------------------------------------------------- trust: binaries

def trusted_binary(proc: ProcView) -> str:
    """The path of the process's own executable if it is safe to run as root: the very
    file the process runs (not replaced since), a regular root-owned file nobody else
    can write, at a path whose directories only root can change; Untrusted otherwise."""
    exe = proc.exe or ""
    if not exe or exe.endswith(" (deleted)"):
        raise Untrusted(f"the executable of pid {proc.pid} is gone or replaced ({exe or '?'})")
    real, st = _root_file(exe)
    running = os.stat(f"/proc/{proc.pid}/exe")
    if (running.st_dev, running.st_ino) != (st.st_dev, st.st_ino):
        raise Untrusted(f"{exe} is not the file pid {proc.pid} runs (replaced since it started)")
    return real


def _root_file(path: str) -> Tuple[str, os.stat_result]:
    """`path` resolved and its stat, if a regular root-owned file only root can write,
    at a path only root can change; Untrusted otherwise."""
    with trust._Walk(trust.ROOT, (0,)) as walk:
        fd, st = walk.to(path)
        real = walk.real()
    os.close(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise Untrusted(f"{path} is not a root-owned executable that only root can write")
    return real, st


def by_owner(proc: ProcView) -> str:
    """What a fix says instead of a command when it may name none (start_command)."""
    return f"restart it as its owner (uid {proc.uid}) does"


def start_command(proc: ProcView) -> Optional[str]:
    """The command line that starts the process again, for a fix root pastes: its binary
    only when `trusted_binary` passes and root runs it (another user's binary, or their
    arguments and config run as root, would be theirs to choose), every word quoted;
    None otherwise (say `by_owner`)."""
    if proc.uid != 0:
        return None
    try:
        exe = trusted_binary(proc)
    except (Untrusted, OSError):
        return None
    return shlex.join([exe, *proc.cmdline[1:]])


def trusted_tool(proc: ProcView, name: str) -> Optional[str]:
    """The path of `name` beside the process's own trusted binary (PostgreSQL's pg_ctl
    beside postgres), when it too is a root-owned file only root can change; None
    otherwise."""
    try:
        exe = trusted_binary(proc)
        return _root_file(os.path.join(os.path.dirname(exe), name))[0]
    except (Untrusted, OSError):
        return None


def run_trusted(argv: Sequence[str], timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    """Run a binary `trusted_binary` returned, with a clean environment, no input, and a
    time limit; its output as text.  OSError or subprocess.TimeoutExpired on failure."""
    return subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          errors="replace", timeout=timeout, check=False, cwd="/",
                          env={"PATH": TRUSTED_PATH, "LC_ALL": "C"})


# ---------------------------------------------------------------- trust: sockets

def _loopback_for(address: str) -> Optional[Tuple[int, str]]:
    """Where to reach a listener bound to `address` on this host: itself if loopback,
    the loopback of its family if a wildcard; None for any other address."""
    if address in ("0.0.0.0", "") or address.startswith("127."):
        return socket.AF_INET, "127.0.0.1" if address in ("0.0.0.0", "") else address
    if address in ("::", "::1"):
        return socket.AF_INET6, "::1"
    if address.startswith("::ffff:127."):
        return socket.AF_INET, address[7:]
    return None


def local_connect(proc: ProcView, port: int, timeout: float = 1.0) -> socket.socket:
    """A TCP connection to the service's own listener on `port` over loopback, made in
    the process's network namespace (a socket stays in the namespace it was made in).
    Untrusted when the service listens there on no loopback or wildcard address."""
    from tuner.diagnose.service import in_netns_of  # the namespace home; service imports nothing of apps

    reach = next((r for a, p in proc.listeners if p == port for r in [_loopback_for(a)] if r), None)
    if reach is None:
        raise Untrusted(f"port {port} of pid {proc.pid} listens on no loopback or wildcard address")
    family, address = reach
    with in_netns_of(proc.pid):
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect((address, port))
    except OSError:
        sock.close()
        raise
    return sock


def unix_connect(path: str, owners: Sequence[int] = (0,), timeout: float = 1.0,
                 creds: trust.Creds = trust.ROOT) -> socket.socket:
    """A connection to a UNIX socket (an admin or stats socket) that `creds` could
    connect to and only `owners` can have made (the socket and every directory on its
    way), through the descriptor the walk held (tuner/host/trust.py)."""
    return trust.unix_connect(path, creds, tuple(owners), timeout)


def answer_deadline(sock: socket.socket) -> float:
    """When a whole answer must be in: twice the socket's timeout from now."""
    return time.monotonic() + 2 * (sock.gettimeout() or 1.0)


def recv_by(sock: socket.socket, deadline: float, size: int = 65536) -> bytes:
    """One recv that ends by `deadline` (time.monotonic()): a timeout per recv alone lets
    a service that drips a byte a second keep tuner, as root, reading for days."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout("no whole answer in time")
    sock.settimeout(left)
    return sock.recv(size)


def exchange(sock: socket.socket, request: bytes, limit: int = 1 << 20) -> bytes:
    """Send one request and read the reply until the peer closes (or `limit` bytes, or
    the answer's deadline): for line protocols such as HAProxy's `show info`."""
    chunks: List[bytes] = []
    size = 0
    with sock:
        deadline = answer_deadline(sock)
        sock.sendall(request)
        while size < limit:
            try:
                chunk = recv_by(sock, deadline)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks)


def workers(proc: ProcView, name_prefix: str = "") -> List[ProcView]:
    """The process's children whose command line starts with `name_prefix` (nginx
    retitles its workers "nginx: worker process")."""
    return [c for c in proc.children
            if not name_prefix or (c.cmdline and c.cmdline[0].startswith(name_prefix))]

