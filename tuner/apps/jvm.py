"""The JVM: no connection cap of its own; what it does with RLIMIT_NOFILE at start.

HotSpot raises its soft RLIMIT_NOFILE to the hard limit at start (MaxFDLimit, on by
default on Linux); `-XX:-MaxFDLimit` keeps the soft limit the shell gave it, so a JVM
started under `ulimit -Sn 1024` stops near 1,024 connections while the hard limit has
room.  The flags are read where HotSpot reads them, in its order (the last one wins):
JAVA_TOOL_OPTIONS, JDK_JAVA_OPTIONS (the environment, readable as root), the command
line, _JAVA_OPTIONS.

`jcmd PID VM.flags` is not run: attaching makes the JVM start its attach listener and
create /tmp/.java_pidPID (jcmd itself an .attach_pid file in the JVM's directory), and
reading a service never creates anything; the flag that decides the descriptor limit
is on the command line or in those variables.  A flags file (-XX:Flags=,
-XX:VMOptionsFile=) is named as not read.
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

from tuner.host import procfs, procpid
from . import base
from .base import AppCap, AppFix, MemoryCap, ProcView

ENV_BEFORE = ("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS")    # read before the command line
ENV_AFTER = ("_JAVA_OPTIONS",)                            # and this one after it
FLAG_ON, FLAG_OFF = "-XX:+MaxFDLimit", "-XX:-MaxFDLimit"
FLAG_FILES = ("-XX:Flags=", "-XX:VMOptionsFile=")


def recognise(proc: ProcView) -> bool:
    names = [proc.exe_name] + [os.path.basename(a) for a in proc.cmdline[:1]]
    return any(n == "java" or n.startswith("java") for n in names)


def flags(proc: ProcView) -> Tuple[List[Tuple[str, str]], List[str]]:
    """(flag, where it was given) in HotSpot's order, and what could not be read."""
    unread: List[str] = []
    try:
        env = procpid.environ(proc.pid, ENV_BEFORE + ENV_AFTER)
    except OSError as e:
        env = {}
        unread.append(f"/proc/{proc.pid}/environ not read ({e.strerror}): JAVA_TOOL_OPTIONS and "
                      f"_JAVA_OPTIONS could hold -XX flags; run tuner as root")
    out = [(f, name) for name in ENV_BEFORE for f in env.get(name, "").split()]
    out += [(a, "command line") for a in proc.cmdline[1:] if a.startswith("-")]
    out += [(f, name) for name in ENV_AFTER for f in env.get(name, "").split()]
    for f, where in out:
        if f.startswith(FLAG_FILES):
            unread.append(f"{f} ({where}) not read: a flags file could turn MaxFDLimit off")
    return out, unread


def max_fd_limit(given: List[Tuple[str, str]]) -> Tuple[bool, str]:
    """Whether HotSpot raises soft to hard at start, and where that was decided."""
    on, where = True, "HotSpot's default"
    for f, w in given:
        if f in (FLAG_ON, FLAG_OFF):
            on, where = f == FLAG_ON, w
    return on, where


def read(proc: ProcView) -> AppCap:
    given, unread = flags(proc)
    on, where = max_fd_limit(given)
    cap = AppCap("jvm", "no connection cap of its own", None, f"{where} (pid {proc.pid})",
                 base.DEFAULT, "the JVM caps no connections; a server inside it may (a pool, "
                 "Tomcat's maxConnections): tell tuner with --app-limit N", unread=unread)
    soft, hard = proc.nofile_soft or 0, proc.nofile_hard or 0
    if not on:
        cap.notes.append(f"pid {proc.pid} (java) runs with {FLAG_OFF} ({where}): the JVM keeps the "
                         f"soft RLIMIT_NOFILE the shell gave it ({soft:,}) instead of raising it to "
                         f"the hard limit ({hard:,}) at start; drop the flag, or raise the limit")
    else:
        cap.notes.append(f"pid {proc.pid} (java): the JVM raises its soft RLIMIT_NOFILE to the hard "
                         f"one at start (MaxFDLimit); the hard limit {hard:,} is what a restart gets")
    return cap


def fix(proc: ProcView, want: int) -> Optional[AppFix]:
    """Restarting without -XX:-MaxFDLimit gives the JVM its hard limit."""
    on, where = max_fd_limit(flags(proc)[0])
    if on:
        return None
    return AppFix([f"(remove {FLAG_OFF})"], None, proc.nofile_hard, base.RESTART,
                  f"restart the JVM without {FLAG_OFF} (set in: {where})", None,
                  f"the JVM then raises its soft RLIMIT_NOFILE to the hard {proc.nofile_hard or 0:,} "
                  f"at start")


# HotSpot's heap size flags; without them MaxRAMPercentage (default 25) of the memory it
# sees (its cgroup's limit when lower than the host's: container support, JDK 10+).
HEAP_FLAGS = ("-Xmx", "-XX:MaxHeapSize=")
RAM_PERCENT_FLAG, RAM_PERCENT_DEFAULT = "-XX:MaxRAMPercentage=", 25.0
JAVA_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def java_size(text: str) -> Optional[int]:
    """'512m' -> 536870912, as HotSpot reads a size (k, m, g, t; either case)."""
    number, unit = text.rstrip("kKmMgGtT"), text[len(text.rstrip("kKmMgGtT")):].lower()
    return int(number) * JAVA_UNITS[unit] if number.isdigit() and unit in JAVA_UNITS else None


def memory_cap(proc: ProcView) -> MemoryCap:
    given, _ = flags(proc)
    size, percent, where = None, RAM_PERCENT_DEFAULT, "HotSpot's default MaxRAMPercentage 25"
    for f, w in given:
        for flag in HEAP_FLAGS:
            if f.startswith(flag) and java_size(f[len(flag):]) is not None:
                size, where = java_size(f[len(flag):]), f"{f} ({w})"
        if f.startswith(RAM_PERCENT_FLAG):
            try:
                percent, size, where = float(f[len(RAM_PERCENT_FLAG):]), None, f"{f} ({w})"
            except ValueError:
                continue
    why = "the JVM throws OutOfMemoryError when its heap cannot grow past this"
    if size is not None:
        return MemoryCap(size, where, base.HEAP, base.READ, 0, why)
    seen = (procfs.meminfo_kb().get("MemTotal") or 0) * 1024
    cgroup = procpid.process_cgroup_memory(proc.pid).get("limit")
    seen = min(seen, cgroup) if cgroup and seen else (cgroup or seen)
    if not seen:
        return MemoryCap(None, where, base.HEAP, base.UNKNOWN, 0, why)
    return MemoryCap(int(seen * percent / 100), f"{where} of {seen / 2**30:.1f} GiB", base.HEAP,
                     base.COMPUTED, 0, why)


class JVM(base.Adapter):
    name = "jvm"
    backlog_default = 50
    backlog_setting = "Java: ServerSocket(port, N) / ServerSocketChannel.bind(addr, N), default 50"

    def recognise(self, proc: ProcView) -> bool:
        return recognise(proc)

    def read(self, proc: ProcView) -> AppCap:
        return read(proc)

    def fix(self, proc: ProcView, cap: AppCap, want: int) -> Optional[AppFix]:
        return fix(proc, want)

    def memory_cap(self, proc: ProcView) -> Optional[MemoryCap]:
        return memory_cap(proc)


ADAPTER = JVM()
