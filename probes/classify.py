"""Turn what went wrong (errno and side, or a timeout plus counters) into the limit that
bound, named as the knob table names it, and a hint in words.

A failure record from a worker is (side, op, errno, index).  The knob table
(tuner/knobs.py, each knob's `signs`) says which errno of which call, and which kernel
counters that moved while the probe ran, mean which knob, and the words for it; this
module groups the records and asks it (through probes/signs.py, the table's answers
generated as data: the probe imports nothing of tuner above its bottom layer).  Only what is no knob (the peer, a timeout no
counter explains, RLIMIT_NPROC) is named here.  The values and the `tuner apply`
command that lift a limit are the table's too (tuner/probing/run.py asks it, for the
probe's own configuration).
"""
from __future__ import annotations

import errno as E
import os
import signal
from typing import Dict, List, Optional

from . import signs

CLIENT, SERVER_SIDE, WORKER = "client", "server", "worker"
# A worker's op when the orchestrator had to SIGKILL it (it did not exit once released).
ENDED_BY_TUNER = "ended by tuner"

# Limits that are not knobs of the table (tuner/knobs.py names every knob, and the
# errnos, counters and words that show it being hit):
TIMEOUT = "timeout"
# --connect: connections the kernel completed into the server's accept queue that the
# server never accepted (its descriptor limit, or its accept loop stopped).
SERVER_NOT_ACCEPTING = "server stopped accepting"
UNACCEPTED_OP = "accept-queue"
# The peer refused, or reset/closed mid-exchange (--connect: a remote server).
PEER = "the server"
# A fork() that failed with EAGAIN under this process's RLIMIT_NPROC (tuner.host.procfs.
# task_limit_hit names it; the other task limits it names are knobs).
NPROC = "RLIMIT_NPROC"

_OWN_HINTS = {
    NPROC: ("no more worker processes could be forked (EAGAIN): RLIMIT_NPROC caps the tasks "
            "here: raise it, or run fewer --workers"),
    # In any protocol's words: a hint of tuner's own exchange (--expect, its echo timeout)
    # told a user probing HTTP about options of a server they do not run (issue 28).
    PEER: ("the server refused, reset or closed connections before they were verified: is it "
           "listening there? Its own log says why (its connection cap, its descriptor limit, "
           "an idle or request timeout); on its host, tuner diagnose --port PORT reads its caps"),
    SERVER_NOT_ACCEPTING: ("the server's kernel completed these connections into its accept "
                           "queue but the server never accepted them: it stopped accepting (its "
                           "descriptor limit, RLIMIT_NOFILE, or its accept loop); look at the "
                           "server, not at this host"),
    TIMEOUT: ("connections did not complete before --timeout and no limit counter moved: "
              "raise --timeout or lower --rate"),
}


def errno_name(code: int) -> str:
    return E.errorcode.get(code, str(code))


def limit_for(side: str, op: str, code: int, counters: Optional[Dict[str, int]] = None) -> Optional[str]:
    """The limit an errno points at, given where it happened: the knob table's for
    errnos a knob explains (its signs), else the peer's or a timeout's."""
    limit = signs.limit_for_error(code, op, counters or {})
    if limit is not None:
        return limit
    if (code == E.ECONNRESET and op in ("read", "echo", "verify")) or code == E.ECONNREFUSED:
        return PEER
    if code in (E.ETIMEDOUT, E.ECONNRESET):
        return timeout_limit(counters or {}, {})
    return None


def timeout_limit(moved: Dict[str, int], now: Dict[str, int]) -> str:
    """Which limit explains connections that never completed before the deadline: the
    knob whose counters rose over the run (`moved`) or that is full now (`now`, the
    probe's kernel snapshot), else the timeout itself."""
    limit = signs.timeout_cause(moved, now)
    return TIMEOUT if limit is None else limit


def hint(limit: Optional[str], role: str = "loopback") -> str:
    """What a limit means and which knob lifts it, in words: the knob table's (the
    numbers and the command are its `needs`, computed by tuner/probing/run.py for the probe's
    own configuration; never here, where they would drift from it)."""
    text = signs.words(limit, role)
    if text is None:
        text = _OWN_HINTS.get(limit or "")
    return text or "unexpected error; see first_message"


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
            limit = signs.limit_for_error(E.ENOMEM, op, {}) if code == -signal.SIGKILL else None
        else:
            name, limit = errno_name(code), limit_for(side, op, code, moved)
        groups[key] = {"side": side, "op": op, "errno": name, "count": count,
                       "first_message": message or f"{side} {op}() failed at connection {index}: "
                                                   f"{os.strerror(code)}",
                       "limit": limit, "hint": hint(limit, role)}
    return list(groups.values())
