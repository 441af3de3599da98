"""The connection probe: prove N concurrent loopback TCP connections on this host.

    from probes import ProbeConfig, run_probe
    result = run_probe(ProbeConfig(connections=100_000), on_progress=plain_lines(100_000))

No CLI code lives here; `tuner probe` is a thin front over run_probe.  The names below
load with their module on first use (PEP 562): `tuner --help` reads the protocol
registry (probes.protocols) and pays for nothing else of the probe.
"""
import importlib

_HOMES = {"ProbeConfig": "config", "ProbeConfigError": "config", "WorkerPlan": "config", "make_plan": "config",
          "ProbeError": "launch", "run_probe": "launch", "plain_lines": "progress_lines",
          "EXIT_INTERNAL": "result", "EXIT_OK": "result", "EXIT_SHORT": "result", "EXIT_USAGE": "result",
          "Failure": "result", "ProbeResult": "result"}

__all__ = ["ProbeConfig", "ProbeConfigError", "ProbeError", "ProbeResult", "Failure", "WorkerPlan",
           "make_plan", "run_probe", "plain_lines", "EXIT_OK", "EXIT_INTERNAL", "EXIT_USAGE",
           "EXIT_SHORT"]


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
