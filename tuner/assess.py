"""Assess this host (or a namespace) for `tuner report`, apply, probe and metrics: take
the snapshot the knob table asks for and run the capacity model on it."""
from __future__ import annotations

from typing import Optional

from . import capacity, knobs, readings
from .errors import UsageError
from .knobs import Ctx


def snapshot(netns: Optional[str] = None) -> readings.Snapshot:
    """Every reading the knob table asks for; per-netns ones from inside `netns`."""
    return readings.take_snapshot(knobs.sysctl_names("host"), knobs.sysctl_names("netns"), netns)


def build(target: Optional[int] = None, role: str = "loopback", netns: Optional[str] = None,
          destinations: int = 1, source_dev: Optional[str] = None,
          snap: Optional[readings.Snapshot] = None,
          source_count: Optional[int] = None) -> capacity.Report:
    if snap is None:
        snap = snapshot(netns)
    if source_dev is not None and not any(a["ifname"] == source_dev for a in snap.addresses):
        raise UsageError(f"no addresses on device {source_dev!r}"
                         f"{' in namespace ' + repr(netns) if netns else ''}: "
                         f"list them with 'ip addr'")
    ctx = Ctx(snap, role=role, target=target, destinations=destinations, source_dev=source_dev,
              source_count=source_count)
    return capacity.evaluate(ctx)
