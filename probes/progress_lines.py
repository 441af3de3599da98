"""A plain-lines progress callback, for callers without a terminal UI of their own."""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

from tuner.host.numfmt import number, of

# (established, verified, rate, phase, seconds of the hold left or None)
OnProgress = Callable[[int, int, float, str, Optional[float]], None]


def plain_lines(total: int, stream: Optional[TextIO] = None, interval: float = 1.0) -> OnProgress:
    """on_progress(established, verified, rate, phase, hold_left) printing at most one line per
    `interval` seconds, and always one when the phase changes."""
    out = stream or sys.stderr
    state = {"last": 0.0, "phase": None}

    def on_progress(established: int, verified: int, rate: float, phase: str,
                    hold_left: Optional[float] = None) -> None:
        now = time.monotonic()
        if phase == state["phase"] and now - state["last"] < interval:
            return
        state["last"], state["phase"] = now, phase
        print(f"{time.strftime('%H:%M:%S')} probe {phase:<9} established {of(established, total):>21}  "
              f"verified {number(verified):>10}  {number(round(rate)):>9} conn/s"
              + ("" if hold_left is None else f"  hold {number(float(hold_left), 1)} s left"),
              file=out, flush=True)

    return on_progress
