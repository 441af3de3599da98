"""The service cost sampler (tuner/host/servicecost.py, issue 26) against a real server
whose memory per connection is known by construction (tests/servers/costly.py: a
touched buffer of --bytes per connection), and against `ss -tmn` for the sockets'
kernel memory (the system tool reading the same SKMEMINFO)."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from tuner.host import servicecost

HERE = os.path.dirname(os.path.abspath(__file__))
COSTLY = os.path.join(HERE, "servers", "costly.py")
BUFFER = 64 * 1024


class Costly:
    """tests/servers/costly.py started here, and plain clients that each read its "ok"
    (the server allocated and touched the buffer before answering)."""

    def __init__(self, size: int = BUFFER, argv_prefix=(), extra=()):
        self.proc = subprocess.Popen([*argv_prefix, sys.executable, COSTLY, "--bytes", str(size), *extra],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "ready", f"costly server did not start: {line}"
        self.port = int(line[1])
        self.clients: list = []

    def hold(self, total: int) -> int:
        """Open clients until `total` are held (each answered "ok"); how many are held
        (fewer when the server refused or died)."""
        while len(self.clients) < total:
            s = socket.socket()
            s.settimeout(10)
            try:
                s.connect(("127.0.0.1", self.port))
                if s.recv(3) != b"ok\n":
                    raise OSError("no ok")
            except OSError:
                s.close()
                break
            self.clients.append(s)
        return len(self.clients)

    def close(self):
        for s in self.clients:
            s.close()
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def costly(nofile_raised):
    srv = Costly()
    yield srv
    srv.close()


def ss_skmem(port: int) -> dict:
    """Sums of r, w, f, o of `ss -tmnH` for the held sockets on `port`: the oracle."""
    out = subprocess.run(["ss", "-tmnH", "state", "established", "state", "close-wait",
                          f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    total = {"count": 0, "r": 0, "w": 0, "f": 0, "o": 0}
    for m in re.finditer(r"skmem:\(r(\d+),rb\d+,t\d+,tb\d+,f(\d+),w(\d+),o(\d+)", out):
        total["count"] += 1
        for key, value in zip("rfwo", m.groups()):
            total[key] += int(value)
    return total


def test_sampler_finds_the_listener_and_measures_a_known_buffer(costly):
    sampler = servicecost.Sampler(costly.port)
    assert sampler.roots == [costly.proc.pid]
    samples = []
    for count in (0, 150, 300, 450):
        assert costly.hold(count) == count
        samples.append(servicecost.Sampler.sample(sampler))
    assert [s.sockets for s in samples] == [0, 150, 300, 450]
    assert all(s.pids == [costly.proc.pid] for s in samples)
    per_conn = (samples[-1].memory_bytes - samples[0].memory_bytes) / 450
    # The buffer plus Python's own objects per connection (a socket object, a bytearray
    # header, dict and selector entries: well under 2 KB).
    assert BUFFER <= per_conn <= BUFFER + 3072, per_conn
    kernel = samples[-1]
    assert kernel.socket_slab_bytes == 450 * kernel.slab_bytes_per_socket
    assert kernel.kernel_bytes == kernel.socket_slab_bytes + kernel.socket_buffer_bytes
    assert kernel.cpu_seconds >= samples[0].cpu_seconds


def test_sampler_socket_memory_agrees_with_ss(costly):
    costly.hold(200)
    for s in costly.clients[:50]:
        s.send(b"x" * 3000)            # read by the server, answered by nothing (no newline)
    for s in costly.clients[50:60]:
        s.send(b"ping\n")
    sample = servicecost.Sampler(costly.port).sample()
    oracle = ss_skmem(costly.port)
    assert sample.sockets == oracle["count"] == 200
    # Queues drain between the two reads; the reserved memory (f) and options (o) do not.
    assert sample.skmem["optmem"] == oracle["o"]
    assert abs(sample.socket_buffer_bytes - (oracle["r"] + oracle["w"] + oracle["f"] + oracle["o"])) \
        <= 200 * 4096


def test_tree_counts_children_and_pss_counts_shared_pages_once(nofile_raised):
    """A forked child shares its parent's pages: PSS splits them, RSS counts them twice."""
    code = ("import os, time, sys; b = bytearray(32 << 20); "
            "pid = os.fork(); pid and print(pid, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline())
        assert servicecost.tree([proc.pid]) == sorted([proc.pid, child])
        both = [servicecost.smaps_rollup(p) for p in (proc.pid, child)]
        pss, rss = sum(b["pss"] for b in both), sum(b["rss"] for b in both)
        assert pss >= 32 << 20 and rss - pss >= 28 << 20
    finally:
        for pid in servicecost.tree([proc.pid]):
            os.kill(pid, 9)
        proc.wait()
