"""The connection probe: prove N concurrent loopback TCP connections on this host.

    from probes import ProbeConfig, run_probe
    result = run_probe(ProbeConfig(connections=100_000), on_progress=plain_lines(100_000))

No CLI code lives here; `tuner probe` is a thin front over run_probe.
"""
from .config import ProbeConfig, ProbeConfigError, WorkerPlan, make_plan
from .launch import ProbeError, run_probe
from .progress_lines import plain_lines
from .result import EXIT_INTERNAL, EXIT_OK, EXIT_SHORT, EXIT_USAGE, Failure, ProbeResult

__all__ = ["ProbeConfig", "ProbeConfigError", "ProbeError", "ProbeResult", "Failure", "WorkerPlan",
           "make_plan", "run_probe", "plain_lines", "EXIT_OK", "EXIT_INTERNAL", "EXIT_USAGE",
           "EXIT_SHORT"]
