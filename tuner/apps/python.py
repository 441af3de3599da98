"""Python servers (asyncio, socketserver): no connection cap of their own; a small
listen backlog by default.

asyncio's start_server()/create_server() listen with backlog=100 and socketserver's
TCPServer (http.server among them) with request_queue_size=5 unless told otherwise: a
burst of connects beyond that while the loop is busy overflows the accept queue.
Neither caps how many connections stay open: the kernel and the descriptor limit do.
"""
from __future__ import annotations

import os

from . import base
from .base import AppCap, ProcView


def recognise(proc: ProcView) -> bool:
    names = [proc.exe_name] + [os.path.basename(a) for a in proc.cmdline[:1]]
    return any(n.startswith(("python", "pypy")) for n in names)


def read(proc: ProcView) -> AppCap:
    return AppCap("python", "no connection cap of its own", None, f"pid {proc.pid}", base.DEFAULT,
                  "asyncio and socketserver cap no connections (a program may, with a semaphore "
                  "or a pool: tell tuner with --app-limit N); their listen backlog is small by "
                  "default (asyncio 100, socketserver 5)")


class Python(base.Adapter):
    name = "python"
    backlog_default = 100
    backlog_setting = ("asyncio: start_server(..., backlog=N) / loop.create_server(..., backlog=N), "
                       "default 100; socketserver: request_queue_size = N, default 5")

    def recognise(self, proc: ProcView) -> bool:
        return recognise(proc)

    def read(self, proc: ProcView) -> AppCap:
        return read(proc)


ADAPTER = Python()
