"""nginx: each worker holds at most `worker_connections`, its listeners and its channel
to the master included (src/event/ngx_event.c, ngx_event_process_init takes one
connection per listening socket, src/os/unix/ngx_channel.c one for the channel); a
worker out of connections accepts and closes ("worker_connections are not enough").

The configuration is read as the running master sees it: its own -p/-c/-g from the
command line (nginx retitles itself "nginx: master process ARGS"), the compiled-in
prefix and conf path from the build options embedded in its root-owned binary (read,
not executed), includes followed.  Not `nginx -T`: testing a configuration opens its
error logs and creates its temp directories, and reading must create nothing.  Not
crossplane: it opens every include itself as root, following links, which the trust
layer (tuner/host/trust.py: read only what the master's user could) forbids; nginx's syntax (words, quotes, `;`, blocks, `#`) is small.
The worker count is the process tree's, not the config's (`auto` is the CPU count at
the last reload).
"""
from __future__ import annotations

import fnmatch
import glob
import math
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

from tuner.host import trust
from . import base
from .base import AppCap, AppFix, ProcView

DEFAULT_CONNECTIONS = 512          # src/event/ngx_event.c DEFAULT_CONNECTIONS
CHANNEL = 1                        # a worker's connection to the master (ngx_channel)
FD_RESERVE = 64                    # a worker's own files: logs, the listeners, epoll
MAX_INCLUDES = 256
MAX_NESTING = 32                   # blocks in blocks, includes counted (http server location if: 4)
WORKER_TITLE = "nginx: worker process"
PROXY_DIRECTIVES = ("proxy_pass", "fastcgi_pass", "uwsgi_pass", "scgi_pass", "grpc_pass",
                    "memcached_pass")
MASTER_FLAGS = {"-p", "-c", "-e", "-g", "-s"}


@dataclass
class Directive:
    name: str
    args: List[str]
    where: str                       # "file:line"
    block: List["Directive"] = field(default_factory=list)


class TooDeep(ValueError):
    """Blocks nested deeper than MAX_NESTING: the service wrote it, tuner does not read it."""


# ---------------------------------------------------------------- the syntax

def tokens(text: str) -> Iterator[Tuple[str, int, bool]]:
    """nginx's words: (word, line, quoted); `;`, `{`, `}` are words of their own."""
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in ";{}":
            yield c, line, False
            i += 1
        elif c in "\"'":
            j, word = i + 1, []
            while j < n and text[j] != c:
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                line += text[j] == "\n"
                word.append(text[j])
                j += 1
            yield "".join(word), line, True
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in ";{}":
                j += 2 if text[j] == "\\" else 1
            yield text[i:j], line, False
            i = j


def parse(text: str, path: str, depth: int = 0) -> List[Directive]:
    """The directives of one file as a tree (includes not yet followed), its top level
    `depth` blocks deep (where the include that names it stands); TooDeep past
    MAX_NESTING: what walks the tree later recurses, and the service sets the nesting."""
    stack: List[List[Directive]] = [[]]
    words: List[str] = []
    start = 0
    for word, line, quoted in tokens(text):
        if quoted or word not in ";{}":
            if not words:
                start = line
            words.append(word)
        elif word in ";{":
            if words:
                d = Directive(words[0], words[1:], f"{path}:{start}")
                stack[-1].append(d)
                if word == "{":
                    if depth + len(stack) > MAX_NESTING:
                        raise TooDeep(f"{path}: nested deeper than {MAX_NESTING} blocks: not read")
                    stack.append(d.block)
            words = []
        elif len(stack) > 1:
            stack.pop()
    return stack[0]


# ---------------------------------------------------------------- the master's view

def master_args(proc: ProcView) -> Dict[str, str]:
    """-p, -c, -e, -g of the master, from its retitled command line ("nginx: master
    process /usr/sbin/nginx -c /etc/nginx/nginx.conf -g daemon off;")."""
    words = " ".join(proc.cmdline).split()
    if words[:3] == ["nginx:", "master", "process"]:
        words = words[4:]
    else:
        words = words[1:]
    out: Dict[str, str] = {}
    i = 0
    while i < len(words):
        flag = words[i]
        if flag in MASTER_FLAGS and i + 1 < len(words):
            j = i + 1
            if flag == "-g":    # directives, with spaces: up to the next option
                while j < len(words) - 1 and words[j + 1] not in MASTER_FLAGS:
                    j += 1
            out[flag] = " ".join(words[i + 1:j + 1])
            i = j + 1
        else:
            i += 1
    return out


def compiled_paths(proc: ProcView) -> Tuple[Optional[str], Optional[str]]:
    """--prefix and --conf-path from the build options nginx embeds (what `nginx -V`
    prints), read from its root-owned binary without running it."""
    try:
        exe = base.trusted_binary(proc)
        blob = base.read_trusted_bytes(exe, limit=64 << 20)
    except (base.Untrusted, OSError):
        return None, None
    found = {}
    for key in (b"--prefix=", b"--conf-path="):
        m = re.search(re.escape(key) + rb"([^\s\x00]+)", blob)
        found[key] = m.group(1).decode(errors="replace") if m else None
    return found[b"--prefix="], found[b"--conf-path="]


def conf_path(proc: ProcView) -> Tuple[Optional[str], str]:
    """The master's configuration file and the directory its relative includes are
    resolved from (nginx: the -c file's directory)."""
    args = master_args(proc)
    prefix, default_conf = compiled_paths(proc)
    prefix = args.get("-p") or prefix or "/"
    conf = args.get("-c") or default_conf
    if conf is None:
        return None, prefix
    full = conf if conf.startswith("/") else os.path.join(prefix, conf)
    return full, os.path.dirname(full) or "/"


class Config:
    """The whole configuration, includes followed, as far as it could be read: each file
    as the master's user could read it (tuner/host/trust.py), all within one budget."""

    def __init__(self, proc: ProcView):
        self.unread: List[str] = []
        self.creds, self.budget = base.creds_of(proc), trust.Budget(includes=MAX_INCLUDES)
        self.owners = (0, proc.uid)      # root's files, or those of the user it runs as
        self.path, self.conf_prefix = conf_path(proc)
        extra = master_args(proc).get("-g")
        try:
            self.tree = parse(extra, "-g (command line)") if extra else []
        except TooDeep as e:
            self.tree = []
            self.unread.append(str(e))
        if self.path is None:
            self.unread.append("the master's configuration file: no -c and no --conf-path in "
                               "its binary's build options")
        else:
            self.tree += self._load(self.path)

    def _load(self, path: str, depth: int = 0) -> List[Directive]:
        try:
            text = base.read_trusted(path, self.owners, self.creds, self.budget)
        except (base.Untrusted, OSError) as e:
            base.note(self.unread, base.why_not(path, e))
            return []
        try:
            return self._expand(parse(text, path, depth), depth)
        except TooDeep as e:
            base.note(self.unread, str(e))
            return []

    def _names(self, pattern: str) -> List[str]:
        """An include's files: the pattern itself, or its last component's wildcard
        matched against a directory listed only if the master's user may (nginx's
        glob(3) with magic on the way is not followed: said so)."""
        if not glob.has_magic(pattern):
            return [pattern]
        folder, last = os.path.split(pattern)
        if glob.has_magic(folder):
            raise base.Untrusted("wildcards in a directory of the pattern: tuner matches only the file name")
        return [os.path.join(folder, n) for n in trust.list_dir(folder, self.creds, self.budget, self.owners)
                if fnmatch.fnmatchcase(n, last)]

    def _expand(self, tree: List[Directive], depth: int) -> List[Directive]:
        out: List[Directive] = []
        for d in tree:
            if d.name == "include" and d.args:
                pattern = d.args[0] if d.args[0].startswith("/") else os.path.join(self.conf_prefix, d.args[0])
                try:
                    self.budget.include()
                    names = self._names(pattern)
                except (base.Untrusted, OSError) as e:
                    base.note(self.unread, base.why_not(pattern, e))
                    continue
                for name in names:
                    out += self._load(name, depth)
                continue
            d.block = self._expand(d.block, depth + 1)
            out.append(d)
        return out

    def find(self, *path: str) -> Optional[Directive]:
        """The last directive at this block path ("events", "worker_connections"): the
        one nginx takes (a repeated one is refused at load, so there is at most one)."""
        level = self.tree
        for name in path[:-1]:
            level = [x for d in level if d.name == name for x in d.block]
        hits = [d for d in level if d.name == path[-1]]
        return hits[-1] if hits else None

    def anywhere(self, names) -> bool:
        def walk(tree):
            return any(d.name in names or walk(d.block) for d in tree)
        return walk(self.tree)


# ---------------------------------------------------------------- the adapter

def _int(d: Optional[Directive]) -> Optional[int]:
    try:
        return int(d.args[0]) if d and d.args else None
    except ValueError:
        return None


def _overhead(proc: ProcView) -> int:
    """Connections a worker spends before any client: one per listening address, one
    for its channel to the master."""
    return len(set(proc.listeners)) + CHANNEL


def idle_range(wc: int, over: int) -> List[int]:
    """[low, high] of the idle keep-alive connections one worker keeps.  When a new
    connection finds no more than worker_connections/16 free, ngx_get_connection calls
    ngx_drain_connections (src/core/ngx_connection.c), which closes the
    max(min(32, reusable/8), 1) idle keep-alive connections it reused least recently: a
    worker of idle clients holds W - its own (listeners, channel) - W/16 at most, and that
    many fewer just after a drain.  Busy connections are never drained: they reach the cap."""
    high = max(wc - over - wc // 16, 0)
    return [max(high - max(min(32, high // 8), 1), 0), high]


class Nginx(base.Adapter):
    name = "nginx"
    # ngx_http_core_module: listen ... backlog=N; NGX_LISTEN_BACKLOG is 511 on Linux.
    backlog_default = 511
    backlog_setting = "nginx: listen PORT backlog=N; in the server block (default 511), then a reload"

    def recognise(self, proc: ProcView) -> bool:
        return proc.exe_name == "nginx" or bool(proc.cmdline) and proc.cmdline[0].startswith("nginx: ")

    def read(self, proc: ProcView) -> AppCap:
        conf = Config(proc)
        workers = base.workers(proc, WORKER_TITLE) or [proc]
        wc_directive = conf.find("events", "worker_connections")
        wc = _int(wc_directive)
        if wc is None and conf.unread:
            return base.unknown("nginx", "worker_connections", conf.path or "?", *conf.unread)
        n, over = len(workers), _overhead(proc)
        where = wc_directive.where if wc is not None else f"not set in {conf.path}: nginx's default"
        cap = AppCap(
            "nginx", f"worker_connections {wc or DEFAULT_CONNECTIONS} x {n} worker{'s' if n > 1 else ''}",
            n * max((wc or DEFAULT_CONNECTIONS) - over, 0), where,
            base.READ if wc is not None else base.DEFAULT,
            f"each of the {n} worker{'s' if n > 1 else ''} holds at most worker_connections "
            f"({wc or DEFAULT_CONNECTIONS:,}), {over} of them taken by its listener"
            f"{'s' if over > 2 else ''} and its channel to the master; a worker out of "
            f"connections accepts and closes", unread=conf.unread)
        cap.idle = [n * v for v in idle_range(wc or DEFAULT_CONNECTIONS, over)]
        if conf.anywhere(PROXY_DIRECTIVES):
            cap.notes.append("nginx proxies here: each proxied request takes a second connection "
                             "(to its upstream) from the same worker_connections, so proxied "
                             "clients get about half of the figure")
        cap.notes += tls_notes(conf)
        return cap

    def fix(self, proc: ProcView, cap: AppCap, want: int) -> Optional[AppFix]:
        conf = Config(proc)
        workers = base.workers(proc, WORKER_TITLE) or [proc]
        n, over = len(workers), _overhead(proc)
        fds_each = 2 if conf.anywhere(PROXY_DIRECTIVES) else 1
        per = math.ceil(want / n) + over
        nofile = per * fds_each + FD_RESERVE
        ceiling = _nofile_ceiling(proc, workers)
        if ceiling is not None and nofile > ceiling:
            nofile = ceiling      # the master cannot set a worker's limit past it
            per = (ceiling - FD_RESERVE) // fds_each
        wc = conf.find("events", "worker_connections")
        lines = [f"worker_connections {per};"]
        if nofile > min((w.nofile_soft or 0) for w in workers) or conf.find("worker_rlimit_nofile"):
            lines.append(f"worker_rlimit_nofile {nofile};")
        if per > over and n * (per - over) < want:
            # The workers' hard descriptor limit caps each one: more workers reach the target
            # (issue 28: the fix for 1,000,000 proposed 19,936 each and stopped at 19,934).
            n = math.ceil(want / (per - over))
            lines.append(f"worker_processes {n};")
        command = f"systemctl reload {shlex.quote(proc.unit)}" if proc.unit else f"kill -HUP {proc.pid}"
        return AppFix(lines, wc.where if wc else conf.path, nofile, base.RELOAD, command,
                      n * (per - over),
                      "worker_connections in the events block, worker_rlimit_nofile and "
                      "worker_processes at the top level (each worker's descriptor limit, set by "
                      "the master, and how many workers share the connections); a reload starts "
                      "new workers with all three")


def tls_notes(conf: Config) -> List[str]:
    """The TLS listeners (`listen ... ssl`) and the settings that change what a TLS
    connection costs nginx in memory."""
    listens = [d for server in _servers(conf.tree) for d in server.block
               if d.name == "listen" and "ssl" in d.args[1:]]
    if not listens:
        return []
    size = conf.find("http", "ssl_buffer_size")
    cache = conf.find("http", "ssl_session_cache")
    return [f"TLS on {', '.join(d.args[0] for d in listens[:4])} ({listens[0].where}): each connection "
            f"holds OpenSSL's state (tens of KB: its session, the handshake's keys; nginx sets "
            f"SSL_MODE_RELEASE_BUFFERS, so an idle one frees its 16 KiB read and write buffers) and, "
            f"while it sends, an ssl_buffer_size buffer of "
            f"{size.args[0] if size and size.args else '16k (the default)'}"
            + (f" ({size.where})" if size else "")
            + f"; ssl_session_cache {' '.join(cache.args) if cache else 'none (the default)'} is shared "
            f"memory, not per connection: tuner probe --connect over TLS measures both sides"]


def _servers(tree: List[Directive]) -> List[Directive]:
    return [s for h in tree if h.name == "http" for s in h.block if s.name == "server"]


def _nofile_ceiling(proc: ProcView, workers: List[ProcView]) -> Optional[int]:
    """The highest worker_rlimit_nofile the master can give its workers: their hard
    limit, unless the master may raise it (CAP_SYS_RESOURCE)."""
    if proc.cap_sys_resource:
        return None
    hards = [w.nofile_hard for w in workers if w.nofile_hard]
    return min(hards) if hards else None


ADAPTER = Nginx()
