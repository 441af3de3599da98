"""Node.js: no connection cap by default, and none readable from outside.

`net.Server` and the `ws`/`http` servers on it accept until the kernel or the process's
descriptor limit stops them.  A program can set `server.maxConnections` (Node then
closes each connection beyond it at once), but that value lives in the program's
memory: nothing outside the process can read it (no file, no flag, no endpoint), so
tuner says so instead of guessing.
"""
from __future__ import annotations


from typing import Optional

from tuner.host import procfs, procpid
from . import base
from .base import AppCap, MemoryCap, ProcView

NAMES = ("node", "nodejs")
HEAP_FLAG, SEMI_FLAG = "--max-old-space-size", "--max-semi-space-size"
# V8's default old space (Node 14 and later, 64-bit): a quarter of the memory Node sees
# (the lower of the host's and its cgroup's limit, uv_get_constrained_memory), at most
# 4 GiB (v8.getHeapStatistics() here: 4144 MiB = 4096 old + 48 young on a 24 GiB host).
DEFAULT_SHARE, DEFAULT_MAX = 4, 4 << 30
# What an idle Node process already holds of its old space: node 20 with `ws` loaded
# reports 3.5-5 MiB used (v8.getHeapStatistics().used_heap_size, measured here).
HEAP_BASE = 4 << 20
# The young generation beside it, which --max-old-space-size does not count: two
# semi-spaces of at most 16 MiB each on 64-bit Node 20 (V8 11.3; heap_size_limit reads
# 112 MiB under --max-old-space-size=64: 64 + 3 x 16, the third for young large
# objects), grown from 1 MiB while what is allocated survives, as a ramp's connections
# do (measured: 2 MiB committed idle, 32 MiB after 200 connections of 64 KiB each).
SEMI_MAX = 16 << 20


def recognise(proc: ProcView) -> bool:
    first = proc.cmdline[0].rsplit("/", 1)[-1] if proc.cmdline else ""
    return proc.exe_name in NAMES or first in NAMES


def read(proc: ProcView) -> AppCap:
    return AppCap("node", "no connection cap by default", None, f"pid {proc.pid}", base.DEFAULT,
                  "Node caps no connections unless the program sets server.maxConnections, "
                  "which is not readable from outside the process: if the service stops below "
                  "tuner's figure, look there and tell tuner with --app-limit N")


def heap_flag(proc: ProcView, flag: str = HEAP_FLAG) -> Optional[tuple]:
    """(MiB, where) of the last --max-old-space-size (or `flag`) Node takes: NODE_OPTIONS
    first, then its own flags on the command line (those before the script)."""
    found = None
    try:
        env = procpid.environ(proc.pid, ("NODE_OPTIONS",)).get("NODE_OPTIONS", "")
    except OSError:
        env = ""
    for where, args in (("NODE_OPTIONS", env.split()), ("command line", _node_flags(proc.cmdline))):
        value = base.option(args, flag) or base.option(args, "--" + flag[2:].replace("-", "_"))
        if value is not None:
            try:
                found = (float(value), where)
            except ValueError:
                continue
    return found


def _node_flags(argv) -> list:
    """Node's own options: those before the script (the first argument not an option)."""
    out = []
    for arg in list(argv)[1:]:
        if not arg.startswith("-"):
            break
        out.append(arg)
    return out


def memory_cap(proc: ProcView) -> MemoryCap:
    """--max-old-space-size or Node's default, set against the V8 heap's own pages (the
    young generation beside it, which the cap does not count, named as `young`)."""
    semi = heap_flag(proc, SEMI_FLAG)
    young = 2 * (int(semi[0] * 2**20) if semi else SEMI_MAX)
    flag = heap_flag(proc)
    if flag is not None:
        mib, where = flag
        return MemoryCap(int(mib * 2**20), f"{HEAP_FLAG}={mib:g} ({where})", base.HEAP, base.READ,
                         HEAP_BASE, "V8 aborts the process ('Reached heap limit') when its old "
                         "space cannot grow past this", heap_pages=True, young=young)
    seen = (procfs.meminfo_kb().get("MemTotal") or 0) * 1024
    cgroup = procpid.process_cgroup_memory(proc.pid).get("limit")
    if cgroup:
        seen = min(seen, cgroup) if seen else cgroup
    if not seen:
        return MemoryCap(None, f"Node's default heap limit (no {HEAP_FLAG})", base.HEAP, base.UNKNOWN)
    return MemoryCap(min(seen // DEFAULT_SHARE, DEFAULT_MAX),
                     f"Node's default heap limit: a quarter of {seen / 2**30:.1f} GiB, at most 4 GiB "
                     f"(no {HEAP_FLAG})", base.HEAP, base.COMPUTED, HEAP_BASE,
                     "V8 aborts the process ('Reached heap limit') when its old space cannot grow "
                     "past this; Node 14 and later size it from the memory they see",
                     heap_pages=True, young=young)


class Node(base.Adapter):
    name = "node"
    backlog_default = 511
    backlog_setting = "Node: server.listen({port, backlog: N}), default 511"

    def recognise(self, proc: ProcView) -> bool:
        return recognise(proc)

    def read(self, proc: ProcView) -> AppCap:
        return read(proc)

    def memory_cap(self, proc: ProcView) -> Optional[MemoryCap]:
        return memory_cap(proc)


ADAPTER = Node()
