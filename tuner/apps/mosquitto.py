"""Mosquitto: `max_connections`, counted per listener, and the descriptors it stops at.

Read from Mosquitto 2.0's source (src/conf.c, src/net.c):
- Each `listener PORT [ADDRESS]` block is one listener with its own count: an accepted
  connection raises it (net__socket_accept), and past `max_connections` the connection
  is closed at once ("denied: max_connections exceeded"); the count is of client
  connections only (not the listening socket), and drops when one closes.  A listener
  without an address binds every address of both families, its sockets sharing the
  one count.  `max_connections` below 1 (`-1`, and `0`, which the check `> 0` passes)
  is unlimited, the default.  `per_listener_settings` changes nothing here: the option
  always belongs to the listener being configured.
- Before any `listener` line (in each file: an include_dir file starts over) the option
  belongs to the default listener, which exists only when such an option (or `port`,
  `bind_address`) is given: port 1883 on every address unless `port` says otherwise.
- No listener at all: "local only mode", 127.0.0.1 and ::1 on each `-p` port (1883),
  two listeners, unlimited.  No `-c`: no configuration is read.
- The config is read as the running broker's user could (it drops to `mosquitto` after
  reading it as root: a file only root may read is said to be unread, with the reason).
- `include_dir` is followed from the main file only, its `*.conf` files in Mosquitto's
  order (case-insensitive first, then case).  The file is parsed word by word on spaces;
  a line starting with `#` is a comment.
- max_connections is "Not reloaded on reload signal" (mosquitto.conf(5)): a restart.
  Worse than the manual says: on a reload (SIGHUP; Debian's `systemctl reload`) each
  `listener` line sets its listener back to its defaults (listener__set_defaults, which
  makes max_connections -1) and the max_connections line is then skipped, so every
  listener block is unlimited until the next restart (measured: 40 per listener, then
  120 of 120 after a SIGHUP).  tuner cannot see whether one happened since the start;
  it says so beside any cap it reads.
- Descriptors: Mosquitto never raises its RLIMIT_NOFILE.  At rest it holds stdin,
  stdout, stderr, one spare socket, its epoll descriptor and one per listening socket
  (and a log file per `log_dest file`); when accept() fails with EMFILE it closes the
  spare, accepts and closes the connection, and makes the spare again.  A build with
  libwrap (Debian's) asks tcpd about each new connection, which opens /etc/hosts.allow:
  one descriptor more than the connection itself, so it holds RLIMIT_NOFILE - at rest - 1
  ("denied access by tcpd" past it).  Measured: nofile 200, one listener, 193 held.
- listen() gets a backlog of 100 (src/net.c), and no option changes it.
"""
from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from tuner.host import trust

from . import base
from .base import AppCap, AppFix, ProcView

DEFAULT_PORT = 1883
UNLIMITED = -1
AT_REST = 5                 # stdin, stdout, stderr, the spare socket, epoll
LISTEN_BACKLOG = 100        # src/net.c: listen(sock, 100)
RELOAD_DROPS = ("a reload (SIGHUP, systemctl reload) drops every listener's max_connections "
                "to unlimited until the next restart (Mosquitto 2.0's conf.c), so restart it; "
                "tuner reads the file, and cannot tell whether one happened since it started")


@dataclass
class Listener:
    """One listener block (or the default listener) as the config gives it."""

    port: int
    host: Optional[str]                # None: every address
    where: str                         # "file:line" of its `listener` line
    max_connections: int = UNLIMITED
    max_where: Optional[str] = None    # "file:line" of its max_connections
    block: bool = True                 # a `listener` block (False: the default listener)

    @property
    def capped(self) -> bool:
        return self.max_connections > 0

    @property
    def name(self) -> str:
        return f"listener {self.port}" + (f" {self.host}" if self.host else "")


@dataclass
class Config:
    """What Mosquitto read at start: its listeners, log files, what could not be read."""

    path: Optional[str]
    listeners: List[Listener] = field(default_factory=list)
    log_files: int = 0
    local_only: bool = False
    files: List[str] = field(default_factory=list)
    unread: List[str] = field(default_factory=list)


def atoi(word: str) -> int:
    """C's atoi, as conf.c reads the value: leading digits, 0 when there are none."""
    sign, digits = (-1, word[1:]) if word.startswith("-") else (1, word.lstrip("+"))
    n = len(digits) - len(digits.lstrip("0123456789"))
    return sign * int(digits[:n]) if n else 0


def _order(name: str) -> list:
    """conf_includedir.c's scmp_p: case-insensitive first, then case (shorter first)."""
    return [(c.upper(), c) for c in name]


class _Reader:
    """conf.c's config__read_file_core, for the options that decide the count; every file
    and directory read as the service's user could, only if root alone could have
    written it (tuner/host/trust.py), all within one budget."""

    def __init__(self, path: str, proc: ProcView):
        self.conf = Config(path)
        self.default = Listener(0, None, "the default listener", block=False)
        self.default_used = False
        self.creds = base.creds_of(proc)
        self.budget = trust.Budget()

    def file(self, path: str, level: int) -> None:
        try:
            text = base.read_trusted(path, (0,), self.creds, self.budget)
        except (OSError, base.Untrusted) as e:
            base.note(self.conf.unread, base.why_not(path, e))
            return
        self.conf.files.append(path)
        cur = self.default
        for n, line in enumerate(text.splitlines(), 1):
            if not line or line.startswith("#"):
                continue
            words = [w for w in line.split(" ") if w]
            if words:
                cur = self.option(words, f"{path}:{n}", cur, level)

    def option(self, words: List[str], where: str, cur: Listener, level: int) -> Listener:
        key, args = words[0], words[1:]
        if key == "listener" and args:
            host = args[1] if len(args) > 1 and not args[1].startswith("#") else None
            cur = Listener(atoi(args[0]), host, where)
            self.conf.listeners.append(cur)
        elif key == "max_connections" and args:
            cur.max_connections, cur.max_where = max(atoi(args[0]), UNLIMITED), where
            self.default_used |= cur is self.default
        elif key == "port" and args:
            self.default.port, self.default_used = atoi(args[0]), True
        elif key == "bind_address" and args:
            self.default.host, self.default_used = args[0], True
        elif key == "log_dest" and args[:1] == ["file"]:
            self.conf.log_files += 1
        elif key == "include_dir" and args and level == 0:
            self.include_dir(" ".join(args))
        return cur

    def include_dir(self, path: str) -> None:
        """Its `*.conf` files (longer than ".conf"), in Mosquitto's order (trust.list_dir
        leaves out dot files: a `.x.conf` Mosquitto would read is not seen)."""
        try:
            names = [n for n in trust.list_dir(path, self.creds, self.budget, (0,))
                     if len(n) > 5 and n.endswith(".conf")]
        except (OSError, base.Untrusted) as e:
            base.note(self.conf.unread, base.why_not(path, e))
            return
        for name in sorted(names, key=_order):
            try:
                self.budget.include()
            except trust.OverBudget as e:
                base.note(self.conf.unread, f"the rest of {path} not read: {e}")
                return
            self.file(os.path.join(path, name), 1)


def read_config(proc: ProcView) -> Config:
    """The listeners Mosquitto runs with, from `-c FILE` (none: no file is read)."""
    path = proc.option("-c", "--config-file")
    reader = _Reader(path or "", proc)
    if path:
        reader.file(path, 0)
    conf = reader.conf
    if reader.default_used:
        reader.default.port = reader.default.port or DEFAULT_PORT
        reader.default.where = f"the default listener (port {reader.default.port})"
        conf.listeners.append(reader.default)
    if not conf.listeners and not conf.unread:
        conf.local_only = True
        ports = [atoi(p) for i, p in enumerate(proc.cmdline[1:], 1)
                 if proc.cmdline[i - 1] in ("-p", "--port")] or [DEFAULT_PORT]
        conf.listeners = [Listener(p, h, "local only mode (no listener configured)")
                          for p in ports for h in ("127.0.0.1", "::1")]
    return conf


def built_with_libwrap(proc: ProcView) -> Optional[bool]:
    """Whether the binary links libwrap (its dynamic section names libwrap.so), read from
    the root-owned file it runs, never executed; None when it cannot be read."""
    try:
        return b"libwrap.so" in base.read_trusted_bytes(base.trusted_binary(proc), limit=64 << 20)
    except (OSError, base.Untrusted):
        return None


def at_rest(proc: ProcView, conf: Config) -> int:
    """Descriptors it holds with no client: see the module docstring."""
    return AT_REST + max(len(proc.listeners), 1) + conf.log_files


# ---------------------------------------------------------------- the cap

def places(spots: List[str]) -> str:
    """"f.conf:5, f.conf:7" as "f.conf:5,7": one file named once."""
    files = {w.rpartition(":")[0] for w in spots}
    if len(spots) > 1 and len(files) == 1:
        return f"{files.pop()}:{','.join(w.rpartition(':')[2] for w in spots)}"
    return ", ".join(spots)


def _where(conf: Config, capped: List[Listener]) -> str:
    return places([l.max_where or l.where for l in capped]) or conf.path or "no -c file"


def _cap(proc: ProcView, conf: Config) -> AppCap:
    capped = [l for l in conf.listeners if l.capped]
    free = [l for l in conf.listeners if not l.capped]
    if capped and not free:
        total = sum(l.max_connections for l in capped)
        values = sorted({l.max_connections for l in capped})
        setting = (f"max_connections {total:,}" if len(capped) == 1
                   else f"max_connections {values[0]:,} x {len(capped)} listeners" if len(values) == 1
                   else f"max_connections {'+'.join(f'{l.max_connections:,}' for l in capped)} "
                        f"on {len(capped)} listeners")
        cap = AppCap("mosquitto", setting, total, _where(conf, capped), base.READ,
                     "each listener closes a connection past its own max_connections at once "
                     "(it counts client connections only)", unread=list(conf.unread))
        if any(l.block for l in capped):
            cap.notes.append(RELOAD_DROPS)
        return cap
    setting = ("no max_connections (local only mode)" if conf.local_only
               else "max_connections -1 (unlimited)")
    cap = AppCap("mosquitto", setting, None, conf.path or "no -c file", base.DEFAULT,
                 "no cap of its own: its descriptors decide", unread=list(conf.unread))
    if capped:
        cap.notes.append("; ".join(f"{l.name} closes past max_connections {l.max_connections:,} "
                                   f"({l.max_where})" for l in capped)
                         + f"; {', '.join(l.name for l in free)} unlimited")
    return cap


def read(proc: ProcView) -> AppCap:
    conf = read_config(proc)
    if conf.unread:
        return base.unknown("mosquitto", "max_connections", conf.path or "?", *conf.unread)
    cap = _cap(proc, conf)
    if built_with_libwrap(proc):
        cap.accept_fds = 1
        cap.notes.append("built with libwrap: each new connection opens /etc/hosts.allow for "
                         "a moment, so Mosquitto stops one descriptor short of its RLIMIT_NOFILE "
                         "(\"denied access by tcpd\" in its log)")
    return cap


# ---------------------------------------------------------------- the fix

def _restart(proc: ProcView) -> str:
    """Its unit's restart, else the command line only when base.start_command may repeat
    it: a broker that dropped to the `mosquitto` user owns its argv and could rewrite it."""
    if proc.unit:
        return f"systemctl restart {shlex.quote(proc.unit)}"
    start = base.start_command(proc)
    return (f"kill {proc.pid}, then start it again: {start}" if start else
            f"kill {proc.pid}, then start it again as it was started (its command line, "
            f"which uid {proc.uid} may have rewritten, is not repeated here)")


def _lines(conf: Config, want: int) -> List[Tuple[Listener, int]]:
    """Each capped listener's new max_connections: its share of `want`, in proportion to
    its cap now (one listener takes it all)."""
    capped = [l for l in conf.listeners if l.capped]
    total = sum(l.max_connections for l in capped) or 1
    return [(l, math.ceil(want * l.max_connections / total)) for l in capped]


def fix_for(proc: ProcView, want: int) -> Optional[AppFix]:
    """max_connections for `want` in each capped listener block, then a restart (the
    option is not reloaded on SIGHUP); the descriptors it needs with them."""
    conf = read_config(proc)
    new = _lines(conf, want)
    if not new or conf.unread:
        return None
    accept = 1 if built_with_libwrap(proc) else 0
    nofile = sum(n for _, n in new) + at_rest(proc, conf) + accept
    short = "" if (proc.nofile_soft or 0) >= nofile else (
        f"; its RLIMIT_NOFILE {proc.nofile_soft or 0:,} must be {nofile:,} when it starts "
        f"(LimitNOFILE= in its unit, or ulimit -n): Mosquitto does not raise it itself")
    lines = sorted({f"max_connections {n}" for _, n in new})
    which = ("replacing the line" if len(new) == 1 else
             "replacing the line in each listener block" if len(lines) == 1 else
             "replacing them in order, one in each listener block")
    if len(lines) > 1:
        lines = [f"max_connections {n}" for _, n in new]
    return AppFix(lines, places([l.max_where or l.where for l, _ in new]), nofile,
                  base.RESTART, _restart(proc), sum(n for _, n in new),
                  f"{which}; Mosquitto takes max_connections only at start, and a reload (SIGHUP, "
                  f"systemctl reload) drops every listener's cap to unlimited: restart it{short}")


class Mosquitto(base.Adapter):
    name = "mosquitto"
    backlog_fixed = "Mosquitto passes 100 to listen() (src/net.c) and no option changes it"

    def recognise(self, proc: ProcView) -> bool:
        return proc.exe_name == "mosquitto" or proc.name == "mosquitto"

    def read(self, proc: ProcView) -> AppCap:
        return read(proc)

    def fix(self, proc: ProcView, cap: AppCap, want: int) -> Optional[AppFix]:
        return fix_for(proc, want)


ADAPTER = Mosquitto()
