"""Application adapters, one module each: nginx, haproxy, redis, postgresql, the runtimes.

Every module in this package defines ADAPTER, an instance of base.Adapter; the registry
below finds them, so adding an adapter is adding one module (base.py's docstring shows
how).  `tuner diagnose` reaches an adapter only through `find(proc)`.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Dict, Optional

from .base import Adapter, AppCap, AppFix, ProcView, Untrusted

__all__ = ["Adapter", "AppCap", "AppFix", "ProcView", "Untrusted", "ADAPTERS", "find"]


def _discover() -> Dict[str, Adapter]:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        a = getattr(module, "ADAPTER", None)
        if isinstance(a, Adapter):
            found[a.name] = a
    return found


ADAPTERS: Dict[str, Adapter] = _discover()


def find(proc: ProcView) -> Optional[Adapter]:
    """The adapter that recognises this process (the first, by module name), if any."""
    return next((a for a in ADAPTERS.values() if a.recognise(proc)), None)
