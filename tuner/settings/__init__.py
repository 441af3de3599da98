"""The setting kinds, one module each: sysctl, rlimit, alias, file.

Every module in this package defines KIND, an instance of base.Kind; the registry
below finds them, so adding a kind is adding one module (CONTRIBUTING.md shows how).
Plan, journal, apply, revert and render reach a kind only through `kind(name)` and
`for_knob(knob)`.
"""
from __future__ import annotations

from typing import Dict, Optional

from ..registry import instances
from . import base
from .base import Change, Gone, Kind, WriteError

__all__ = ["Change", "Gone", "Kind", "WriteError", "KINDS", "all_kinds", "kind", "for_knob", "read_entry"]


KINDS: Dict[str, Kind] = base.KINDS
_found = False


def all_kinds() -> Dict[str, Kind]:
    """Every kind by name, its modules imported on first use: `report --json` needs only
    the sysctl kind's command for its fixes, and importing every kind (pyroute2's, the
    files') cost it 16 ms of start-up."""
    global _found
    if not _found:
        KINDS.update(instances(__name__, __path__, "KIND", Kind))
        _found = True
    return KINDS


def kind(name: str) -> Kind:
    """The setting kind called `name` (a journal entry's or a change's "kind")."""
    return all_kinds()[name]


def for_knob(knob) -> Optional[Kind]:
    """The kind that plans `knob` (by the knob table's kind), None if none writes it."""
    return next((k for k in all_kinds().values() if knob.kind in k.knob_kinds), None)


def read_entry(entry) -> tuple:
    """A journal entry's setting as it is now, for revert and status: (value, None, "")
    or, when it cannot be read, (None, Gone or WriteError, the reason)."""
    try:
        return kind(entry["kind"]).read(entry["netns"], entry["detail"]), None, ""
    except (Gone, WriteError) as e:
        return None, type(e), str(e)
