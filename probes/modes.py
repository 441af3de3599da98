"""The probe's three modes behind one interface: the local probe (config.ProbeConfig,
local.Local, result.ProbeResult), the server end of a probe across hosts
(serve.ServeConfig, Server, ServeResult) and its client end (connect.ConnectConfig,
Client, ConnectResult).  A configuration names its mode (MODE) and the `python -m
probes` arguments that pick it (mode_argv); `orchestrator(cfg)(cfg, emit).run()` runs
it and returns its typed result (result.ModeResult: ok, exit_code, summary_lines,
to_dict), which `result_type(cfg).from_dict` reads back from the lean interpreter.

A mode's modules load when asked for: tuner's process (launch.run) reads results only,
the lean interpreter runs one mode."""
from __future__ import annotations

import importlib

# MODE -> where its orchestrator and its result type live, "module:name".
MODES = {"local": ("probes.local:Local", "probes.result:ProbeResult"),
         "serve": ("probes.serve:Server", "probes.serve:ServeResult"),
         "connect": ("probes.connect:Client", "probes.connect:ConnectResult")}


def _load(where: str) -> type:
    module, name = where.split(":")
    return getattr(importlib.import_module(module), name)


def orchestrator(config) -> type:
    return _load(MODES[config.MODE][0])


def result_type(config) -> type:
    return _load(MODES[config.MODE][1])
