"""Colour for status words on a terminal: red for what stops connections (binds, short,
full), yellow for what needs a change first (raise, near).

Colour is added to text already laid out (tuner.fit measures plain text), and only
when stdout is a terminal, NO_COLOR is unset or empty (no-color.org) and `tuner
--no-color` was not given: piped output, scripts and pagers see the same bytes as
before. Which words are urgent is the capacity model's (capacity.ALARM, CAUTION).
"""
from __future__ import annotations

import os
import re
import sys
from typing import Optional, TextIO

RED, YELLOW, RESET = "\033[31m", "\033[33m", "\033[0m"
_ANSI = re.compile(r"\033\[[0-9;]*m")

_off = False   # `tuner --no-color`


def disable() -> None:
    global _off
    _off = True


def enabled(stream: Optional[TextIO] = None) -> bool:
    stream = stream or sys.stdout
    if _off or os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def plain(text: str) -> str:
    """`text` without colour codes (what a terminal shows, for measuring)."""
    return _ANSI.sub("", text)


def _colour(word: str) -> Optional[str]:
    # Here: the model loads only when a status is coloured (--help's start-up).
    from .capacity import ALARM, CAUTION

    if word in ALARM or word in ("NOT reachable", "NOT in effect", "drift", "gone", "pending", "edited",
                                 "missing", "overridden"):
        return RED
    return YELLOW if word in CAUTION else None


def word(text: str) -> str:
    colour = _colour(text)
    return f"{colour}{text}{RESET}" if colour else text


# '  knob (raise): why...' notes and stacked rows 'knob (raise)'; a verdict's 'NOT reachable'
# (status: 'NOT in effect').
_TAGGED = re.compile(r"^(\s*\S[^()]*? )\(([a-z/ ]+)\)(:|$)")
_PHRASE = re.compile(r"\bNOT (reachable|in effect)\b")


def _column(header: list, dashes: str, name: str) -> Optional[tuple]:
    """(start, end) of the column called `name` in a tabulate "simple" table whose
    header is the lines `header` (a wrapped header takes more than one)."""
    for m in re.finditer(r"-+", dashes):
        start, end = m.span()
        if " ".join(line[start:end].strip() for line in header).strip() == name:
            return start, end
    return None


def _header(lines: list, i: int) -> list:
    """The header lines above the dashes at `i`: back to a blank line or the start."""
    top = i
    while top > 0 and lines[top - 1].strip():
        top -= 1
    return lines[top:i]


def statuses(text: str, column: str = "status") -> str:
    """`text` (a command's whole human output) with its status words coloured: the
    `column` of each table, tagged rows and notes, the verdict's NOT reachable."""
    lines = text.split("\n")
    span = None
    for i, line in enumerate(lines):
        if i and re.fullmatch(r"-+( +-+)*", line.strip()) and line.startswith("-"):
            span = _column(_header(lines, i), line, column)
            continue
        if span is not None and line.strip():
            start, end = span
            cell = line[start:end]
            if cell.strip() and _colour(cell.strip()):
                lead = len(cell) - len(cell.lstrip())
                lines[i] = line[:start + lead] + word(cell.strip()) + line[start + lead + len(cell.strip()):]
            continue
        span = None
        m = _TAGGED.match(line)
        if m and _colour(m.group(2)):
            lines[i] = m.group(1) + "(" + word(m.group(2)) + ")" + line[m.end(2) + 1:]
        lines[i] = _PHRASE.sub(lambda p: word(p.group(0)), lines[i])
    return "\n".join(lines)
