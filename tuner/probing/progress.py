"""Progress for long work: a live rich bar on a terminal, plain timestamped lines otherwise.

Library code (the probe) reports through a plain callback; this module is the CLI's
side of it, so the probe never imports rich or typer.  Every number is what it says:
the clock runs for the whole run (a finished count does not stop it), and a hold shows
the seconds it has left.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional, TextIO

from tuner.host.numfmt import number, of
from tuner import fit


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Call update(done, phase, hold_left=None, **figures) as often as you like; it
    rate-limits itself."""

    def __init__(self, total: int, label: str, stream: Optional[TextIO] = None,
                 interval: float = 1.0, live: Optional[bool] = None, quiet: bool = False):
        self.total, self.label, self.interval = total, label, interval
        self.quiet = quiet  # -q: nothing on stderr but errors (cron, scripts keeping a log)
        self.stream = stream or sys.stderr
        # A live bar needs a terminal that can redraw; TERM=dumb (and NO_COLOR, whose
        # users asked for plain output) get plain lines.
        plain_wanted = os.environ.get("TERM") == "dumb" or "NO_COLOR" in os.environ
        self.live = (self.stream.isatty() and not plain_wanted) if live is None else live
        self.live = self.live and not quiet
        self._last: Optional[float] = None
        self._phase = None
        self._bar = None
        self._start = time.monotonic()

    def __enter__(self) -> "Progress":
        self._start = time.monotonic()
        if self.live:
            # Here: rich loads only for a live bar on a terminal (start-up time).
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, ProgressColumn, TextColumn
            from rich.text import Text

            start = self._start

            class Clock(ProgressColumn):
                """Time since the run began: rich's elapsed column stops when the count
                is complete, which froze it for a whole --hold."""

                def render(self, task) -> Text:
                    return Text(_clock(time.monotonic() - start), style="progress.elapsed")

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[figures]}"), Clock(),
                            console=Console(file=self.stream, force_terminal=True), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total or None, figures="")  # 0: open-ended
        return self

    def describe(self, phase: str) -> str:
        """The label and the phase, once each ('serve', not 'serve serve')."""
        return self.label if phase in ("", self.label) else f"{self.label} {phase}"

    def note(self, line: str) -> None:
        """A line about the run (its plan, where it listens), not a count: quiet drops it."""
        if not self.quiet:   # wrapped to the terminal (a plan line runs ~180 characters)
            print(fit.wrap(line, fit.terminal_width(self.stream)), file=self.stream, flush=True)

    def update(self, done: int, phase: str = "", hold_left: Optional[float] = None, **figures) -> None:
        if self.quiet:
            return
        text = " ".join(f"{k}={number(v)}" for k, v in figures.items())
        if hold_left is not None:
            # A hold has no count to advance: the seconds it has left are its progress.
            text += f" hold {number(float(hold_left), 0 if hold_left >= 10 else 1)} s left"
        if self._bar is not None:
            self._bar.update(self._task, completed=done, description=self.describe(phase), figures=text)
            return
        now = time.monotonic()
        # The first update, every phase change, then at most one line per interval.
        if self._last is None or phase != self._phase or now - self._last >= self.interval:
            self._last, self._phase = now, phase
            # A server without --expect has no total: its count stands alone.
            print(f"{time.strftime('%H:%M:%S')} {self.describe(phase)} {of(done, self.total)} {text}".rstrip(),
                  file=self.stream, flush=True)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
