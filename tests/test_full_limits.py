"""diagnose says `full` and `near` from the one rule (tuner.capacity.status) report and
metrics use: real limits filled for real in a throwaway namespace, a real server."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from test_diagnose import asyncio_server, diagnose_json, stop
from test_fit import on_terminal
from tuner import style
from test_report_cli import TIME_WAIT_CLIENTS, ns_tw

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="fills limits in a namespace")


def test_diagnose_names_a_full_time_wait_table_and_a_process_at_its_descriptor_limit(netns):
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.tcp_max_tw_buckets=16"], check=True)
    subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", TIME_WAIT_CLIENTS, "40"], check=True,
                   timeout=60)
    assert ns_tw(netns) == 16
    srv = asyncio_server(netns, 7411)
    try:
        # The server's soft RLIMIT_NOFILE lowered to the descriptors it holds: 100% in use.
        fds = len(os.listdir(f"/proc/{srv.pid}/fd"))
        subprocess.run(["prlimit", "--pid", str(srv.pid), f"--nofile={fds}:"], check=True)
        d = diagnose_json("--pid", srv.pid)
        shown = on_terminal(["diagnose", "--pid", srv.pid], 200)
    finally:
        stop(srv)
    rows = {(r["name"], r["pid"]): r for r in d["limits"]}
    tw = rows[("net.ipv4.tcp_max_tw_buckets", None)]
    assert tw["used"] == 16 and tw["status"] == "full", tw
    soft = rows[("RLIMIT_NOFILE.soft", srv.pid)]
    assert soft["used"] == fds and soft["status"] == "full", soft
    # On a terminal the word is red, as report's (tuner.style).
    assert f"{style.RED}full{style.RESET}" in shown, shown
