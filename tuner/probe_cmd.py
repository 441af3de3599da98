"""The CLI's side of `tuner probe`: run probes/ with progress and map its errors.

probes/ knows nothing of tuner's CLI; this module adapts its callbacks to a live bar
(terminal) or plain lines, and its exceptions to tuner's exit codes.
"""
from __future__ import annotations

import sys

from probes import ProbeConfig, ProbeConfigError, run_probe as _run
from probes.runner import ProbeError

from .errors import TunerError, UsageError
from .progress import Progress


def run_probe(n: int, pre, json_out: bool, **settings):
    cfg = ProbeConfig(connections=n, **settings)
    try:
        cfg.validate()
    except ProbeConfigError as e:
        raise UsageError(str(e)) from None
    with Progress(n, "probe", stream=sys.stderr) as bar:
        def on_plan(plan):
            print(f"plan: {plan['describe']}; pre-flight: {pre.report.processes['processes']} "
                  f"process(es) needed, max now {pre.report.max_connections:,} "
                  f"({pre.report.binding} binds first)", file=sys.stderr, flush=True)

        def on_progress(established, verified, rate, phase):
            bar.update(verified, phase, established=established, rate=f"{rate:,.0f}/s")

        try:
            return _run(cfg, on_progress=on_progress, on_plan=on_plan)
        except ProbeConfigError as e:
            raise UsageError(str(e)) from None
        except ProbeError as e:
            raise TunerError(str(e)) from None
