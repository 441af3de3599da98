#!/usr/bin/env python3
"""The per-connection floor of Python's ssl against which bench/bench_services.py holds
the probe's TLS memory: one plain process opens N connections one after another, each
an ssl.SSLObject over two MemoryBIOs (the handshake, then one HTTP/1.1 request and its
answer, ciphertext fed in 512-byte slices so neither BIO keeps more), and keeps only
(socket, SSLObject, BIOs) per connection.  Its USS grown over the N, per connection, is
the library's own cost: what no client of Python's ssl can go below.

    python bench/tls_floor.py HOST:PORT N 1.2|1.3 CA_FILE   -> one JSON line

Stdlib only.
"""
import json
import resource
import socket
import ssl
import sys
import time

SLICE = 512
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def uss() -> int:
    total = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


def one(ctx, host, port):
    """A connection: handshake, one request and its answer, ciphertext fed a slice at a
    time (each read out of the BIO before the next goes in)."""
    sock = socket.create_connection((host, port))
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=host)
    pending = b""

    def more():
        nonlocal pending
        if not pending:
            sock.sendall(out.read())
            pending = sock.recv(16384)
            if not pending:
                raise ConnectionError("closed by the server")
        inc.write(pending[:SLICE])
        pending = pending[SLICE:]

    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            more()
    obj.write(REQUEST)
    answer = b""
    while b"ok\n" not in answer:
        try:
            answer += obj.read(16384)
        except ssl.SSLWantReadError:
            more()
    while pending:                       # records after the answer (session tickets)
        more()
        try:
            obj.read(16384)
        except ssl.SSLWantReadError:
            pass
    sock.sendall(out.read())
    return sock, obj, inc, out


def main() -> int:
    hostport, n, version, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    host, _, port = hostport.rpartition(":")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ctx.maximum_version = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
    ctx.set_alpn_protocols(["http/1.1"])
    held = [one(ctx, host, int(port)) for _ in range(50)]      # warm: first allocations aside
    before, t0 = uss(), time.monotonic()
    held += [one(ctx, host, int(port)) for _ in range(n)]
    seconds = time.monotonic() - t0
    time.sleep(0.5)
    grown = uss() - before
    print(json.dumps({"version": "TLSv" + version, "held": n, "floor_bytes_per_conn": round(grown / n),
                      "rate_per_s": round(n / seconds), "seconds": round(seconds, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
