"""HAProxy: the global `maxconn` (or `-n N`), else the value HAProxy computes for itself
from its descriptor limit; each frontend's own `maxconn` (default: the global one).  At
its maxconn HAProxy stops accepting: the rest wait in the accept queue.

`show info` over a stats socket the configuration names (a root-owned socket at a path
only root can change) gives Maxconn as the running process has it: read first.  Else
the configuration files of its -f options, and HAProxy 2.6's own rule when no maxconn
is set (src/haproxy.c compute_ideal_maxconn): remain = max(soft, hard RLIMIT_NOFILE at
start) - maxsock (10 reserved, one per listening socket, each stats socket's CLI
maxconn, 10 by default) - 3 per thread (a poller and a wake-up pipe), maxconn = remain / 2
(two descriptors per proxied connection), at least 100.  Health checks, SSL, splicing,
`-m`, `fd-hard-limit` change that rule: then tuner says it cannot compute it.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from tuner.host import trust
from . import base
from .base import AppCap, AppFix, ProcView

RESERVED = 10               # global.maxsock = 10: "reserve 10 fds"
FDS_PER_THREAD = 3          # one epoll fd and a wake-up pipe per thread
CLI_MAXCONN = 10            # a stats socket's CLI frontend: 10 connections unless `stats maxconn`
DEFAULT_MAXCONN = 100
SECTIONS = ("global", "defaults", "frontend", "listen", "backend", "peers", "resolvers",
            "userlist", "mailers", "program", "http-errors", "ring", "cache")
# What makes HAProxy's automatic maxconn depend on more than the descriptor limit.
NOT_MODELLED = {"fd-hard-limit": "fd-hard-limit", "ulimit-n": "ulimit-n", "maxpipes": "maxpipes",
                "ssl": "SSL", "check": "health checks", "splice-auto": "splicing",
                "splice-request": "splicing", "splice-response": "splicing",
                "ssl-engine": "SSL engines"}


@dataclass
class Section:
    kind: str
    name: str
    where: str
    lines: List[Tuple[List[str], str]] = field(default_factory=list)   # (words, "file:line")

    def get(self, keyword: str) -> Optional[Tuple[List[str], str]]:
        hits = [(w, at) for w, at in self.lines if w[0] == keyword]
        return hits[-1] if hits else None


def parse(text: str, path: str, sections: List[Section]) -> None:
    """HAProxy's line syntax: a section keyword opens a section; every other line is a
    keyword and its words ('#' starts a comment)."""
    for number, raw in enumerate(text.splitlines(), 1):
        try:
            words = shlex.split(raw, comments=True)
        except ValueError:
            words = raw.split("#", 1)[0].split()
        if not words:
            continue
        at = f"{path}:{number}"
        if words[0] in SECTIONS:
            sections.append(Section(words[0], words[1] if len(words) > 1 else "", at))
        elif sections:
            sections[-1].lines.append((words, at))


def _config_args(proc: ProcView) -> List[str]:
    """The -f arguments in order, absolute (relative ones from its working directory)."""
    argv = list(proc.cmdline)
    return [argv[i + 1] if os.path.isabs(argv[i + 1]) else os.path.join(proc.cwd or "/", argv[i + 1])
            for i, arg in enumerate(argv) if arg == "-f" and i + 1 < len(argv)]


class Config:
    """Its -f files (a directory standing for its *.cfg files, in name order), each read
    as the process's user could (tuner/host/trust.py), all within one budget."""

    def __init__(self, proc: ProcView):
        self.sections: List[Section] = []
        self.unread: List[str] = []
        self.files: List[str] = []
        creds, budget = base.creds_of(proc), trust.Budget()
        owners = (0, proc.uid)           # root's files, or those of the user it runs as
        for path in _config_args(proc):
            try:
                self.files += [os.path.join(path, n) for n in trust.list_dir(path, creds, budget, owners)
                               if n.endswith(".cfg")] if trust.is_dir(path, creds, None) else [path]
            except (base.Untrusted, OSError) as e:
                base.note(self.unread, base.why_not(path, e))
        for path in self.files:
            try:
                parse(base.read_trusted(path, owners, creds, budget), path, self.sections)
            except (base.Untrusted, OSError) as e:
                base.note(self.unread, base.why_not(path, e))
        if not self.files and not self.unread:
            self.unread.append("no -f configuration file on its command line")
        self.creds = creds

    def of(self, kind: str) -> List[Section]:
        return [s for s in self.sections if s.kind == kind]

    def glob_setting(self, keyword: str) -> Optional[Tuple[List[str], str]]:
        hits = [h for s in self.of("global") for h in [s.get(keyword)] if h]
        return hits[-1] if hits else None

    def frontends(self) -> List[Tuple[Section, Optional[Tuple[List[str], str]]]]:
        """Each frontend/listen section with the maxconn it has (its own, else the last
        defaults section's before it)."""
        out, default = [], None
        for s in self.sections:
            if s.kind == "defaults":
                default = s.get("maxconn") or default
            elif s.kind in ("frontend", "listen") and any(w[0] == "bind" for w, _ in s.lines):
                out.append((s, s.get("maxconn") or default))
        return out

    def stats_sockets(self) -> List[Tuple[str, int]]:
        """(path, its CLI's maxconn) of each UNIX stats socket in global."""
        out = []
        for s in self.of("global"):
            limit = next((int(w[2]) for w, _ in s.lines if w[:2] == ["stats", "maxconn"]
                          and len(w) > 2 and w[2].isdigit()), CLI_MAXCONN)
            for words, _ in s.lines:
                if words[:2] == ["stats", "socket"] and len(words) > 2:
                    path = words[2].removeprefix("unix@")
                    if path.startswith("/"):
                        out.append((path, limit))
        return out

    def not_modelled(self) -> List[str]:
        found = []
        for s in self.sections:
            for words, _ in s.lines:
                hits = [NOT_MODELLED[w] for w in words if w in NOT_MODELLED]
                if s.kind == "global" and words[0] in NOT_MODELLED:
                    hits.append(NOT_MODELLED[words[0]])
                found += hits
        return sorted(set(found))


def tls_notes(conf: Config) -> List[str]:
    """The TLS binds (`bind ... ssl crt`) and the global tune.* settings that change what
    a TLS connection costs HAProxy in memory."""
    binds = [(words, at) for s in conf.sections if s.kind in ("frontend", "listen")
             for words, at in s.lines if words[0] == "bind" and "ssl" in words[2:]]
    if not binds:
        return []
    tune = {k: conf.glob_setting(k) for k in ("tune.bufsize", "tune.ssl.cachesize", "tune.ssl.maxrecord")}
    said = [f"{k} {v[0][1]} ({v[1]})" for k, v in tune.items() if v and len(v[0]) > 1]
    return [f"TLS on bind {', '.join(w[1] for w, _ in binds[:4])} ({binds[0][1]}): each connection holds "
            f"OpenSSL's state (tens of KB; HAProxy frees OpenSSL's buffers while idle) and its two "
            f"tune.bufsize buffers while data flows; "
            + ("; ".join(said) if said else "tune.bufsize 16384 and tune.ssl.cachesize 20000 (defaults)")
            + " (the session cache is shared, not per connection)"]


def show_info(path: str, creds: trust.Creds = trust.ROOT) -> Dict[str, str]:
    """`show info` of the running process over a trusted stats socket it could reach."""
    reply = base.exchange(base.unix_connect(path, creds=creds), b"show info\n").decode(errors="replace")
    return dict(line.split(": ", 1) for line in reply.splitlines() if ": " in line)


def _int(words: Optional[Tuple[List[str], str]]) -> Optional[int]:
    try:
        return int(words[0][1]) if words and len(words[0]) > 1 else None
    except ValueError:
        return None


def computed_maxconn(proc: ProcView, conf: Config) -> Tuple[int, str]:
    """HAProxy 2.6's automatic maxconn (module docstring) and the words for it."""
    boot = max(proc.nofile_soft or 0, proc.nofile_hard or 0)
    nbthread = _int(conf.glob_setting("nbthread")) or proc.threads
    sockets = conf.stats_sockets()
    maxsock = RESERVED + len(set(proc.listeners)) + sum(1 + m for _, m in sockets)
    value = max((boot - maxsock - FDS_PER_THREAD * nbthread) // 2, DEFAULT_MAXCONN)
    return value, (f"no maxconn set: HAProxy computes (max(soft, hard RLIMIT_NOFILE) {boot:,} - "
                   f"{maxsock} descriptors for its listeners, stats sockets and reserve - "
                   f"{FDS_PER_THREAD} x {nbthread} threads) / 2 = {value:,}")


class HAProxy(base.Adapter):
    name = "haproxy"
    # HAProxy's configuration manual: "backlog" in a frontend/listen section (or on a bind
    # line); without it the frontend's maxconn is passed to listen().
    backlog_setting = "HAProxy: backlog N in the frontend (or bind ... backlog N; default its maxconn), then a reload"

    def recognise(self, proc: ProcView) -> bool:
        return proc.exe_name == "haproxy"

    def read(self, proc: ProcView) -> AppCap:
        conf = Config(proc)
        cap = self._frontend_bound(conf, self._global(proc, conf))
        cap.notes += tls_notes(conf)
        return cap

    def _global(self, proc: ProcView, conf: Config) -> AppCap:
        """The global maxconn: show info, else -n, else the config, else computed."""
        unread = list(conf.unread)
        for path, _ in conf.stats_sockets():
            try:
                info = show_info(path, conf.creds)
                value = int(info["Maxconn"])
                return AppCap("haproxy", f"maxconn {value:,}", value, f"show info over {path}",
                              base.READ, "Maxconn of the running process: past it HAProxy stops "
                              "accepting and the rest wait in the accept queue", unread=unread)
            except (base.Untrusted, OSError, KeyError, ValueError) as e:
                unread.append(base.why_not(f"show info over {path}", e))
        given = proc.option("-n")
        if given and given.isdigit():
            return AppCap("haproxy", f"maxconn {int(given):,}", int(given), "-n on its command line",
                          base.READ, "global maxconn from -n", unread=unread)
        setting = conf.glob_setting("maxconn")
        if _int(setting) is not None:
            return AppCap("haproxy", f"maxconn {_int(setting):,}", _int(setting), setting[1], base.READ,
                          "global maxconn: past it HAProxy stops accepting and the rest wait in "
                          "the accept queue", unread=unread)
        if conf.unread or conf.not_modelled() or proc.option("-m"):
            why = conf.not_modelled() + (["-m (memory)"] if proc.option("-m") else [])
            return base.unknown("haproxy", "maxconn", ", ".join(conf.files) or "?", *unread,
                                *([f"no maxconn set, and HAProxy's own figure depends on "
                                   f"{', '.join(why)}: give it a stats socket"] if why else []))
        value, words = computed_maxconn(proc, conf)
        return AppCap("haproxy", f"maxconn {value:,} (automatic)", value,
                      f"computed from RLIMIT_NOFILE; no maxconn in {', '.join(conf.files)}",
                      base.COMPUTED, words, unread=unread)

    def _frontend_bound(self, conf: Config, cap: AppCap) -> AppCap:
        """Frontends with their own maxconn whose sum is below the global one bind first."""
        fronts = conf.frontends()
        if cap.allows is None or not fronts or any(_int(m) is None for _, m in fronts):
            return cap
        total = sum(_int(m) for _, m in fronts)
        if total >= cap.allows:
            return cap
        names = ", ".join(f"{s.name} {_int(m):,}" for s, m in fronts)
        where = fronts[0][1][1] if len(fronts) == 1 else ", ".join(m[1] for _, m in fronts)
        return AppCap("haproxy", f"frontend maxconn {names}", total, where, base.READ,
                      f"each frontend accepts up to its own maxconn (global {cap.setting})",
                      unread=cap.unread)

    def fix(self, proc: ProcView, cap: AppCap, want: int) -> Optional[AppFix]:
        conf = Config(proc)
        setting = conf.glob_setting("maxconn")
        glob_at = setting[1] if setting else (conf.of("global")[0].where if conf.of("global") else None)
        lines = [f"maxconn {want}"]
        low = [f"frontend {s.name} ({m[1]})" for s, m in conf.frontends()
               if _int(m) is not None and _int(m) < want]
        nbthread = _int(conf.glob_setting("nbthread")) or proc.threads
        nofile = 2 * want + RESERVED + len(set(proc.listeners)) + FDS_PER_THREAD * nbthread
        master_worker = any(a in ("-W", "-Ws") for a in proc.cmdline)
        if proc.unit:
            command = f"systemctl {'reload' if master_worker else 'restart'} {shlex.quote(proc.unit)}"
        elif master_worker:
            command = f"kill -USR2 {proc.pid}"
        else:   # its binary and argv only when root's and trusted: a user's would run as root
            start = base.start_command(proc)
            command = f"kill {proc.pid}, then " + (f"start it again: {start}" if start else base.by_owner(proc))
        hard = "" if proc.cap_sys_resource or (proc.nofile_hard or 0) >= nofile else (
            f"; its hard RLIMIT_NOFILE {proc.nofile_hard:,} must go to {nofile:,} first "
            f"(LimitNOFILE=, or ulimit -n before it starts)")
        return AppFix(lines, glob_at, nofile, base.RELOAD if master_worker else base.RESTART, command,
                      want, "in the global section" + (f", and the same in {', '.join(low)}" if low else "")
                      + f"; HAProxy raises its own descriptor limit to {nofile:,} at start{hard}")


ADAPTER = HAProxy()
