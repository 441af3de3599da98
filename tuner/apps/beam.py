"""Erlang/Elixir (the BEAM): the port table caps sockets, `+Q`.

Every socket of an Erlang node is a port, and the port table has a fixed size chosen at
start (erl_init.c, erl_ptab.c): `+Q N` (beam.smp shows it as `-Q N` before `--`), else
the ERL_MAX_PORTS environment variable, else 65,536 raised to the soft RLIMIT_NOFILE when
that is higher; the size is then rounded up to a power of two (at most 2^27).  A node
opening more ports than that gets `system_limit` (emfile in some APIs).  The node's own
ports (the listener, the console, open files) come out of the same table.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from tuner.host import procpid
from . import base
from .base import AppCap, AppFix, ProcView

DEFAULT_PORTS = 1 << 16
MAX_PORTS = 1 << 27
NAMES = ("beam.smp", "beam")


def recognise(proc: ProcView) -> bool:
    return proc.exe_name in NAMES or proc.name in NAMES


def table_size(n: int) -> int:
    """The port table's size for a request of n (a power of two, at most 2^27)."""
    return min(1 << max(n - 1, 1).bit_length(), MAX_PORTS)


def emulator_q(argv: List[str]) -> Optional[str]:
    """The -Q value among the emulator's own flags (those before the first `--`)."""
    found = None
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--":
            break
        if arg == "-Q" and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith("-Q") and len(arg) > 2:
            found = arg[2:]
    return found


def requested(proc: ProcView, unread: List[str]) -> Tuple[Optional[int], str]:
    q = emulator_q(list(proc.cmdline))
    if q is not None and q.isdigit():
        return int(q), f"+Q {q} (command line of pid {proc.pid})"
    try:
        env = procpid.environ(proc.pid, ("ERL_MAX_PORTS",))
    except OSError as e:
        env = {}
        unread.append(f"/proc/{proc.pid}/environ not read ({e.strerror}): ERL_MAX_PORTS could "
                      f"set the port table; run tuner as root")
    if env.get("ERL_MAX_PORTS", "").isdigit():
        return int(env["ERL_MAX_PORTS"]), f"ERL_MAX_PORTS={env['ERL_MAX_PORTS']} (environment of pid {proc.pid})"
    return None, ""


def read(proc: ProcView) -> AppCap:
    unread: List[str] = []
    n, where = requested(proc, unread)
    if n is None:
        n = max(DEFAULT_PORTS, proc.nofile_soft or 0)
        size = table_size(n)
        return AppCap("beam", f"port table {size:,} (default)", size, f"pid {proc.pid}",
                      base.DEFAULT, f"no +Q or ERL_MAX_PORTS: 65,536 raised to RLIMIT_NOFILE "
                      f"{proc.nofile_soft or 0:,} when higher, rounded up to a power of two; each "
                      f"socket is a port", unread=unread)
    size = table_size(n)
    return AppCap("beam", f"port table {size:,}" + (f" (+Q {n:,} rounded up)" if size != n else ""),
                  size, where, base.COMPUTED,
                  f"each socket is a port; the table holds {size:,} (the request rounded up to a "
                  f"power of two), the node's listeners and open files among them", unread=unread)


def fix_for(proc: ProcView, want: int) -> AppFix:
    size = table_size(want + 1)
    return AppFix([f"+Q {size}"], None, size, base.RESTART,
                  f"restart the node with +Q {size} (vm.args, or ERL_FLAGS=\"+Q {size}\") and "
                  f"RLIMIT_NOFILE >= {size}", size,
                  "the port table is sized at start; every socket needs a descriptor too")


class Beam(base.Adapter):
    name = "beam"
    backlog_default = 5
    backlog_setting = "Erlang: gen_tcp:listen(Port, [{backlog, N}]), default 5"

    def recognise(self, proc: ProcView) -> bool:
        return recognise(proc)

    def read(self, proc: ProcView) -> AppCap:
        return read(proc)

    def fix(self, proc: ProcView, cap: AppCap, want: int) -> Optional[AppFix]:
        return fix_for(proc, want)


ADAPTER = Beam()
