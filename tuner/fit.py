"""Fit human output to the terminal it is shown on; piped output keeps every line whole.

A table that is too wide first moves its long-text column (a row's "why") under the
table as notes, then wraps its cells (a column is never narrower than its longest word,
up to LONG_WORD), and when even that cannot fit, shows each row as a heading and its
fields below it. Prose wraps at spaces with a hanging indent; a shell command wraps with
a backslash, so what is copied still runs. With no width (not a terminal) nothing is
touched: scripts, pagers and `| grep` see one row per line.
"""
from __future__ import annotations

import re
import shutil
import sys
import textwrap
from typing import Any, Iterable, List, Optional, TextIO

# Words longer than this (a path, a long knob name) may be broken inside a wrapped cell.
LONG_WORD = 20
GAP = 2   # tabulate's "simple" format puts two spaces between columns


def terminal_width(stream: Optional[TextIO] = None) -> Optional[int]:
    """Columns of the terminal `stream` writes to (COLUMNS overrides what the terminal
    says, as for ls); None when it is not a terminal, so piped output stays whole."""
    stream = stream or sys.stdout
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return max(shutil.get_terminal_size((80, 24)).columns, 20)


def widest(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


def wrap(line: str, width: Optional[int], hang: int = 2) -> str:
    """One line of prose: wrapped at spaces, continuation lines indented `hang` more than
    the first (a word longer than the line is broken)."""
    if width is None or len(line) <= width:
        return line
    indent = len(line) - len(line.lstrip(" "))
    return textwrap.fill(line, width, initial_indent="", subsequent_indent=" " * min(indent + hang, width // 2),
                         break_on_hyphens=False, break_long_words=True)


def lines(texts: Iterable[str], width: Optional[int]) -> List[str]:
    """Each of `texts` (which may hold newlines) wrapped as prose."""
    out: List[str] = []
    for text in texts:
        out += [wrap(line, width) for line in text.split("\n")] if width else [text]
    return out


def command(cmd: str, width: Optional[int]) -> str:
    """A shell command wrapped with ' \\' continuations, breaking only between words, so
    that the wrapped text pastes into a shell as the same command (one word longer than
    the line stays whole). A here-document's body is file content: it is shown exactly
    as it will be written."""
    if width is None:
        return cmd
    first, sep, body = cmd.partition("\n")
    if len(first) <= width:
        return cmd
    indent = first[:len(first) - len(first.lstrip(" "))]
    out, cur = [], indent
    for word in shell_words(first):
        if cur.strip() and len(cur) + 1 + len(word) + 2 > width:
            out.append(cur + " \\")
            cur = indent + "    " + word
        else:
            cur = f"{cur} {word}" if cur.strip() else cur + word
    out.append(cur)
    return "\n".join(out) + (sep + body if sep else "")


def shell_words(line: str) -> List[str]:
    """`line` split at the spaces a shell splits at: never inside quotes (a '\\' and
    newline inside single quotes would be part of the value)."""
    words, cur, quote = [], "", None
    for ch in line.strip(" "):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == " ":
            if cur:
                words.append(cur)
            cur = ""
            continue
        cur += ch
    return words + ([cur] if cur else [])


def _tabulate(rows: List[List[str]], headers: List[str], widths: Optional[List[int]] = None) -> str:
    # Imported here: tabulate costs ~40 ms at start-up and --json never needs it.
    from tabulate import tabulate

    if widths is not None:
        # Cells wrapped here: tabulate's own maxcolwidths parses '1,048,576' as a number
        # even with disable_numparse (and fails); multi-line cells it lays out itself.
        rows = [[_cell(c, w) for c, w in zip(r, widths)] for r in rows]
        headers = [_cell(h, w) for h, w in zip(headers, widths)]
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def _cell(text: str, width: int) -> str:
    """A cell's text wrapped at spaces; a word too long for the column (a path, a long
    name) is broken after a '/' or '.' where it can be, else where it must."""
    if len(text) <= width:
        return text
    out, cur = [], ""
    for word in text.split():
        pieces = _pieces(word, width)
        for k, piece in enumerate(pieces):
            sep = "" if k or not cur else " "
            if cur and len(cur) + len(sep) + len(piece) > width:
                out.append(cur)
                cur = piece
            else:
                cur += sep + piece
    return "\n".join(out + [cur])


def _pieces(word: str, width: int) -> List[str]:
    """`word` cut into pieces of at most `width`, after '/' or '.' where possible."""
    if len(word) <= width:
        return [word]
    parts = re.findall(r"[^/.]*[/.]|[^/.]+$", word)
    pieces: List[str] = []
    for part in parts:
        while len(part) > width:
            pieces.append(part[:width])
            part = part[width:]
        if pieces and len(pieces[-1]) + len(part) <= width:
            pieces[-1] += part
        else:
            pieces.append(part)
    return pieces


def _longest_word(cells: Iterable[str]) -> int:
    return max((len(w) for c in cells for w in c.split()), default=1)


def _wrapped(rows: List[List[str]], headers: List[str], width: int) -> Optional[str]:
    """The table with its cells wrapped to fit `width`, or None when it cannot fit."""
    n = len(headers)
    columns = [[r[i] for r in rows] + [headers[i]] for i in range(n)]
    # tabulate pads a column to its header + 2.
    natural = [max(max(len(c) for c in col[:-1]), len(headers[i]) + 2) if rows else len(headers[i])
               for i, col in enumerate(columns)]
    # The first column names the row (a knob): it keeps its words whole.
    floor = [min(natural[i], _longest_word(columns[i]) if i == 0
                 else max(min(_longest_word(columns[i]), LONG_WORD), 3)) for i in range(n)]
    widths = list(natural)
    excess = sum(widths) + GAP * (n - 1) - width
    while excess > 0:
        # Narrow, one character at a time, the column with the most to give (the long
        # columns shrink alike), then check what tabulate made of it.
        for _ in range(excess):
            givers = [i for i in range(n) if widths[i] > floor[i]]
            if not givers:
                return None
            widths[max(givers, key=lambda i: widths[i] - floor[i])] -= 1
        excess = widest(_tabulate(rows, headers, widths)) - width
    return _tabulate(rows, headers, widths)


def _stacked(rows: List[List[str]], headers: List[str], width: int, tag: Optional[int] = None) -> str:
    """Each row as its first cell (with the `tag` column's value: 'KNOB (raise)'),
    then its 'header: value' fields packed below it; empty ones ('-') are left out, the
    table layout (and piped output) shows them."""
    out: List[str] = []
    for r in rows:
        out.append(wrap(r[0] + (f" ({r[tag]})" if tag is not None else ""), width))
        cur = ""
        for i, (h, v) in enumerate(zip(headers[1:], r[1:]), 1):
            if i == tag or v in ("", "-"):
                continue
            item = f"{h}: {v}"
            if cur and len(cur) + GAP + len(item) > width:
                out.append(wrap(cur, width))
                cur = ""
            cur = f"{cur}  {item}" if cur else f"  {item}"
        if cur:
            out.append(wrap(cur, width, hang=2))
    return "\n".join(out)


def table(rows: Iterable[Iterable[Any]], headers: List[str], width: Optional[int] = None,
          note: Optional[int] = None, note_title: str = "", tag: Optional[int] = None) -> str:
    """A table of `rows` under `headers`, fitted to `width` (None: as wide as it is).
    `note` is the index of a long-text column that moves under the table (as
    '  FIRST-CELL: text' lines after `note_title`) when the table does not fit; `tag` a
    short column (a status) that joins the first cell when rows are stacked."""
    rows = [["-" if c is None else str(c) for c in r] for r in rows]
    headers = list(headers)
    text = _tabulate(rows, headers)
    if width is None or widest(text) <= width:
        return text
    notes: List[str] = []
    if note is not None:
        notes = [f"  {r[0]}: {r[note]}" for r in rows if r[note] and r[note] != "-"]
        rows = [r[:note] + r[note + 1:] for r in rows]
        headers = headers[:note] + headers[note + 1:]
        text = _tabulate(rows, headers)
    if widest(text) > width:
        if tag is not None and note is not None and tag > note:
            tag -= 1
        text = _wrapped(rows, headers, width) or _stacked(rows, headers, width, tag)
    if notes:
        text += "\n\n" + "\n".join(([note_title] if note_title else []) + [wrap(n, width, hang=4) for n in notes])
    return text
