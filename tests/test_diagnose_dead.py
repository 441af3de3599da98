"""Descriptors held by dead connections: sockets whose peer closed but the service never
closed (CLOSE_WAIT on the service's own ports, counted from sock_diag, no descriptor
walk) are counted and named in the verdict."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from conftest import run_tuner
from tuner.host.netns import in_netns

# Accepts and keeps every connection, never reads or closes one (a leak).
HOARDER = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(128)
print(s.getsockname()[1], flush=True)
held = []
while True:
    held.append(s.accept()[0])
"""


def test_sockets_the_peer_closed_are_named_and_counted(netns):
    server = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", HOARDER],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        with in_netns(netns):
            clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
        time.sleep(0.5)
        for c in clients:
            c.close()
        deadline = time.monotonic() + 10
        while True:
            d = json.loads(run_tuner("diagnose", "--port", port, "--netns", netns, "--json").stdout)
            if d["connections"]["peer_closed"] == 40 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert d["connections"]["peer_closed"] == 40 and d["connections"]["held"] == 40
        assert "40 descriptors are sockets the peer closed: the service does not close them" in d["verdict"]
        # The room left now comes first, and the 40 are named as the service's own leak (issue 28).
        more = d["max_connections"] - d["connections"]["held"]
        assert d["verdict"].startswith(f"can take {more:,} more now (its own leak holds 40), "
                                       f"stalls at {d['max_connections']:,} connections: "), d["verdict"]
    finally:
        server.kill()
        server.wait()
