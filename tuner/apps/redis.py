"""Redis: `maxclients`, as the running server holds it.

Redis refuses a client beyond `maxclients` in its own words ("-ERR max number of
clients reached", then it closes), whatever the kernel and its descriptors allow.  At
start (server.c adjustOpenFilesLimit) it needs maxclients + 32 descriptors (32 =
CONFIG_MIN_RESERVED_FDS: listeners, logs, persistence); when its soft RLIMIT_NOFILE is
lower it raises it as far as the hard limit lets it (setting soft = hard = what it got)
and otherwise lowers maxclients to that limit - 32: under `ulimit -n 1024` the default
10,000 becomes 992.  `CONFIG SET maxclients N` runs the same rule live, so it works
without a restart as long as N + 32 fits under the hard limit.

Read, most sure first: `INFO clients` / `CONFIG GET maxclients` over the server's own
loopback listener (no password: a Redis that asks for one answers NOAUTH, and tuner says
so instead of guessing); else the config file named on the command line plus the
command line's own `--maxclients`, with the reduction above computed from the process's
descriptor limit.  Redis retitles its process ("redis-server 127.0.0.1:6379"), so the
config file is usually no longer on its command line: the fix takes it from `INFO
server`'s config_file (read under the trust rules; a file not there is said so).

Its memory caps (issue 26, `memory_caps`), asked the same way (INFO memory, clients,
stats; CONFIG GET maxmemory-clients): `maxmemory-clients` (Redis 7.0+, bytes or a
percentage of maxmemory, at least 128 KiB) is a connection cap: once all its clients
together count more, Redis frees the ones using the most memory (evictClients,
INFO stats evicted_clients).  It is set against Redis's own count of its clients
(mem_clients_normal), not its PSS, so the probe reads that count at each step and the
cost model fits it.  `maxmemory` is where writes fail (noeviction: -OOM) or keys go,
clients' memory counted in it; connections are still accepted there (a soft limit).
"""
from __future__ import annotations

import os
import shlex
import socket
from typing import Dict, List, Optional, Tuple

from tuner.host import trust
from tuner.host.numfmt import size
from . import base
from .base import AppCap, AppFix, MemoryCap, ProcView

RESERVED_FDS = 32            # CONFIG_MIN_RESERVED_FDS in Redis's server.h
DEFAULT_MAXCLIENTS = 10000   # config.c: createUIntConfig("maxclients", ..., 10000, ...)
INCLUDE_DEPTH = 8
REPLY_MAX = 64 << 10
REPLY_DEPTH = 32             # arrays in arrays: INFO and CONFIG GET answer one level
# networking.c getClientEvictionLimit: a maxmemory-clients below this is taken as this, so
# a bad setting cannot cut every client off.
CLIENT_EVICTION_MIN = 128 << 10
# What a client costs Redis as it counts it (networking.c getClientMemoryUsage: its struct,
# its reply buffer, its query buffer's allocation, its argv): a new one gets a 16 KiB reply
# buffer (PROTO_REPLY_CHUNK_BYTES) that clientsCron shrinks to 1 KiB (PROTO_REPLY_MIN_BYTES)
# while its replies stay small (measured on 7.0.15: within two seconds); a command read grows
# its query buffer to 16 KiB (PROTO_IOBUF_LEN; 20,472 B counted, jemalloc's 20 KiB class),
# given back after 2 s idle (clientsCronResizeQueryBuffer).  Measured: an idle client counts
# 1,800 B (CLIENT LIST tot-mem: its 768 B struct, the 1 KiB reply buffer, an 8 B empty
# query buffer), one that sent a command in the last ~3 s 22,272 B.
REPLY_CHUNK, REPLY_MIN, IOBUF = 16 << 10, 1 << 10, 16 << 10
NAMES = ("redis-server", "redis-check-rdb")   # Debian links redis-server to redis-check-rdb


class Refused(Exception):
    """The server answered with an error line (its own words)."""


class TooDeep(Refused):
    """The server's answer nests deeper than tuner reads."""


# ---------------------------------------------------------------- recognising

def recognise(proc: ProcView) -> bool:
    first = proc.cmdline[0].split()[0] if proc.cmdline and proc.cmdline[0].split() else ""
    return proc.name == "redis-server" or os.path.basename(first) == "redis-server" \
        or (proc.exe_name in NAMES and proc.name.startswith("redis"))


# ---------------------------------------------------------------- asking the server

def command(*words: str) -> bytes:
    """A RESP array of bulk strings: what redis-cli sends."""
    out = [f"*{len(words)}\r\n".encode()]
    for w in words:
        b = w.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _scalar(buf: bytes, at: int, end: int) -> Optional[Tuple[object, int]]:
    """A reply that is not an array, its first line ending at `end`: (value, next),
    None when incomplete; ValueError for a length or number that is none."""
    kind, line = buf[at:at + 1], buf[at + 1:end].decode("utf-8", "replace")
    if kind == b"+":
        return line, end + 2
    if kind == b"-":
        return Refused(line), end + 2
    if kind == b":":
        return int(line), end + 2
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, end + 2
        if len(buf) < end + 2 + n + 2:
            return None
        return buf[end + 2:end + 2 + n].decode("utf-8", "replace"), end + 2 + n + 2
    raise ValueError(kind)


def _reply(buf: bytes, at: int = 0) -> Optional[Tuple[object, int]]:
    """One RESP reply from buf[at:] -> (value, end), None when incomplete.  Errors come
    back as Refused instances (raised by the caller), arrays as lists.  A loop over a
    stack of open arrays, at most REPLY_DEPTH deep: the server decides the nesting (one
    answering '*1\\r\\n' 16,000 times made a recursive reader raise RecursionError)."""
    stack: List[Tuple[list, int]] = []     # (items so far, items the array has)
    pos = at
    while True:
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None
        try:
            if buf[pos:pos + 1] == b"*":
                n = int(buf[pos + 1:end])
                if n > 0 and len(stack) >= REPLY_DEPTH:
                    raise TooDeep(f"its answer is nested deeper than {REPLY_DEPTH} arrays: not read")
                pos = end + 2
                if n > 0:
                    stack.append(([], n))
                    continue
                value: object = []
            else:
                got = _scalar(buf, pos, end)
                if got is None:
                    return None
                value, pos = got
        except ValueError:
            raise Refused(f"answered {buf[pos:end][:60]!r}: not Redis's protocol") from None
        while stack:                 # the value ends the arrays it completes
            items, n = stack[-1]
            items.append(value)
            if len(items) < n:
                break
            value = stack.pop()[0]
        else:
            return value, pos


def ask(sock: socket.socket, *words: str) -> object:
    """Send one command, read its one reply; Refused for an error reply."""
    deadline = base.answer_deadline(sock)
    sock.sendall(command(*words))
    buf = b""
    while len(buf) < REPLY_MAX:
        chunk = base.recv_by(sock, deadline)
        if not chunk:
            raise Refused("closed the connection without an answer")
        buf += chunk
        got = _reply(buf)
        if got is not None:
            if isinstance(got[0], Refused):
                raise got[0]
            return got[0]
    raise Refused("answered more than 64 KiB")


def info_fields(text: str) -> Dict[str, str]:
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def from_server(proc: ProcView, port: int) -> Tuple[Optional[int], Optional[int], str]:
    """(maxclients, connected clients, how it was asked) over the server's own listener;
    Refused / OSError / base.Untrusted when it cannot be asked."""
    with base.local_connect(proc, port) as sock:
        where = "INFO clients over {}:{}".format(*sock.getpeername()[:2])
        fields = info_fields(str(ask(sock, "INFO", "clients")))
        connected = int(fields["connected_clients"]) if fields.get("connected_clients", "").isdigit() else None
        if fields.get("maxclients", "").isdigit():       # INFO has it since Redis 6.2
            return int(fields["maxclients"]), connected, where
        got = ask(sock, "CONFIG", "GET", "maxclients")
        where = where.replace("INFO clients", "CONFIG GET maxclients")
        if isinstance(got, list) and len(got) == 2 and str(got[1]).isdigit():
            return int(got[1]), connected, where
        raise Refused(f"answered {got!r} to CONFIG GET maxclients")


NO_FILE = ""        # config_from_info: Redis answered, and no file a fix may name


def config_file(proc: ProcView, port: Optional[int], unread: List[str]) -> Optional[str]:
    """The config file a fix names: the one the running server says (INFO server), and the
    command line's only when Redis could not be asked: where Redis answered that it runs
    without a file, an absolute first argument is not one (a script the process runs)."""
    said = config_from_info(proc, port, unread)
    return (said or None) if said is not None else config_path(proc)


def config_from_info(proc: ProcView, port: Optional[int], unread: List[str]) -> Optional[str]:
    """The config file the running server names (`INFO server` config_file: Redis retitles
    its process, so the command line no longer shows it), when the file is there and
    readable under the trust rules; NO_FILE when Redis says it runs without one or its
    file cannot be read (the reason in `unread`); None when Redis could not be asked."""
    if port is None:
        return None
    try:
        with base.local_connect(proc, port) as sock:
            path = info_fields(str(ask(sock, "INFO", "server"))).get("config_file", "").strip()
    except (Refused, TooDeep, OSError, base.Untrusted):
        return None                  # said already where maxclients was asked
    if not path:
        base.note(unread, "INFO server names no config_file: Redis runs without one, so "
                          "CONFIG REWRITE cannot keep a change (start it with the line)")
        return NO_FILE
    try:
        base.read_trusted(path, (0, proc.uid), base.creds_of(proc))
    except (OSError, base.Untrusted) as e:
        base.note(unread, f"INFO server's config_file: {base.why_not(path, e)}")
        return NO_FILE
    return path


# ---------------------------------------------------------------- reading its files

def config_path(proc: ProcView) -> Optional[str]:
    """The config file on the command line (redis-server [FILE] [--opt value ...]), if
    the process still shows it (Redis retitles itself unless `set-proc-title no`)."""
    args = list(proc.cmdline[1:]) if len(proc.cmdline) > 1 else []
    if args and not args[0].startswith("-") and os.path.isabs(args[0]):
        return args[0]
    return None


def cmdline_options(proc: ProcView) -> Dict[str, str]:
    """`--name value` pairs after the config file: Redis appends them to the file's text."""
    out: Dict[str, str] = {}
    args = list(proc.cmdline[1:])
    for i, arg in enumerate(args):
        if arg.startswith("--") and len(arg) > 2:
            out[arg[2:].lower()] = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else ""
    return out


def parse_config(path: str, owners, unread: List[str], depth: int = 0,
                 creds: trust.Creds = trust.ROOT, budget: Optional[trust.Budget] = None
                 ) -> Dict[str, Tuple[str, str]]:
    """Directive -> (value, "file:line"), the last one winning, `include` followed (as
    Redis does, in place), each file read as the service's user could (`creds`) under
    the trust layer's rules, all within one `budget` (files, bytes, includes, time)."""
    budget = budget or trust.Budget()
    out: Dict[str, Tuple[str, str]] = {}
    try:
        text = base.read_trusted(path, owners, creds, budget)
    except (OSError, base.Untrusted) as e:
        base.note(unread, base.why_not(path, e))
        return out
    for n, line in enumerate(text.splitlines(), 1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        if not words:
            continue
        key = words[0].lower()
        if key == "include" and len(words) > 1:
            try:
                if depth >= INCLUDE_DEPTH:
                    raise trust.OverBudget(f"includes nested deeper than {INCLUDE_DEPTH}")
                budget.include()
            except trust.OverBudget as e:
                base.note(unread, f"the rest of its includes not read: {e}")
                continue
            out.update(parse_config(words[1], owners, unread, depth + 1, creds, budget))
        elif len(words) > 1:
            out[key] = (words[1], f"{path}:{n}")
    return out


def from_files(proc: ProcView, unread: List[str]) -> Tuple[Optional[int], str, Optional[str]]:
    """(configured maxclients, where, the config file) from the command line and the
    config file; maxclients None when nothing could be read."""
    path = config_path(proc)
    opts = cmdline_options(proc)
    conf: Dict[str, Tuple[str, str]] = {}
    if path:
        conf = parse_config(path, (0, proc.uid), unread, creds=base.creds_of(proc))
    for key, value in opts.items():
        conf[key] = (value, f"command line of pid {proc.pid}")
    if "maxclients" in conf and conf["maxclients"][0].isdigit():
        return int(conf["maxclients"][0]), conf["maxclients"][1], path
    if path and not unread:
        return DEFAULT_MAXCLIENTS, f"{path} (not set: Redis's default)", path
    if not path:
        unread.append(f"pid {proc.pid}'s command line ({' '.join(proc.cmdline)[:80]}) no longer "
                      f"names its config file (Redis retitles its process)")
    return None, "", path


# ---------------------------------------------------------------- the rule

def effective(configured: int, nofile_soft: Optional[int]) -> int:
    """maxclients as Redis runs it: lowered to its descriptor limit - 32 at start."""
    if nofile_soft is None or nofile_soft >= configured + RESERVED_FDS:
        return configured
    return max(nofile_soft - RESERVED_FDS, 0)


def _config_set(proc: ProcView, want: int, path: Optional[str], cli: str, why: str) -> AppFix:
    """maxclients `want` live: CONFIG SET (and CONFIG REWRITE when there is a file)."""
    nofile = want + RESERVED_FDS
    command = f"{cli} CONFIG SET maxclients {want}" + (f" && {cli} CONFIG REWRITE" if path else "")
    why += ("; CONFIG REWRITE keeps it in the config file" if path else
            "; put the line in its config file too, or a restart loses it")
    return AppFix([f"maxclients {want}"], path, nofile, base.RELOAD, command, want, why)


def fix_for(proc: ProcView, want: int, path: Optional[str], port: Optional[int],
            now: Optional[int] = None) -> AppFix:
    """`maxclients want` and the descriptors it needs (want + 32).  CONFIG SET raises
    Redis's own soft limit when the hard limit has room.  When it has not, the largest
    value that fits (hard - 32) live if that is more than `now`, with what else the rest
    needs; else a restart under a higher limit (Redis sets soft = hard when it raises)."""
    nofile = want + RESERVED_FDS
    cli = "redis-cli" + (f" -p {port}" if port and port != 6379 else "")
    hard = proc.nofile_hard
    if hard is None or nofile <= hard or proc.cap_sys_resource:
        return _config_set(proc, want, path, cli,
                           f"CONFIG SET takes it live (Redis raises its own descriptor limit to "
                           f"{nofile:,}, within its hard limit {hard or 0:,})")
    beyond = (f"{want:,} needs a hard RLIMIT_NOFILE of {nofile:,}: restart it under "
              f"LimitNOFILE={nofile} (or ulimit -n {nofile}) with maxclients {want} in "
              f"{path or 'its config file'}")
    fit = hard - RESERVED_FDS
    if now is not None and fit > now:
        return _config_set(proc, fit, path, cli,
                           f"the most its hard RLIMIT_NOFILE {hard:,} lets Redis take ({hard:,} - "
                           f"{RESERVED_FDS}), live; beyond it, {beyond}")
    command = (f"systemctl restart {shlex.quote(proc.unit)}" if proc.unit else
               f"restart Redis under RLIMIT_NOFILE >= {nofile}")
    why = (f"its hard RLIMIT_NOFILE {hard:,} is below the {nofile:,} descriptors maxclients "
           f"{want:,} needs, so CONFIG SET would be refused: {beyond}")
    return AppFix([f"maxclients {want}"], path, nofile, base.RESTART, command, want, why)


def _how_to_tell(port: Optional[int]) -> str:
    cli = "redis-cli" + (f" -p {port}" if port else "")
    return (f"read it yourself ({cli} --askpass CONFIG GET maxclients) and tell tuner: "
            f"--app-limit N")


def default_fix(proc: ProcView, value: int, configured: Optional[int], path, port) -> Optional[AppFix]:
    """What takes Redis's own cap out of the way: below its descriptors, maxclients up to
    them (RLIMIT_NOFILE - 32, live); lowered to them at start, the configured value (or
    the default 10,000) with the descriptors it needs."""
    room = (proc.nofile_soft or 0) - RESERVED_FDS
    if value < room:
        return fix_for(proc, room, path, port, value)
    want = max(configured or DEFAULT_MAXCLIENTS, value + 1)
    return fix_for(proc, want, path, port, value)


def _asked(proc: ProcView, port: int, value: int, connected: Optional[int], where: str) -> AppCap:
    lowered = proc.nofile_soft is not None and value + RESERVED_FDS >= proc.nofile_soft
    why = (f"maxclients {value:,} is RLIMIT_NOFILE {proc.nofile_soft or 0:,} - {RESERVED_FDS}: Redis "
           f"lowered it to its descriptor limit at start (it keeps {RESERVED_FDS} for itself)"
           if lowered else "Redis refuses a client beyond maxclients (-ERR max number of clients reached)")
    if connected is not None:
        why += f"; {connected:,} connected now (tuner's question among them)"
    unread: List[str] = []
    path = config_file(proc, port, unread)
    cap = AppCap("redis", f"maxclients {value:,}", value, where, base.READ, why, unread=unread)
    cap.fix = default_fix(proc, value, None, path, port)
    return cap


def read(proc: ProcView) -> AppCap:
    """The running Redis's maxclients, from the server itself when it lets tuner ask."""
    unread: List[str] = []
    port = proc.ports[0] if proc.ports else None
    if port is not None:
        try:
            return _asked(proc, port, *from_server(proc, port))
        except TooDeep as e:
            unread.append(f"the server on port {port}: {e}")
        except Refused as e:
            text = str(e)
            if text.upper().startswith(("NOAUTH", "WRONGPASS")):
                unread.append(f"the server on port {port} wants a password ({text}): tuner uses none")
            elif "max number of clients" in text:
                unread.append(f"the server on port {port} is full: it refused tuner's question too "
                              f"({text}); its maxclients is what it holds now")
            else:
                unread.append(f"the server on port {port} answered: {text}")
        except (OSError, base.Untrusted) as e:
            unread.append(f"could not ask the server on port {port}: {getattr(e, 'strerror', None) or e}"
                          + (" (a TLS-only Redis, tls-port, resets tuner's plain-text question: ask it "
                             "with redis-cli --tls)" if isinstance(e, (ConnectionResetError, EOFError)) else ""))
    configured, where, path = from_files(proc, unread)
    if configured is None:
        cap = base.unknown("redis", "maxclients", f"pid {proc.pid}", *unread)
        cap.why = "Redis's maxclients could not be read: " + _how_to_tell(port)
        return cap
    value = effective(configured, proc.nofile_soft)
    lowered = value < configured
    setting = f"maxclients {value:,}" + (f" (configured {configured:,})" if lowered else "")
    why = (f"Redis lowered maxclients {configured:,} to RLIMIT_NOFILE {proc.nofile_soft:,} - "
           f"{RESERVED_FDS} at start (it keeps {RESERVED_FDS} descriptors for itself)" if lowered
           else "Redis refuses a client beyond maxclients (-ERR max number of clients reached)")
    sure = base.COMPUTED if lowered else base.DEFAULT if "default" in where else base.READ
    cap = AppCap("redis", setting, value, where, sure, why, unread=unread)
    if unread:
        cap.notes.append("read from its files, not from the server: a CONFIG SET since it "
                         "started is not seen")
    cap.fix = default_fix(proc, value, configured, path, port)
    return cap


def tls_notes(proc: ProcView) -> List[str]:
    """A `tls-port` in its files or command line: Redis's TLS listener, which tuner's own
    question (plain INFO) cannot use, and the settings that change its memory."""
    unread: List[str] = []
    path = config_path(proc)
    conf = parse_config(path, (0, proc.uid), unread, creds=base.creds_of(proc)) if path else {}
    conf.update({k: (v, f"command line of pid {proc.pid}") for k, v in cmdline_options(proc).items()})
    port = conf.get("tls-port", ("0", ""))
    if port[0] in ("", "0"):
        return []
    cache = conf.get("tls-session-cache-size", ("20480 (the default)", ""))
    return [f"TLS on tls-port {port[0]} ({port[1]}): each client holds OpenSSL's state (tens of KB) "
            f"beside its client buffers; tls-session-cache-size {cache[0]} is shared, not per client; "
            f"tuner asks INFO in plain text, so a TLS-only Redis is read from its files: "
            f"tuner probe --connect over TLS measures it"]


# ---------------------------------------------------------------- its memory caps (issue 26)

def client_eviction_limit(setting: str, maxmemory: int) -> Optional[int]:
    """Bytes Redis evicts clients past (networking.c getClientEvictionLimit): CONFIG GET
    maxmemory-clients as bytes or "P%" of maxmemory (none while maxmemory is 0), at least
    128 KiB; None when client eviction is off (0) or the answer is none of those."""
    text = setting.strip()
    if text.endswith("%") and text[:-1].isdigit():
        limit = maxmemory * int(text[:-1]) // 100 if maxmemory > 0 else 0
    elif text.isdigit():
        limit = int(text)
    else:
        return None
    return max(limit, CLIENT_EVICTION_MIN) if limit > 0 else None


def _figures(proc: ProcView, port: int) -> Tuple[Dict[str, str], Optional[str], str]:
    """(INFO memory + clients + stats fields, maxmemory-clients or None before Redis 7,
    where).  INFO memory is the connection's first command: tuner's own client is not yet
    counted in mem_clients_normal (Redis counts a client after its first command)."""
    with base.local_connect(proc, port) as sock:
        where = "INFO memory over {}:{}".format(*sock.getpeername()[:2])
        fields: Dict[str, str] = {}
        for section in ("memory", "clients", "stats"):
            fields.update(info_fields(str(ask(sock, "INFO", section))))
        got = ask(sock, "CONFIG", "GET", "maxmemory-clients")
    setting = str(got[1]) if isinstance(got, list) and len(got) == 2 else None
    return fields, setting, where


def _number(fields: Dict[str, str], key: str) -> Optional[int]:
    value = fields.get(key, "").strip()
    return int(value) if value.isdigit() else None


def clients_cap(fields: Dict[str, str], setting: str, where: str) -> Optional[MemoryCap]:
    """maxmemory-clients as a connection cap: Redis frees the clients using the most
    memory, biggest first, once all clients together count more (evictClients)."""
    limit = client_eviction_limit(setting, _number(fields, "maxmemory") or 0)
    if limit is None:
        return None
    clients = max((_number(fields, "connected_clients") or 1) - 1, 0)   # less tuner's question
    shown = setting if setting.endswith("%") else size(int(setting))
    cap = MemoryCap(limit, f"maxmemory-clients {shown} ({where.replace('INFO memory', 'CONFIG GET')})",
                    base.CLIENTS, base.READ, why=(
                        "Redis disconnects the clients using the most memory (INFO stats evicted_clients) "
                        "once all its clients together count more (networking.c evictClients): an idle "
                        f"client counts its struct and a {size(REPLY_MIN)} reply buffer (~1.8 KiB), a new "
                        f"one a {size(REPLY_CHUNK)} reply buffer for its first second or two and one that "
                        f"sent a command in the last ~3 s a {size(IOBUF)} query buffer more (~22 KiB), "
                        "so busy clients are evicted long before as many idle ones"),
                    used=_number(fields, "mem_clients_normal"), connections=clients,
                    evicted=_number(fields, "evicted_clients"), name=f"maxmemory-clients {shown}",
                    does="it evicts clients past it")
    if setting.endswith("%") and limit == CLIENT_EVICTION_MIN:
        cap.why += f" ({setting} of maxmemory is below Redis's floor of {size(CLIENT_EVICTION_MIN)})"
    return cap


def clients_fix(want: int, per: float, path: Optional[str], port: Optional[int]) -> AppFix:
    """maxmemory-clients for `want` clients at `per` bytes each (whole MiB), set live."""
    mib = -(-int(want * per) // (1 << 20))
    cli = "redis-cli" + (f" -p {port}" if port and port != 6379 else "")
    command = f"{cli} CONFIG SET maxmemory-clients {mib}mb" + (f" && {cli} CONFIG REWRITE" if path else "")
    why = (f"{want:,} clients at the {size(per)} each counted; CONFIG SET takes it live"
           + ("; CONFIG REWRITE keeps it in the config file" if path else
              "; put the line in its config file too, or a restart loses it")
           + "; 0 turns client eviction off")
    return AppFix([f"maxmemory-clients {mib}mb"], path, None, base.RELOAD, command, want, why)


def data_cap(fields: Dict[str, str], where: str) -> Optional[MemoryCap]:
    """maxmemory: what all of Redis's memory (its clients' included) may reach before
    writes fail or keys go; connections are still accepted past it (a soft limit here)."""
    maxmemory = _number(fields, "maxmemory") or 0
    if maxmemory <= 0:
        return None
    policy = fields.get("maxmemory_policy", "noeviction").strip()
    clients = max((_number(fields, "connected_clients") or 1) - 1, 0)
    why = ("past it Redis answers every write with -OOM (noeviction); connections are still accepted "
           "and reads still answered" if policy == "noeviction" else
           f"past it Redis evicts keys ({policy}) to make room, its clients' memory counted in "
           f"used_memory; once nothing is left to evict, writes answer -OOM; connections are still "
           f"accepted")
    name = f"maxmemory {size(maxmemory)} ({policy})"
    does = "writes answer -OOM" if policy == "noeviction" else "keys are evicted to make room"
    return MemoryCap(maxmemory, f"{name} ({where})", base.DATA, base.READ, why=why,
                     used=_number(fields, "used_memory"), connections=clients, name=name, does=does)


def memory_notes(caps: List[MemoryCap]) -> List[str]:
    """What diagnose says of its memory caps without a measured cost (--watch, --cost):
    that they are there, what Redis does past them, what it counts now."""
    out = []
    for cap in caps:
        now = (f"; {size(cap.used)} counted now over {cap.connections:,} clients"
               if cap.used is not None and cap.connections is not None else "")
        if cap.kind == base.CLIENTS:
            out.append(f"{cap.source}: {cap.why}{now}; tuner diagnose --watch, or --cost FILE of a "
                       f"tuner probe --step run, measures what a client costs and projects where it binds")
        else:
            out.append(f"{cap.source}: {cap.why}; not a connection cap")
    return out


def memory_caps(proc: ProcView) -> List[MemoryCap]:
    """maxmemory-clients (a connection cap) and maxmemory (where writes fail), as the
    running server holds them; none when it cannot be asked (its cap says why)."""
    port = proc.ports[0] if proc.ports else None
    if port is None:
        return []
    try:
        fields, setting, where = _figures(proc, port)
    except (Refused, OSError, base.Untrusted, ValueError):
        return []
    caps = [clients_cap(fields, setting, where) if setting is not None else None,
            data_cap(fields, where)]
    return [c for c in caps if c is not None]


class Redis(base.Adapter):
    name = "redis"
    # redis.conf tcp-backlog (server.c: listen(fd, server.tcp_backlog)), read at start only.
    backlog_default = 511
    backlog_setting = "Redis: tcp-backlog N in its config (default 511), then a restart"

    def recognise(self, proc: ProcView) -> bool:
        return recognise(proc)

    def read(self, proc: ProcView) -> AppCap:
        cap = read(proc)
        cap.notes += tls_notes(proc) + memory_notes(memory_caps(proc))
        return cap

    def fix(self, proc: ProcView, cap: AppCap, want: int) -> Optional[AppFix]:
        port = proc.ports[0] if proc.ports else None
        return fix_for(proc, want, config_file(proc, port, []), port, cap.allows)

    def memory_caps(self, proc: ProcView) -> List[MemoryCap]:
        return memory_caps(proc)

    def memory_fix(self, proc: ProcView, kind: str, want: int, per_connection: float) -> Optional[AppFix]:
        if kind != base.CLIENTS or not per_connection or per_connection <= 0:
            return None
        port = proc.ports[0] if proc.ports else None
        return clients_fix(want, per_connection, config_file(proc, port, []), port)


ADAPTER = Redis()
