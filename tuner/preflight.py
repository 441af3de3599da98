"""Pre-flight for `tuner probe`: ask the capacity model before opening anything.

The probe and the report must agree: the same snapshot and model that `tuner report
--target N` shows decide whether a probe of N can succeed here, described the way the
probe will run (its source addresses, one listener per worker).  When a limit makes N
impossible the probe is refused with that limit and the command that lifts it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Union

from probes.config import ProbeConfigError, sources

from . import report
from .capacity import Report
from .errors import UsageError

DEFAULT_SOURCE_NET = "127.0.0.0/8"


@dataclass
class Preflight:
    connections: int
    report: Report
    problems: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def estimate_bytes_per_conn(self) -> int:
        return self.report.memory["idle_bytes_per_connection"]

    def refusal(self) -> str:
        return f"refusing to probe {self.connections:,}: {'; '.join(self.problems)} (or pass --force)"

    def fix_for(self, limit: Optional[str]) -> Optional[str]:
        """The table's fix for a limit the probe hit: the value N needs and how to set it."""
        try:
            row = self.report.row(limit)
        except StopIteration:
            return None
        if row.needed is not None:
            value = " ".join(str(v) for v in row.needed)
            return (f"{row.name} needs {value} for {self.connections:,}: tuner apply --target "
                    f"{self.connections}" + (f" --netns {self.report.netns}" if self.report.netns else ""))
        return f"{row.name}: {row.fix}" if row.fix else None

    def to_dict(self) -> dict:
        return {"ok": self.ok, "problems": self.problems,
                "max_connections": self.report.max_connections, "binding": self.report.binding,
                "processes": self.report.processes["processes"],
                "estimate_kernel_bytes_per_conn": self.estimate_bytes_per_conn}


def check(connections: int, netns: Optional[str] = None, source_net: str = DEFAULT_SOURCE_NET,
          workers: Union[str, int] = "auto") -> Preflight:
    try:
        spread = sources(source_net)
    except ProbeConfigError as e:
        raise UsageError(str(e)) from None
    snap = report.snapshot(netns)
    # One listener per worker: every worker is its own destination for the port range.
    first = report.build(connections, "loopback", netns, snap=snap)
    destinations = workers if isinstance(workers, int) else first.processes["processes"]
    rep = report.build(connections, "loopback", netns, destinations=max(destinations, 1), snap=snap,
                       source_count=1 if spread is None else spread.count)
    pre = Preflight(connections, rep)
    if rep.reachable is False:
        pre.problems.append(f"{rep.binding} allows {rep.max_connections:,} connections, fewer than "
                            f"{connections:,}; fix: {pre.fix_for(rep.binding)}")
    mem = rep.memory
    if mem.get("idle_fits_memory") is False and rep.binding != "MemAvailable":
        pre.problems.append(f"{connections:,} idle connections need about "
                            f"{mem['idle_total_bytes'] / 2**30:.1f} GiB of kernel memory, more than "
                            f"MemAvailable; probe fewer connections")
    return pre
