"""What a probe run found, one typed result per mode with the questions every mode's
result answers (ModeResult: ok, exit_code, summary_lines, to_dict/from_dict):
ProbeResult (the local probe, its classified failures), and for the two ends of a probe
across hosts (serve.ServeResult, connect.ConnectResult) a SplitResult over their JSON
document.  JSON-able with stable keys.  Byte figures are per connection, where one
connection is both of its sockets (client and server end)."""
from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import List, Optional

# Exit status of `python -m probes` (and the meaning the CLI maps onto its own codes).
EXIT_OK = 0            # every requested connection established and verified
EXIT_INTERNAL = 1      # the probe itself failed (a bug, or the orchestrator could not start)
EXIT_USAGE = 2         # the configuration cannot run here; nothing was opened
EXIT_SHORT = 3         # it ran and fell short: a limit, a timeout or a mismatch (see stopped_by)
EXIT_SIGNAL_BASE = 128  # 128 + signal number when interrupted (130 for SIGINT, 143 for SIGTERM)


class ModeResult:
    """What `python -m probes`, the launcher and tuner ask of any mode's result."""

    ok: bool

    @property
    def exit_code(self) -> int:
        raise NotImplementedError

    def summary_lines(self) -> List[str]:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: dict) -> "ModeResult":
        raise NotImplementedError


def signal_exit(stopped_by: str) -> int:
    """128 + the signal's number, for a run a signal ended (stopped_by 'SIGINT')."""
    return EXIT_SIGNAL_BASE + signal.Signals[stopped_by].value


class SplitResult(ModeResult, Mapping):
    """The result of --serve or --connect: its document (tuner.probe.serve and
    tuner.probe.connect's schemas say what every key means), read like the document."""

    def __init__(self, data: dict):
        self.data = data

    def __getitem__(self, key: str):
        return self.data[key]

    def __iter__(self):
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def ok(self) -> bool:
        return self.data["ok"]

    def to_dict(self) -> dict:
        return self.data

    @classmethod
    def from_dict(cls, data: dict) -> "SplitResult":
        return cls(data)


@dataclass
class Failure:
    side: str                 # client | server | worker
    op: str                   # socket, bind, connect, accept, write, read, timeout, exit
    errno: str                # EMFILE, ETIMEDOUT, ... (a signal name for side 'worker')
    count: int
    first_message: str
    limit: Optional[str]      # the knob that bound (tuner/knobs.py's name, or the probe's)
    hint: str                 # what it means and which knob lifts it, in words
    # The knob table's value for this probe's configuration and the `tuner apply` that
    # sets it (filled by `tuner probe`; None from a bare `python -m probes`).
    fix: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ProbeResult(ModeResult):
    ok: bool
    stopped_by: Optional[str]       # the limit (or SIGINT/SIGTERM, timeout, mismatch) that ended it
    interrupted: bool
    requested: int
    attempted: int
    established: int                # accepted by the server side
    verified: int                   # index checked both ways
    failed: int                     # attempted - verified
    mismatches: int
    workers: int
    per_worker: int
    nofile: int
    port: int
    source_net: str
    seconds_establish: Optional[float]   # fork of the first worker to the last accept
    rate_per_s: Optional[int]            # established / seconds_establish
    seconds_exchange: Optional[float]    # last accept to last verification (batches are
                                         # exchanged as they are accepted, so this is the tail)
    seconds_total: Optional[float]       # fork to every connection verified (the C reference's "seconds")
    seconds_hold: float
    seconds_close: float
    kernel_slab_bytes: int               # /proc/meminfo Slab growth at the peak
    kernel_slab_bytes_per_conn: int
    kernel_tcp_mem_bytes: int            # sockstat TCP mem growth (socket buffers)
    kernel_tcp_mem_bytes_per_conn: float
    mem_available_drop_bytes_per_conn: int
    user_uss_bytes: int                  # sum of the workers' USS at the peak
    user_pss_bytes: int
    user_bytes_per_conn: int
    orchestrator_uss_bytes: int
    sockets_baseline: int                # sockstat TCP inuse before
    peak_sockets: int                    # ... at the peak
    sockets_after: int                   # ... after every worker ended
    time_wait_after: int
    listen_overflows: int                # TcpExt ListenOverflows growth
    errors: List[Failure] = field(default_factory=list)
    # False when the slab figures (kernel_slab_bytes*, mem_available_drop*) are not the
    # probe's: /proc/meminfo is host-wide and other activity moved it (kernel.judge_slab);
    # kernel_figures_note says why.  Show "not measurable (host busy)" then, not the number.
    kernel_figures_reliable: bool = True
    kernel_figures_note: Optional[str] = None
    # About one sample a second, one at each phase change, four a second while closing and
    # then until the sockets are gone (orchestration.sample): t, phase, established,
    # verified, rate, sockets, time_wait, orphans, slab_bytes, mem_available_bytes,
    # worker_cpu_seconds; its JSON Schema is common.json's "timeline".
    timeline: List[dict] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> "ProbeResult":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["errors"] = [Failure(**e) for e in data.get("errors", [])]
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def exit_code(self) -> int:
        if self.ok:
            return EXIT_OK
        if self.interrupted:
            return signal_exit(self.stopped_by)
        return EXIT_SHORT

    @property
    def user_kb_per_conn(self) -> float:
        return self.user_bytes_per_conn / 1024

    def summary_lines(self) -> List[str]:
        """A plain summary, for `python -m probes` without --json."""
        def num(v):
            return "-" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:,.2f}"
        lines = [
            f"{'verified' if self.ok else 'FELL SHORT'}: {num(self.verified)} of {num(self.requested)} "
            f"connections verified ({num(self.established)} established, {num(self.failed)} failed, "
            f"{num(self.mismatches)} mismatches)" + ("" if self.ok else f"; stopped by {self.stopped_by}"),
            f"workers: {self.workers} x up to {num(self.per_worker)} (RLIMIT_NOFILE {num(self.nofile)}), "
            f"listeners from port {self.port}, sources {self.source_net}",
            f"time: establish {num(self.seconds_establish)} s ({num(self.rate_per_s)}/s), exchange "
            f"{num(self.seconds_exchange)} s, total {num(self.seconds_total)} s, hold {num(self.seconds_hold)} s, "
            f"close {num(self.seconds_close)} s",
            "kernel: slab " + (f"{num(self.kernel_slab_bytes_per_conn)} B/conn" if self.kernel_figures_reliable
                                else "not measurable (host busy)") + ", tcp mem "
            f"{num(self.kernel_tcp_mem_bytes_per_conn)} B/conn; user: {self.user_kb_per_conn:.2f} KB/conn "
            f"(workers' USS {num(self.user_uss_bytes)} B)",
            f"sockets: {num(self.sockets_baseline)} before, {num(self.peak_sockets)} peak, "
            f"{num(self.sockets_after)} after ({num(self.time_wait_after)} in TIME_WAIT)",
        ]
        for e in self.errors:
            lines.append(f"error: {e.side} {e.op} {e.errno} x{e.count} -> {e.limit}: {e.first_message}")
            lines.append(f"  fix: {e.hint}")
        return lines
