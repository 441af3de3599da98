"""Progress for long work: a live rich bar on a terminal, plain timestamped lines otherwise.

Library code (the probe) reports through a plain callback; this module is the CLI's
side of it, so the probe never imports rich or typer.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional, TextIO

from .numfmt import number, of


class Progress:
    """Call update(done, **figures) as often as you like; it rate-limits itself."""

    def __init__(self, total: int, label: str, stream: Optional[TextIO] = None,
                 interval: float = 1.0, live: Optional[bool] = None):
        self.total, self.label, self.interval = total, label, interval
        self.stream = stream or sys.stderr
        # A live bar needs a terminal that can redraw; TERM=dumb (and NO_COLOR, whose
        # users asked for plain output) get plain lines.
        plain_wanted = os.environ.get("TERM") == "dumb" or "NO_COLOR" in os.environ
        self.live = (self.stream.isatty() and not plain_wanted) if live is None else live
        self._last: Optional[float] = None
        self._phase = None
        self._bar = None

    def __enter__(self) -> "Progress":
        if self.live:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                       TimeElapsedColumn)
            from rich.console import Console

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[figures]}"), TimeElapsedColumn(),
                            console=Console(file=self.stream, force_terminal=True), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total or None, figures="")  # 0: open-ended
        return self

    def update(self, done: int, phase: str = "", **figures) -> None:
        text = " ".join(f"{k}={number(v)}" for k, v in figures.items())
        if self._bar is not None:
            self._bar.update(self._task, completed=done, description=f"{self.label} {phase}".strip(),
                             figures=text)
            return
        now = time.monotonic()
        # The first update, every phase change, then at most one line per interval.
        if self._last is None or phase != self._phase or now - self._last >= self.interval:
            self._last, self._phase = now, phase
            # A server without --expect has no total: its count stands alone.
            print(f"{time.strftime('%H:%M:%S')} {self.label} {phase} {of(done, self.total)} {text}".rstrip(),
                  file=self.stream, flush=True)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
