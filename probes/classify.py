"""Turn what went wrong (errno and side, or a timeout plus counters) into the limit that
bound, named as the knob table names it, and a hint in words.

A failure record from a worker is (side, op, errno, index).  The limit is decided
from the errno, the operation and, for timeouts, from which kernel counters moved
while the probe ran.  The values and the `tuner apply` command that lift a limit are
the knob table's (tuner/probe.py asks it, for the probe's own configuration).
"""
from __future__ import annotations

import errno as E
import os
import signal
from typing import Dict, List, Optional

CLIENT, SERVER_SIDE, WORKER = "client", "server", "worker"
# A worker's op when the orchestrator had to SIGKILL it (it did not exit once released).
ENDED_BY_TUNER = "ended by tuner"

RLIMIT_NOFILE = "RLIMIT_NOFILE"
FILE_MAX = "fs.file-max"
PORT_RANGE = "net.ipv4.ip_local_port_range"
SOURCES = "source addresses"
SOMAXCONN = "net.core.somaxconn"
CONNTRACK = "net.netfilter.nf_conntrack_max"
TCP_MEM = "net.ipv4.tcp_mem"
MEMORY = "memory"
# What a fork() failing with EAGAIN hit (tuner.procfs.task_limit_hit decides which).
TASK_LIMITS = ("pids.max", "RLIMIT_NPROC", "kernel.threads-max")
TIMEOUT = "timeout"
# --connect: connections the kernel completed into the server's accept queue that the
# server never accepted (its descriptor limit, or its accept loop stopped).
SERVER_NOT_ACCEPTING = "server stopped accepting"
UNACCEPTED_OP = "accept-queue"
SERVER = "the server"    # refused, or reset/closed mid-exchange (--connect: a remote server)


def errno_name(code: int) -> str:
    return E.errorcode.get(code, str(code))


def limit_for(side: str, op: str, code: int, counters: Optional[Dict[str, int]] = None) -> Optional[str]:
    """The knob an errno points at, given where it happened."""
    if code == E.EMFILE:
        return RLIMIT_NOFILE
    if code == E.ENFILE:
        return FILE_MAX
    if code == E.EADDRNOTAVAIL:
        # bind() of a source address that is not local is a missing address; connect()
        # with no free (source, port) pair left for the destination is the port range.
        return SOURCES if op == "bind" else PORT_RANGE
    if code == E.EADDRINUSE:
        return PORT_RANGE
    if code in (E.ENOBUFS, E.ENOMEM):
        moved = counters or {}
        if moved.get("TCPMemoryPressures", 0) > 0 or moved.get("TCPAbortOnMemory", 0) > 0:
            return TCP_MEM
        return MEMORY
    if (code == E.ECONNRESET and op in ("read", "echo", "verify")) or code == E.ECONNREFUSED:
        return SERVER
    if code in (E.ETIMEDOUT, E.ECONNRESET):
        return timeout_limit(counters or {}, {})
    return None


def timeout_limit(moved: Dict[str, int], now: Dict[str, int]) -> str:
    """Which limit explains connections that never completed before the deadline.

    `moved` is the growth of the counters over the run, `now` their current values.
    """
    if moved.get("ListenOverflows", 0) > 0 or moved.get("ListenDrops", 0) > 0:
        return SOMAXCONN
    if now.get("conntrack_max") and now.get("conntrack_count", 0) >= 0.99 * now["conntrack_max"]:
        return CONNTRACK
    if moved.get("TCPMemoryPressures", 0) > 0 or moved.get("TCPAbortOnMemory", 0) > 0:
        return TCP_MEM
    return TIMEOUT


def hint(limit: Optional[str], role: str = "loopback") -> str:
    """What a limit means and which knob lifts it, in words.  The numbers and the
    command are the knob table's (tuner/knobs.py), computed by the tuner CLI for the
    probe's own configuration; never here, where they would drift from it."""
    if role == "client" and limit in (PORT_RANGE, SOURCES):
        return ("each source address gives one port range of connections to the server: add "
                "source addresses (tuner apply --role client --alias-dev DEV --alias-net CIDR adds "
                "them as aliases) and pass them with --source-net CIDR")
    if limit == RLIMIT_NOFILE:
        if role == "loopback":
            return ("a worker ran out of descriptors (2 per connection): let the probe size workers "
                    "from the limit (--workers auto), or raise the hard nofile limit")
        return "a worker ran out of descriptors: more --workers, or raise the hard nofile limit"
    if limit == FILE_MAX:
        return "the host ran out of open files: raise fs.file-max"
    if limit == PORT_RANGE:
        return ("no free (source address, port) pair was left for the listener: widen "
                "net.ipv4.ip_local_port_range, or spread over more source addresses (--source-net)")
    if limit == SOURCES:
        return "a source address to bind is not local: add it, or pass a --source-net that is"
    if limit == SOMAXCONN:
        return ("the accept queue overflowed (ListenOverflows/ListenDrops rose): raise "
                "net.core.somaxconn and net.ipv4.tcp_max_syn_backlog")
    if limit == CONNTRACK:
        return "conntrack's table is full: raise net.netfilter.nf_conntrack_max"
    if limit == TCP_MEM:
        return "TCP hit its memory limit: raise net.ipv4.tcp_mem"
    if limit in TASK_LIMITS:
        return (f"no more worker processes could be forked (EAGAIN): {limit} caps the tasks "
                f"here: raise it, or run fewer --workers")
    if limit == MEMORY:
        return "the kernel ran out of memory for sockets: free memory or probe fewer connections"
    if limit == SERVER:
        return ("the server refused, reset or closed connections before verifying them: is it "
                "listening there? Its summary says why (over --expect, its descriptor limit, its "
                "echo timeout)")
    if limit == SERVER_NOT_ACCEPTING:
        return ("the server's kernel completed these connections into its accept queue but the "
                "server never accepted them: it stopped accepting (its descriptor limit, "
                "RLIMIT_NOFILE, or its accept loop); look at the server, not at this host")
    if limit == TIMEOUT:
        return ("connections did not complete before --timeout and no limit counter moved: "
                "raise --timeout or lower --rate")
    return "unexpected error; see first_message"


def summarize(records: List[tuple], moved: Dict[str, int], now: Dict[str, int],
              role: str = "loopback") -> List[dict]:
    """Group failure records (side, op, code, index, message) by (side, op, code), first
    seen first.  `code` is an errno, except for side 'worker' where it is -signal or an
    exit status, and op 'timeout' where the limit comes from the counters that moved."""
    groups: Dict[tuple, dict] = {}
    for record in records:
        side, op, code, index, message = record[:5]
        # Optional: the limit, named by who recorded it (a failed fork), and how many
        # connections the record stands for (default 1).
        given = record[5] if len(record) > 5 else None
        count = record[6] if len(record) > 6 else 1
        key = (side, op, code)
        if key in groups:
            groups[key]["count"] += count
            continue
        if given is not None:
            name, limit = errno_name(code), given
        elif op == "timeout":
            name, limit = "ETIMEDOUT", timeout_limit(moved, now)
        elif side == WORKER and op == ENDED_BY_TUNER:
            name, limit = signal.Signals(-code).name, None
        elif side == WORKER and op == "exit":
            name = signal.Signals(-code).name if code < 0 else f"exit status {code}"
            # A worker SIGKILLed (not by tuner) before verifying was most often chosen by
            # the OOM killer.
            limit = MEMORY if code == -signal.SIGKILL else None
        else:
            name, limit = errno_name(code), limit_for(side, op, code, moved)
        groups[key] = {"side": side, "op": op, "errno": name, "count": count,
                       "first_message": message or f"{side} {op}() failed at connection {index}: "
                                                   f"{os.strerror(code)}",
                       "limit": limit, "hint": hint(limit, role)}
    return list(groups.values())
