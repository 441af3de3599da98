"""Node.js: no connection cap by default, and none readable from outside.

`net.Server` and the `ws`/`http` servers on it accept until the kernel or the process's
descriptor limit stops them.  A program can set `server.maxConnections` (Node then
closes each connection beyond it at once), but that value lives in the program's
memory: nothing outside the process can read it (no file, no flag, no endpoint), so
tuner says so instead of guessing.
"""
from __future__ import annotations


from . import base
from .base import AppCap, ProcView

NAMES = ("node", "nodejs")


def recognise(proc: ProcView) -> bool:
    first = proc.cmdline[0].rsplit("/", 1)[-1] if proc.cmdline else ""
    return proc.exe_name in NAMES or first in NAMES


def read(proc: ProcView) -> AppCap:
    return AppCap("node", "no connection cap by default", None, f"pid {proc.pid}", base.DEFAULT,
                  "Node caps no connections unless the program sets server.maxConnections, "
                  "which is not readable from outside the process: if the service stops below "
                  "tuner's figure, look there and tell tuner with --app-limit N")


class Node(base.Adapter):
    name = "node"
    backlog_default = 511
    backlog_setting = "Node: server.listen({port, backlog: N}), default 511"

    def recognise(self, proc: ProcView) -> bool:
        return recognise(proc)

    def read(self, proc: ProcView) -> AppCap:
        return read(proc)


ADAPTER = Node()
