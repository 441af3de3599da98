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

__all__ = ["Change", "Gone", "Kind", "WriteError", "KINDS", "kind", "for_knob", "read_entry"]


KINDS: Dict[str, Kind] = base.KINDS
KINDS.update(instances(__name__, __path__, "KIND", Kind))


def kind(name: str) -> Kind:
    """The setting kind called `name` (a journal entry's or a change's "kind")."""
    return KINDS[name]


def for_knob(knob) -> Optional[Kind]:
    """The kind that plans `knob` (by the knob table's kind), None if none writes it."""
    return next((k for k in KINDS.values() if knob.kind in k.knob_kinds), None)


def read_entry(entry) -> tuple:
    """A journal entry's setting as it is now, for revert and status: (value, None, "")
    or, when it cannot be read, (None, Gone or WriteError, the reason)."""
    try:
        return kind(entry["kind"]).read(entry["netns"], entry["detail"]), None, ""
    except (Gone, WriteError) as e:
        return None, type(e), str(e)
