"""The server's side of a `--connect` run: what its answers were (counted per
connection by the workers), what waits in its accept queue, the result's `server`
figures and error groups, and the first sentence that names the side that stalled.

A worker counts each connection that did not verify by how it ended (the SERVER and
CHECKED lines of connect_worker) and the server's own words (WORDS); this module sums
them.  None of these stop a run: the server's refusals are what the user came to see.
This host's own failures are the classified records (probes.classify) and stop opening.
"""
from __future__ import annotations

import ipaddress
from typing import Callable, Dict, List, NamedTuple, Optional
from urllib.parse import unquote

from tuner.host.numfmt import millis

from . import classify
from .protocols import Target
from .protocols.tls import WORDS as TLS_WORDS

WHEN = ("open", "check")
WORDED = ("refused", "check_refused", "tls_failed")
FIRST_WORDS = 5      # distinct answers the result keeps (the first seen, with their counts)

# (column, op, errno-like label, limit, what it means) of each way the server ended a
# connection, in the order the summary names them.
KINDS = (
    ("not_listening", "connect", "ECONNREFUSED", classify.PEER, "refused at connect: nothing listens there"),
    ("unaccepted", classify.UNACCEPTED_OP, "ETIMEDOUT", classify.SERVER_NOT_ACCEPTING,
     "completed into the server's accept queue but never accepted"),
    ("queued", classify.UNACCEPTED_OP, "ETIMEDOUT", classify.SERVER_NOT_ACCEPTING,
     "waited in the server's accept queue, never accepted"),
    ("not_connected", "connect", "ETIMEDOUT", classify.PEER,
     "got no SYN-ACK in time (the server's listen backlog full, or a firewall)"),
    ("no_answer", "read", "ETIMEDOUT", classify.PEER, "accepted but never answered before --timeout"),
    ("refused", "read", "REFUSED", classify.PEER, "refused by the server"),
    ("closed", "read", "EOF", classify.PEER, "closed by the server before it answered"),
    ("reset", "read", "ECONNRESET", classify.PEER, "reset by the server before it answered"),
    ("tls_failed", "handshake", "TLS", classify.PEER, "failed the TLS handshake"),
    ("tls_stalled", "handshake", "ETIMEDOUT", classify.PEER,
     "accepted and stalled in the TLS handshake before --timeout"),
    ("closed_in_hold", "verify", "EOF", classify.PEER, "closed by the server during the hold"),
    ("reset_in_hold", "verify", "ECONNRESET", classify.PEER, "reset by the server during the hold"),
    ("check_refused", "verify", "REFUSED", classify.PEER, "refused by the server at the second check"),
    ("check_silent", "verify", "ETIMEDOUT", classify.PEER, "not answered at the second check"),
)


class Words:
    """The server's words with counts, first seen first, per check (open, check)."""

    def __init__(self):
        self.counts: Dict[tuple, int] = {}

    def add(self, when: int, quoted: str, count: int) -> None:
        key = (WHEN[when], unquote(quoted))
        self.counts[key] = self.counts.get(key, 0) + count

    def to_list(self) -> List[dict]:
        return [{"when": w, "words": words, "count": n}
                for (w, words), n in list(self.counts.items())[:FIRST_WORDS]]


class Queue(NamedTuple):
    """The server's listener as sock_diag sees it: its accept queue now and its backlog."""
    queued: int
    backlog: int


def accept_queue(target: Target) -> Optional[Queue]:
    """The accept queue of the server's listener (connections waiting in it, and its
    backlog), when it is in this network namespace (sock_diag); None when not seen here."""
    from tuner.host import sockdiag

    try:
        listeners = sockdiag.listening()
    except OSError:
        return None
    want = ipaddress.ip_address(target.host)
    mine = [l for l in listeners if l.port == target.port
            and (ipaddress.ip_address(l.address) == want or ipaddress.ip_address(l.address).is_unspecified)]
    return Queue(sum(l.queued for l in mine), sum(l.backlog for l in mine)) if mine else None


# The counters that rise when a listener's queues overflow: the accept queue full at the
# handshake's end (ListenOverflows; the kernel drops that ACK and the client, which thinks
# it is connected, waits for its answer), and the SYN queue full (TCPReqQFullDrop).
OVERFLOWS = ("ListenOverflows", "TCPReqQFullDrop")


def figures(total: Callable[[str], int], words: Words, queue: Optional[Queue],
            moved: Optional[Dict[str, int]] = None, attempted: int = 0) -> dict:
    """The result's `server`: each way it ended connections, its words, its accept queue,
    and its listen backlog's overflows over the run.  Of the connections that got no
    answer, as many as its accept queue held are counted as `queued` (they were never
    accepted), the rest as accepted and silent.  The overflow counters are the whole
    namespace's: they are the server's only when its listener is seen here and its
    backlog is smaller than the connections the probe opened (else another listener's
    overflows would be named as the server's)."""
    out = {column: total(column) for column, *_ in KINDS if column != "queued"}
    # Under TLS a connection still in the accept queue looks stalled in the handshake
    # (its ClientHello went out, nothing came back): those the queue holds were never
    # accepted, and are counted as queued first.
    waiting = queue.queued if queue else 0
    out["queued"] = queued = min(out["no_answer"] + out["tls_stalled"], waiting)
    taken = min(queued, out["tls_stalled"])
    out["tls_stalled"] -= taken
    out["no_answer"] -= queued - taken
    out["accept_queue"] = queue.queued if queue else None
    out["listen_overflows"] = (sum((moved or {}).get(k, 0) for k in OVERFLOWS)
                               if queue is not None and attempted > queue.backlog else None)
    out["words"] = words.to_list()
    return out


def errors(server: dict, target: Target) -> List[dict]:
    """Error groups (the shape of classify.summarize's) for the server's side."""
    groups = []
    for column, op, label, limit, meaning in KINDS:
        count = server[column]
        if not count:
            continue
        said = [w for w in server["words"] if (w["when"] == "check") == column.startswith("check")]
        if column == "tls_failed":
            said = [w for w in said if w["words"].startswith(TLS_WORDS)]
        elif "refused" in column:
            said = [w for w in said if not w["words"].startswith(TLS_WORDS)]
        words = "; ".join(f"{w['words']!r} x{w['count']:,}" for w in said) if column in WORDED else ""
        groups.append({"side": "server", "op": op, "errno": label, "count": count,
                       "first_message": f"{count:,} connection(s) to {target.endpoint} {meaning}"
                                        + (f": {words}" if words else ""),
                       "limit": limit, "hint": classify.hint(limit, "client")})
    return groups


def stalled(r: dict, ran_out_of: Optional[str] = None, server: Optional[str] = None) -> dict:
    """Which side stalled, and the summary's first sentence: 'the server stopped at 700
    (...)' or 'this host ran out of ... at 28,232'; None when every one verified.
    A caller that knows more says it here, and the sentence is composed once with it:
    `ran_out_of`, this host's limit as the knob table words it ('local ports (KNOB)');
    `server`, the server's process ('nginx pid 812')."""
    if r["ok"]:
        return {"side": None, "at": r["verified"],
                "sentence": f"all {r['requested']:,} connections verified twice"
                            if r["checked_twice"] else f"all {r['requested']:,} connections verified"}
    mine = [e for e in r["errors"] if e["side"] != "server"]
    if mine:
        e = mine[0]
        return {"side": "client", "at": r["attempted"], "limit": e["limit"],
                "sentence": f"this host ran out of {ran_out_of or e['limit'] or e['errno']} at {r['attempted']:,} "
                            f"({e['errno']} on {e['op']})"}
    ramp = r.get("ramp") or {}
    if ramp.get("over"):
        return latency_stall(ramp)
    parts = server_parts(r["server"])
    if not parts:
        return {"side": None, "at": r["verified"], "sentence": f"stopped at {r['verified']:,} ({r['stopped_by']})"}
    who = f"the server ({server})" if server else "the server"
    return {"side": "server", "at": r["verified"],
            "sentence": f"{who} stopped at {r['verified']:,} ({'; '.join(parts)})"}


def latency_stall(ramp: dict) -> dict:
    """The ramp ended at the first step whose p99 passed --max-p99."""
    over, within = ramp["over"], ramp["within"]
    said = (f"the server's p99 passed {millis(ramp['max_p99_ms'])} at {over['connections']:,} connections "
            f"({millis(over['latency_ms']['p99'])})")
    said += (f"; it held {within['connections']:,} within it ({millis(within['latency_ms']['p99'])})"
             if within and within["latency_ms"] else "; no step was within it")
    return {"side": "server", "at": within["connections"] if within else 0, "sentence": said}


def server_parts(server: dict) -> List[str]:
    # The first words of each check (and, apart, of the TLS handshakes that failed).
    words = {w["when"]: w for w in reversed(server["words"]) if not w["words"].startswith(TLS_WORDS)}
    tls = [w for w in server["words"] if w["words"].startswith(TLS_WORDS)]
    overflows = server.get("listen_overflows") or 0
    backlog = f"its listen backlog full ({overflows:,} overflows)"
    texts = {
        "not_listening": "nothing listens there: {n} refused at connect",
        "not_connected": "{n} got no SYN-ACK" + (f": {backlog}" if overflows else ""),
        "unaccepted": "{n} waited in its accept queue",
        "queued": "{n} waited in its accept queue",
        "no_answer": "{n} accepted and never answered",
        "refused": "{n} refused" + (f": {words['open']['words']!r}" if "open" in words else ""),
        "closed": "{n} closed before answering",
        "reset": "{n} reset before answering",
        "tls_failed": "{n} failed the TLS handshake" + (f": {tls[0]['words']!r}" if tls else ""),
        "tls_stalled": "{n} stalled in the TLS handshake",
        "closed_in_hold": "{n} closed during the hold",
        "reset_in_hold": "{n} reset during the hold",
        "check_refused": "{n} refused at the second check" + (f": {words['check']['words']!r}"
                                                              if "check" in words else ""),
        "check_silent": "{n} silent at the second check",
    }
    parts = [texts[c].format(n=f"{server[c]:,}") for c, *_ in KINDS if server[c]]
    if overflows and not server["not_connected"]:
        # Handshakes it dropped and the clients retried: answers that came late or never
        # are its backlog's doing first (issue 28: 'accepted and never answered' was said
        # while ListenOverflows rose by 1,773).
        parts.insert(0, f"{backlog}: the kernel dropped handshakes it had no room for")
    return parts
