"""The service cost sampler (tuner/host/servicecost.py, issue 26) against a real server
whose memory per connection is known by construction (tests/servers/costly.py: a
touched buffer of --bytes per connection), and against `ss -tmn` for the sockets'
kernel memory (the system tool reading the same SKMEMINFO)."""
from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
import time

import pytest

from tuner.host import fdsample, servicecost, sockdiag

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
    # No V8 here: the buffers are malloc's ([heap]), so the V8 heap figure does not
    # follow them (test_cost_node.py measures it where it does).
    assert abs(samples[-1].heap_bytes - samples[0].heap_bytes) <= 0.05 * BUFFER * 450, \
        [s.heap_bytes for s in samples]


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


def _meminfo(sock: socket.socket) -> tuple:
    """The nine figures sock_diag's SKMEMINFO carries, read from the socket itself."""
    return struct.unpack("=9I", sock.getsockopt(socket.SOL_SOCKET, fdsample.SO_MEMINFO, 36))


def _settled(socks) -> list:
    """Each socket's BUFFER_FIELDS figures once two reads agree (loopback delivery done)."""
    index = [sockdiag.SKMEM_FIELDS.index(k) for k in servicecost.BUFFER_FIELDS]
    for _ in range(50):
        first = [_meminfo(s) for s in socks]
        time.sleep(0.05)
        if first == [_meminfo(s) for s in socks]:
            return [[m[i] for i in index] for m in first]
    raise AssertionError("socket buffers kept moving")


def test_one_walk_dump_reads_the_service_sockets_and_not_the_clients(nofile_raised):
    """Both ends on this host: a service listening on 127.0.0.1:P and [::1]:P (two families),
    clients of it, and another service on Q with its own clients. The v1 dump (one walk,
    both families) counts exactly the accepted sockets on P (not the clients, whose
    remote port is P, nor Q's) and sums exactly their SO_MEMINFO figures; the per-family
    dumps add up to it. Each side has unread bytes queued, so a wrong side changes the sums."""
    l4 = socket.socket()
    l4.bind(("127.0.0.1", 0))
    port = l4.getsockname()[1]
    l6 = socket.socket(socket.AF_INET6)
    l6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    l6.bind(("::1", port))
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    opened = [l4, l6, other]
    try:
        for lsock in (l4, l6, other):
            lsock.listen(128)
        plan = [(l4, "127.0.0.1", 30), (l6, "::1", 20), (other, "127.0.0.1", 10)]
        served = {}
        for lsock, host, count in plan:
            for i in range(count):
                client = socket.create_connection((host, lsock.getsockname()[1]))
                server = lsock.accept()[0]
                opened += [client, server]
                client.sendall(b"c" * (1000 + 37 * i))     # unread by the server
                server.sendall(b"s" * 3000)                # unread by the client
                served.setdefault(lsock, []).append(server)
        mine = served[l4] + served[l6]
        expect = [sum(col) for col in zip(*_settled(mine))]
        assert expect[0] > 0                               # rmem_alloc: the unread bytes
        bytecode = sockdiag.port_filter([port])
        fields = servicecost.BUFFER_FIELDS
        whole = sockdiag.dump_skmem(socket.AF_UNSPEC, sockdiag.HELD_STATES, bytecode, fields)
        v4 = sockdiag.dump_skmem(socket.AF_INET, sockdiag.HELD_STATES, bytecode, fields)
        v6 = sockdiag.dump_skmem(socket.AF_INET6, sockdiag.HELD_STATES, bytecode, fields)
        assert whole == (50, expect)
        assert (v4[0], v6[0]) == (30, 20)
        assert [a + b for a, b in zip(v4[1], v6[1])] == expect
        clients = [s for s in opened[3:] if s not in sum(served.values(), [])]
        assert sum(m[0] for m in _settled(clients)) > 0   # the clients' side holds bytes too
    finally:
        for s in opened:
            s.close()


HOLDER = r"""
import os, socket, sys
lsock = socket.socket()
lsock.bind(("127.0.0.1", 0))
lsock.listen(1024)
log = open(os.devnull, "rb")            # descriptors that are not held sockets on the port
pair = socket.socketpair()
out = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print(lsock.getsockname()[1], flush=True)
held = [lsock.accept()[0] for _ in range(int(sys.argv[2]))]
print("held", flush=True)
sys.stdin.read()
"""


def test_descriptor_sample_reads_what_sock_diag_reads(nofile_raised):
    """A real process holding 400 accepted sockets with unread bytes of different sizes, a
    listener, a file, a socket pair and an outbound connection on another port: read
    through its descriptors (pidfd_getfd, every one), the held sockets on its port and
    their buffer figures are exactly sock_diag's; drawn (64 per sample), the count and the
    buffers are estimates near them, and the Sampler says how many it read."""
    elsewhere = socket.socket()
    elsewhere.bind(("127.0.0.1", 0))
    elsewhere.listen(8)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(elsewhere.getsockname()[1]), "400"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    clients = []
    try:
        port = int(proc.stdout.readline())
        for i in range(400):
            clients.append(socket.create_connection(("127.0.0.1", port)))
            clients[-1].sendall(b"x" * (200 + 50 * (i % 40)))
        assert proc.stdout.readline().strip() == "held"
        fields = servicecost.BUFFER_FIELDS
        index = [sockdiag.SKMEM_FIELDS.index(k) for k in fields]
        exact = sockdiag.dump_skmem(socket.AF_UNSPEC, sockdiag.HELD_STATES, sockdiag.port_filter([port]), fields)
        every = fdsample.service([proc.pid], port, sockdiag.HELD_STATES, budget=100_000)
        assert exact[0] == 400 and exact[1][0] > 0
        assert (every.sockets, every.held_read) == (400, 400)
        assert [every.sums[i] for i in index] == exact[1]
        apart = fdsample.isolated([proc.pid], port, sockdiag.HELD_STATES, budget=100_000)
        assert (apart.sockets, apart.held_read, apart.sums) == (every.sockets, every.held_read, every.sums)
        assert apart.cpu_seconds >= 0
        drawn = fdsample.service([proc.pid], port, sockdiag.HELD_STATES, budget=64, seed=7)
        assert 64 <= drawn.held_read < 400
        assert abs(drawn.sockets - 400) <= 400 * 0.05
        assert abs(drawn.sums[index[0]] - exact[1][0]) <= exact[1][0] * 0.25
        sampler = servicecost.Sampler(port)
        assert sampler.sample().sampled == 0                       # 400 held: every socket
        servicecost.SAMPLE_FROM, saved = 0, servicecost.SAMPLE_FROM
        try:
            sample = sampler.sample()
        finally:
            servicecost.SAMPLE_FROM = saved
        assert sample.sampled > 0 and abs(sample.sockets - 400) <= 400 * 0.05
        assert sample.kernel_bytes == sample.sockets * sample.slab_bytes_per_socket + sample.socket_buffer_bytes
    finally:
        for s in clients:
            s.close()
        proc.kill()
        proc.wait()
        elsewhere.close()


def test_a_descriptor_whose_close_waits_cannot_hold_tuner(nofile_raised, monkeypatch):
    """The duplicates of the service's descriptors live in a child tuner walks away from:
    closing one may wait on what the service chose (a file on its own FUSE mount, whose
    flush its daemon never answers).  Made here by a stand-in, as the test says: the
    reading in the child is replaced by one that never returns (a FUSE daemon of the
    test's own is not made); the listener and its 50 held sockets are real.  tuner gives
    up within the timeout, kills the child, and reads every socket through sock_diag."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    accepted = [listener.accept()[0] for _ in clients]
    monkeypatch.setattr(fdsample, "service", lambda *a, **k: time.sleep(3600))
    try:
        t0 = time.monotonic()
        with pytest.raises(fdsample.Unsupported, match="took over 0.5 s"):
            fdsample.isolated([os.getpid()], port, sockdiag.HELD_STATES, timeout=0.5)
        assert time.monotonic() - t0 < 30
        sampler = servicecost.Sampler(port, pids=[os.getpid()])
        monkeypatch.setattr(fdsample, "CHILD_SECONDS", 0.5)
        monkeypatch.setattr(servicecost, "SAMPLE_FROM", 0)
        sample = sampler.sample()
        assert (sample.sockets, sample.sampled, sampler.descriptors) == (50, 0, False)
    finally:
        for s in clients + accepted:
            s.close()
        listener.close()


def test_step_table_marks_sampled_figures():
    """A step whose sockets were sampled shows its kernel figure with '~' and a line says
    how many sockets the estimate rests on; an exact step shows none."""
    from tuner import render   # the text side, for this one test

    def row(held, sampled):
        return {"step": 1, "connections": held, "service_memory_bytes": 50 << 20,
                "service_kernel_bytes": held * 4028, "service_cpu_seconds": 1.0,
                "latency_ms": None, "service_sampled": sampled}

    text = "\n".join(render.step_table({"steps": [row(10_000, 0), row(100_000, 1148)], "ramp": {}}, 100))
    assert "~384.1 MiB" in text and "~38.4 MiB" not in text
    assert "up to 1,148 held sockets read through the service's descriptors" in text
    plain = "\n".join(render.step_table({"steps": [row(10_000, 0)], "ramp": {}}, 100))
    assert "~" not in plain
