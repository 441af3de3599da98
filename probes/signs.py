"""The knob table's answers the probe asks, read from probes/signs.json: which limit an
errno of a call or a rising counter means, the words for a probe stopped by it, and the
fixes the probe's messages quote.

tuner/knobs.py is their one home; the file is generated from it (`python -m
tuner.probing.signs`, tests/test_layers.py fails while it is stale), so the probe names
limits as the table does while importing nothing of tuner but its bottom layer.  Read
once, when a failure is classified (the lean orchestrator, after its run), with the
standard library only.
"""
from __future__ import annotations

import errno as E
import json
import os
from typing import Dict, Optional

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "signs.json")
_table: Optional[dict] = None


def table() -> dict:
    global _table
    if _table is None:
        with open(PATH) as f:
            _table = json.load(f)
    return _table


def _rose(counters: list, moved: Dict[str, int]) -> bool:
    return any(moved.get(key, 0) > 0 for key in counters)


def _full(keys: list, now: Dict[str, int]) -> bool:
    """What is in use has reached the table's full share of its limit (`now`: the probe's
    kernel snapshot)."""
    if not keys:
        return False
    used, limit = (now.get(key) for key in keys)
    return bool(limit) and (used or 0) >= table()["full_share"] * limit


def limit_for_error(code: int, op: str, moved: Optional[Dict[str, int]] = None) -> Optional[str]:
    """The limit a call `op` failing with errno `code` hit (None: no knob's); an entry for
    the op itself wins over one for any op. `moved`: counters that grew meanwhile."""
    fallback = None
    name = E.errorcode.get(code)
    for sign in table()["errors"]:
        if sign["errno"] != name or sign["op"] not in (None, op):
            continue
        if sign["only_with_counters"] and not _rose(sign["counters"], moved or {}):
            continue
        if sign["op"] == op:
            return sign["limit"]
        fallback = fallback or sign["limit"]
    return fallback


def timeout_cause(moved: Dict[str, int], now: Dict[str, int]) -> Optional[str]:
    """The limit that explains connections that never completed: its counters rose over
    the run (`moved`), or it is full now (`now`); None: no knob's."""
    return next((c["limit"] for c in table()["timeout_causes"]
                 if _rose(c["counters"], moved) or _full(c["full"], now)), None)


def words(limit: Optional[str], role: str) -> Optional[str]:
    """A probe stopped by a knob's limit, in the table's words (role-specific first; ""
    for a knob without words), None when `limit` is no knob's."""
    hints = table()["hints"].get(limit or "")
    if hints is None:
        return None
    text = next((t for r, t in hints if r == role), None)
    return next((t for r, t in hints if r is None), "") if text is None else text


def fix(knob: str) -> str:
    """What the table says to do about `knob` when tuner cannot change it."""
    return table()["fixes"][knob]
