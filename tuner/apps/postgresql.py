"""PostgreSQL: max_connections less the slots kept for superusers, from its files.

An ordinary client is refused ("FATAL: remaining connection slots are reserved for ...",
"sorry, too many clients already") once max_connections - superuser_reserved_connections
(- reserved_connections, PostgreSQL 16+) backends run.  Those settings are read at start
only: a change needs a restart.

Read as the postmaster sees them, without credentials: its data directory (the
postmaster runs in it: /proc/PID/cwd; else -D or PGDATA), its command line (-c name=value,
--name=value, -N: they override every file) or postmaster.opts, postgresql.conf (or the
-c config_file=) with include / include_if_exists / include_dir followed as PostgreSQL
does (relative to the including file, a directory's *.conf in name order), then
postgresql.auto.conf (ALTER SYSTEM).  Files are trusted when root or the postgres user
owns them and nobody else can write them, and only what the postgres user itself
could read (tuner/host/trust.py: its credentials, one budget for all its files).
"""
from __future__ import annotations

import os
import pwd
import re
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from tuner.host import procpid, trust
from . import base
from .base import AppCap, AppFix, ProcView

DEFAULTS = {"max_connections": 100, "superuser_reserved_connections": 3, "reserved_connections": 0}
RESERVED_SINCE = 16            # reserved_connections (pg_use_reserved_connections) is 16+
INCLUDE_DEPTH = 10             # as guc-file.l's CONF_FILE_MAX_DEPTH
# getopt of postgres(1): the options that take an argument.
ARG_OPTIONS = set("BCcDdfhkNprStW")
LINE = re.compile(r"""^\s*([A-Za-z_][A-Za-z0-9_$.\-]*)\s*=?\s*('(?:[^'\\]|''|\\.)*'|[^\s#']+)?""")
NAMES = ("postgres", "postmaster")


@dataclass
class Settings:
    """Each setting's value and where it was set ("file:line", "command line")."""

    values: Dict[str, Tuple[str, str]] = field(default_factory=dict)
    read: List[str] = field(default_factory=list)       # files read, in order
    unread: List[str] = field(default_factory=list)
    mtimes: Dict[str, float] = field(default_factory=dict)   # of each file read, as it was read
    creds: trust.Creds = trust.ROOT                      # whose eyes the files are read through
    owners: Tuple[int, ...] = (0,)                       # who may have written them
    budget: trust.Budget = field(default_factory=trust.Budget)

    def text(self, path: str) -> str:
        """A file of the service read as its user could (trust layer), within the budget."""
        got = trust.read_file(path, self.creds, self.budget, self.owners)
        self.mtimes[path] = got.st.st_mtime
        return got.text

    def int(self, name: str) -> Tuple[int, str]:
        value, where = self.values.get(name, (None, "default"))
        try:
            return int(value, 0), where
        except (TypeError, ValueError):
            return DEFAULTS[name], "default"


def recognise(proc: ProcView) -> bool:
    """The postmaster: postgres/postmaster whose parent is not a postgres (its backends are)."""
    first = os.path.basename(proc.cmdline[0]) if proc.cmdline else ""
    return proc.exe_name in NAMES and first in NAMES


# ---------------------------------------------------------------- the files

def _unquote(raw: str) -> str:
    if raw.startswith("'") and raw.endswith("'") and len(raw) >= 2:
        inner = raw[1:-1].replace("''", "'")
        return re.sub(r"\\(.)", r"\1", inner)
    return raw


def parse_file(path: str, s: Settings, depth: int = 0, missing_ok: bool = False) -> None:
    """One configuration file into `s`, its includes in place (guc-file.l's rules)."""
    if depth > INCLUDE_DEPTH:
        base.note(s.unread, f"{path} not read: includes nested deeper than {INCLUDE_DEPTH}")
        return
    try:
        text = s.text(path)
    except FileNotFoundError:
        if not missing_ok:
            base.note(s.unread, base.why_not(path, FileNotFoundError()))
        return
    except (OSError, base.Untrusted) as e:
        base.note(s.unread, base.why_not(path, e))
        return
    s.read.append(path)
    here = os.path.dirname(path)
    for n, line in enumerate(text.splitlines(), 1):
        m = LINE.match(line)
        if not m or m.group(2) is None:
            continue
        name, value = m.group(1).lower().replace("-", "_"), _unquote(m.group(2))
        if name in INCLUDES:
            try:
                s.budget.include()
            except trust.OverBudget as e:
                base.note(s.unread, f"the rest of its includes not read: {e}")
                continue
            INCLUDES[name](os.path.join(here, value), s, depth + 1)   # absolute values stay as they are
        else:
            s.values[name] = (value, f"{path}:{n}")


def parse_dir(path: str, s: Settings, depth: int) -> None:
    """include_dir: its *.conf in name order, listed only if the service's user may."""
    try:
        names = [n for n in trust.list_dir(path, s.creds, s.budget, s.owners) if n.endswith(".conf")]
    except (OSError, base.Untrusted) as e:
        base.note(s.unread, base.why_not(path, e))
        return
    for name in names:
        parse_file(os.path.join(path, name), s, depth)


INCLUDES = {"include": parse_file, "include_dir": parse_dir,
            "include_if_exists": lambda path, s, depth: parse_file(path, s, depth, missing_ok=True)}


def command_line(argv: List[str]) -> Tuple[Dict[str, str], Optional[str]]:
    """postgres(1)'s options: (-c/--name settings, -N as max_connections; the -D)."""
    out: Dict[str, str] = {}
    datadir = None
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
            name, _, value = arg[2:].partition("=")
            out[name.lower().replace("-", "_")] = value
        elif len(arg) >= 2 and arg[0] == "-" and arg[1] in ARG_OPTIONS:
            value = arg[2:] if len(arg) > 2 else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 0 if len(arg) > 2 else 1
            if arg[1] == "c" and "=" in value:
                name, _, v = value.partition("=")
                out[name.lower().replace("-", "_")] = v
            elif arg[1] == "N":
                out["max_connections"] = value
            elif arg[1] == "D":
                datadir = value
        i += 1
    return out, datadir


def _environ_pgdata(pid: int) -> Optional[str]:
    try:
        return procpid.environ(pid, ("PGDATA",)).get("PGDATA")
    except OSError:
        return None


def settings(proc: ProcView) -> Tuple[Settings, Optional[str]]:
    """Everything the postmaster was started with, and its data directory."""
    s = Settings(creds=base.creds_of(proc), owners=(0, proc.uid))
    argv = list(proc.cmdline)
    datadir = proc.cwd if proc.cwd and os.path.isabs(proc.cwd) else None
    if len(argv) < 2 and datadir:
        try:                                     # retitled: the options it was started with
            argv = shlex.split(s.text(os.path.join(datadir, "postmaster.opts")))
        except (OSError, ValueError, base.Untrusted) as e:
            s.unread.append(base.why_not(os.path.join(datadir, "postmaster.opts"), e))
    options, dash_d = command_line(argv)
    configdir = dash_d or _environ_pgdata(proc.pid) or datadir
    if configdir and not os.path.isabs(configdir) and datadir:
        configdir = datadir                     # -D relative to where it was started
    if configdir is None:
        s.unread.append(f"the data directory of pid {proc.pid} (no -D, PGDATA or working "
                        f"directory readable: run tuner as root)")
        return s, None
    conf = options.get("config_file") or os.path.join(configdir, "postgresql.conf")
    parse_file(conf, s)
    datadir = s.values.get("data_directory", (datadir or configdir,))[0] if not datadir else datadir
    parse_file(os.path.join(datadir, "postgresql.auto.conf"), s, missing_ok=True)
    for name, value in options.items():
        s.values[name] = (value, f"command line of pid {proc.pid}")
    return s, datadir


def version(datadir: Optional[str], s: Settings) -> Optional[int]:
    try:
        return int(s.text(os.path.join(datadir or "", "PG_VERSION")).strip().split(".")[0])
    except (OSError, ValueError, base.Untrusted):
        return None


def started_at(datadir: str, s: Settings) -> Optional[int]:
    """The postmaster's start time (postmaster.pid's third line, seconds since 1970)."""
    try:
        return int(s.text(os.path.join(datadir, "postmaster.pid")).splitlines()[2])
    except (OSError, ValueError, IndexError, base.Untrusted):
        return None


def changed_since_start(s: Settings, start: Optional[int]) -> List[str]:
    """The files read whose modification time (as they were read) is after the start."""
    return [path for path in s.read if start is not None and int(s.mtimes.get(path, 0)) > start]


# ---------------------------------------------------------------- cap and fix

def _restart_command(proc: ProcView, datadir: Optional[str]) -> str:
    """The system unit's restart, else pg_ctl's run as the postmaster's own user: pg_ctl
    named only when it lies beside a trusted postgres binary and is root's too."""
    from tuner.diagnose.service import unit_of  # the service home: which unit runs it

    unit = unit_of(proc.pid)
    if unit:
        return f"systemctl restart {shlex.quote(unit)}"
    pg_ctl = base.trusted_tool(proc, "pg_ctl")
    if pg_ctl is None or datadir is None:
        return base.by_owner(proc)
    try:
        user = pwd.getpwuid(proc.uid).pw_name
    except KeyError:
        user = str(proc.uid)
    inner = f"{shlex.quote(pg_ctl)} restart -D {shlex.quote(datadir)}"
    return f"su {shlex.quote(user)} -s /bin/sh -c {shlex.quote(inner)}"


def fix_for(proc: ProcView, s: Settings, datadir: Optional[str], reserved: int, want: int) -> AppFix:
    """max_connections = want + the reserved slots, where it is set now; a restart."""
    value = want + reserved
    _, where = s.int("max_connections")
    line = f"max_connections = {value}"
    if where.startswith("command line"):
        file, note = None, f"it is set on the postmaster's command line (-N or -c): change it there ({line})"
    elif where.endswith(("postgresql.auto.conf",)) or "postgresql.auto.conf:" in where:
        file, line = where, f"ALTER SYSTEM SET max_connections = {value}"
        note = "set by ALTER SYSTEM: change it the same way"
    else:
        file = where if where != "default" else (s.read[0] if s.read else None)
        note = f"in {file}" if file else "in postgresql.conf"
    why = (f"{value:,} backends less {reserved} reserved slots hold {want:,} ordinary clients; "
           f"{note}; read at start only, so a restart (each connection is a backend process: "
           f"memory and the process limits grow with it)")
    return AppFix([line], file, None, base.RESTART, _restart_command(proc, datadir), want, why)


def read(proc: ProcView) -> AppCap:
    s, datadir = settings(proc)
    if not s.read:
        cap = base.unknown("postgresql", "max_connections", f"pid {proc.pid}", *s.unread)
        cap.why = ("PostgreSQL's configuration could not be read: run SHOW max_connections; "
                   "SHOW superuser_reserved_connections; in psql and tell tuner: --app-limit N")
        return cap
    major = version(datadir, s)
    maxconn, where = s.int("max_connections")
    su, su_where = s.int("superuser_reserved_connections")
    rc, _ = s.int("reserved_connections") if (major or 0) >= RESERVED_SINCE else (0, "")
    allows = max(maxconn - su - rc, 0)
    setting = f"max_connections {maxconn:,} - superuser_reserved_connections {su}" + (f" - reserved_connections {rc}" if rc else "")
    sure = base.DEFAULT if where == "default" else base.READ
    why = (f"ordinary clients get max_connections less the slots kept for superusers ({su}, "
           f"{su_where}){f' and for pg_use_reserved_connections ({rc})' if rc else ''}; "
           f"beyond it PostgreSQL answers 'remaining connection slots are reserved'")
    cap = AppCap("postgresql", setting, allows, where if where != "default" else
                 f"{s.read[0]} (not set: PostgreSQL's default)", sure, why, unread=s.unread)
    cap.notes.append("each connection is a backend process of its own: the postmaster's "
                     "RLIMIT_NOFILE does not cap connections; memory, pids and threads limits do")
    stale = changed_since_start(s, started_at(datadir, s) if datadir else None)
    if stale:
        cap.notes.append(f"{', '.join(stale)} changed after the server started: the running "
                         f"values may differ until a restart (SHOW max_connections tells)")
    cap.fix = fix_for(proc, s, datadir, su + rc, max(allows * 2, allows + 100))
    return cap


class PostgreSQL(base.Adapter):
    name = "postgresql"
    # src/backend/libpq/pqcomm.c (StreamServerPort): listen(fd, min(2 * MaxConnections,
    # PG_SOMAXCONN 10000)); no setting of its own.
    backlog_fixed = ("PostgreSQL passes twice max_connections (at most 10,000) to listen() "
                     "(pqcomm.c); raising max_connections raises it")

    def recognise(self, proc: ProcView) -> bool:
        return recognise(proc)

    def read(self, proc: ProcView) -> AppCap:
        return read(proc)

    def fix(self, proc: ProcView, cap: AppCap, want: int) -> Optional[AppFix]:
        s, datadir = settings(proc)
        major = version(datadir, s)
        reserved = s.int("superuser_reserved_connections")[0] + (
            s.int("reserved_connections")[0] if (major or 0) >= RESERVED_SINCE else 0)
        return fix_for(proc, s, datadir, reserved, want)


ADAPTER = PostgreSQL()
