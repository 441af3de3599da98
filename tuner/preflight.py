"""Pre-flight for `tuner probe`: ask the capacity model before opening anything.

The probe and the report must agree: the same snapshot and model that `tuner report
--target N` shows decide whether a probe of N can succeed here.  When a limit makes N
impossible the probe is refused with that limit and the command that lifts it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from . import report
from .capacity import Report


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

    def to_dict(self) -> dict:
        return {"ok": self.ok, "problems": self.problems,
                "max_connections": self.report.max_connections, "binding": self.report.binding,
                "processes": self.report.processes["processes"],
                "estimate_kernel_bytes_per_conn": self.estimate_bytes_per_conn}


def check(connections: int, netns: Optional[str] = None) -> Preflight:
    rep = report.build(connections, "loopback", netns)
    pre = Preflight(connections, rep)
    fix = f"tuner apply --target {connections}" + (f" --netns {netns}" if netns else "")
    if rep.reachable is False:
        row = rep.row(rep.binding)
        pre.problems.append(f"{rep.binding} allows {rep.max_connections:,} connections, fewer than "
                            f"{connections:,}; fix: {row.fix or fix}")
    mem = rep.memory
    if mem.get("idle_fits_memory") is False and rep.binding != "MemAvailable":
        pre.problems.append(f"{connections:,} idle connections need about "
                            f"{mem['idle_total_bytes'] / 2**30:.1f} GiB of kernel memory, more than "
                            f"MemAvailable; probe fewer connections")
    return pre
