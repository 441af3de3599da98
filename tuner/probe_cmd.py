"""The CLI's side of `tuner probe`: run probes/ with progress and map its errors.

probes/ knows nothing of tuner's CLI; this module adapts its callbacks to a live bar
(terminal) or plain lines, and its exceptions to tuner's exit codes.
"""
from __future__ import annotations

import contextlib
import sys

from probes import ProbeConfig, ProbeConfigError, run_probe as _run
from probes.runner import ProbeError, ProbeInterrupted

from .errors import TunerError, UsageError
from .progress import Progress


@contextlib.contextmanager
def _as_tuner_errors():
    """A configuration that cannot run here is bad input (exit 2, nothing opened); a
    failure of the probe machinery itself is a failed run (exit 1)."""
    try:
        yield
    except ProbeConfigError as e:
        raise UsageError(str(e)) from None
    except ProbeInterrupted as e:  # stopped before anything ran: the signal's own exit code
        raise TunerError(str(e), 128 + e.signum) from None
    except ProbeError as e:
        raise TunerError(str(e)) from None


def run_probe(n: int, pre, **settings):
    cfg = ProbeConfig(connections=n, **settings)
    with _as_tuner_errors():
        cfg.validate()
    with Progress(n, "probe", stream=sys.stderr) as bar:
        def on_plan(plan):
            print(f"plan: {plan['describe']}; pre-flight: {pre.report.processes['processes']} "
                  f"process(es) needed, max now {pre.report.max_connections:,} "
                  f"({pre.report.binding} binds first)", file=sys.stderr, flush=True)

        def on_progress(established, verified, rate, phase):
            bar.update(verified, phase, established=established, rate=f"{rate:,.0f}/s")

        with _as_tuner_errors():
            return _run(cfg, on_progress=on_progress, on_plan=on_plan)


def run_split(cfg, netns=None) -> dict:
    """`tuner probe --serve` / `--connect`: run the ServeConfig or ConnectConfig, with
    running totals on stderr (a live bar on a terminal, plain lines otherwise)."""
    from probes.runner import run_split as _run_split
    from probes.serve import ServeConfig

    with _as_tuner_errors():
        cfg.validate()
    serving = isinstance(cfg, ServeConfig)
    total = (cfg.expect or 0) if serving else cfg.connections
    with Progress(total, "serve" if serving else "connect", stream=sys.stderr) as bar:
        def on_event(event):
            kind = event.get("event")
            if kind in ("listening", "plan"):
                print(f"{kind}: {event['describe']}", file=sys.stderr, flush=True)
            elif kind == "progress" and serving:
                bar.update(event["verified"], event["phase"], accepted=event["accepted"],
                           held=event["held"], failed=event["failed"], over=event["over_expect"],
                           rate=f"{event['rate']:,.0f}/s")
            elif kind == "progress":
                bar.update(event["verified"], event["phase"], established=event["established"],
                           rate=f"{event['rate']:,.0f}/s")

        with _as_tuner_errors():
            return _run_split(cfg, netns=netns, on_event=on_event)
