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
MiB, GiB = 1 << 20, 1 << 30
# V8's default old space (64-bit Node 20, V8 11.3, without pointer compression): half the
# memory Node sees (a quarter times V8's 64-bit heap multiplier of 2; Node passes the
# lower of MemTotal and its cgroup's limit, uv_get_constrained_memory), at most 2 GiB, or
# 4 GiB when that memory rounds to 16 GiB or more, at least 256 MiB
# (Heap::HeapSizeFromPhysicalMemory, MaxOldGenerationSize).  Measured here in memory
# cgroups, v8.getHeapStatistics().heap_size_limit less the young generation: 512 MiB ->
# 256, 768 MiB -> 384, 1 GiB -> 512, 2 GiB -> 1,024, 3 GiB -> 1,536, 4-15 GiB -> 2,048,
# 15.5 GiB and up (and this 23.5 GiB host) -> 4,096.
DEFAULT_SHARE, DEFAULT_MAX, DEFAULT_HUGE, DEFAULT_MIN = 2, 2 * GiB, 4 * GiB, 256 * MiB
# What an idle Node process already holds of its old space: node 20 with `ws` loaded
# reports 3.5-5 MiB used (v8.getHeapStatistics().used_heap_size, measured here).
HEAP_BASE = 4 << 20
# The young generation beside it, which --max-old-space-size does not count: two
# semi-spaces (a third as much again for young large objects), grown from 1 MiB while
# what is allocated survives, as a ramp's connections do (measured: 2 MiB committed
# idle, 32 MiB after 200 connections of 64 KiB each).  A semi-space is
# --max-semi-space-size, or the default old space (not --max-old-space-size) / 128
# (/ 256 at 256 MiB and below), within 1-16 MiB, rounded up to a power of two: measured,
# 1 GiB -> 4 MiB, 2 GiB -> 8, 3 GiB and up -> 16; --max-semi-space-size=3 -> 4.
SEMI_MIN, SEMI_MAX = 1 * MiB, 16 * MiB


def default_old_space(seen: int) -> int:
    """V8's default old space for a Node that sees `seen` bytes of memory."""
    top = DEFAULT_HUGE if (seen + 512 * MiB) // GiB >= 16 else DEFAULT_MAX
    return max(min(seen // DEFAULT_SHARE, top), DEFAULT_MIN)


def semi_space(seen: int, flag_mib: Optional[float]) -> int:
    """One semi-space's most: --max-semi-space-size, or V8's rule from the default old
    space; rounded up to a power of two, as V8 does."""
    if flag_mib is not None:
        size = max(int(flag_mib * MiB), 1)
    else:
        old = default_old_space(seen)
        size = min(max(old // (256 if old <= DEFAULT_MIN else 128), SEMI_MIN), SEMI_MAX)
    return 1 << (size - 1).bit_length()


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


def seen_memory(proc: ProcView) -> int:
    """What Node sizes its heap from: the lower of MemTotal and its cgroup's limit (0:
    neither readable)."""
    seen = (procfs.meminfo_kb().get("MemTotal") or 0) * 1024
    cgroup = procpid.process_cgroup_memory(proc.pid).get("limit")
    if cgroup:
        seen = min(seen, cgroup) if seen else cgroup
    return seen


def memory_cap(proc: ProcView) -> MemoryCap:
    """--max-old-space-size or Node's default, set against the V8 heap's own pages (the
    young generation beside it, which the cap does not count, named as `young`)."""
    seen = seen_memory(proc)
    semi = heap_flag(proc, SEMI_FLAG)
    young = 2 * (semi_space(seen, semi[0] if semi else None) if seen or semi else SEMI_MAX)
    flag = heap_flag(proc)
    if flag is not None:
        mib, where = flag
        return MemoryCap(int(mib * MiB), f"{HEAP_FLAG}={mib:g} ({where})", base.HEAP, base.READ,
                         HEAP_BASE, "V8 aborts the process ('Reached heap limit') when its old "
                         "space cannot grow past this", heap_pages=True, young=young)
    if not seen:
        return MemoryCap(None, f"Node's default heap limit (no {HEAP_FLAG})", base.HEAP, base.UNKNOWN)
    top = "4 GiB" if default_old_space(seen) > DEFAULT_MAX else "2 GiB"
    return MemoryCap(default_old_space(seen),
                     f"Node's default heap limit: half of {seen / GiB:.1f} GiB, at most {top} "
                     f"(no {HEAP_FLAG})", base.HEAP, base.COMPUTED, HEAP_BASE,
                     "V8 aborts the process ('Reached heap limit') when its old space cannot grow "
                     "past this; Node sizes it from the memory it sees: half of it, at most 2 GiB "
                     "(4 GiB from 16 GiB up), at least 256 MiB", heap_pages=True, young=young)


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
