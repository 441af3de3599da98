"""Application adapters, one module each: nginx, haproxy, redis, postgresql, mosquitto,
the runtimes.

Every module in this package defines ADAPTER, an instance of base.Adapter; the registry
below finds them, so adding an adapter is adding one module (base.py's docstring shows
how).  `tuner diagnose` reaches an adapter only through `find(proc)`.
"""
from __future__ import annotations

from typing import Dict, Optional

from ..registry import instances
from .base import Adapter, AppCap, AppFix, ProcView, Untrusted

__all__ = ["Adapter", "AppCap", "AppFix", "ProcView", "Untrusted", "ADAPTERS", "find"]


ADAPTERS: Dict[str, Adapter] = instances(__name__, __path__, "ADAPTER", Adapter)


def find(proc: ProcView) -> Optional[Adapter]:
    """The adapter that recognises this process (the first, by module name), if any."""
    return next((a for a in ADAPTERS.values() if a.recognise(proc)), None)
