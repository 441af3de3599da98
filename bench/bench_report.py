#!/usr/bin/env python3
"""Benchmark for `tuner report` (issue 2): accuracy of the idle estimate, and speed under load.

1. Hold 20,000 loopback connections with the C reference (shared/bench/conncap.c) and
   compare the slab growth it measures per connection with the report's idle estimate
   (epoll off, as conncap uses none). Goal: within 10%.
2. Time `tuner report` with no extra sockets (the reference run) and with 200,000
   sockets open (100,000 loopback connections). Goal: under 0.5 s.

    python bench/bench_report.py [--connections 20000] [--load 100000]

Prints figures; asserts nothing. Needs root (slabinfo) and gcc.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tuner import assess, capacity  # noqa: E402
from tuner.knobs import Ctx  # noqa: E402

CONNCAP_C = os.environ.get("CONNCAP_C", os.path.join(HERE, "..", "..", "shared", "bench", "conncap.c"))


def build_conncap(tmp):
    exe = os.path.join(tmp, "conncap")
    subprocess.run(["gcc", "-O2", "-o", exe, CONNCAP_C], check=True)
    return exe


class Held:
    """conncap holding N connections until the context exits."""

    def __init__(self, exe, n):
        self.proc = subprocess.Popen([exe, str(n)], stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "HOLD": "600"})
        self.line = self.proc.stdout.readline()  # printed once every connection is verified
        self.figures = dict(kv.split("=") for kv in self.line.split())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def time_report(runs=5):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tuner", "report", "--json"], check=True,
                       stdout=subprocess.DEVNULL, cwd=os.path.dirname(HERE))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=20000)
    ap.add_argument("--load", type=int, default=100000, help="connections held while timing (2 sockets each)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_conncap(tmp)

        estimate = capacity.evaluate(Ctx(assess.snapshot(), role="loopback", epoll=False))
        est = estimate.memory["idle_bytes_per_connection"]
        with Held(exe, args.connections) as held:
            measured = float(held.figures["slab_bytes_per_conn"])
        print(f"idle kernel memory per loopback connection, {args.connections:,} held:")
        print(f"  measured slab growth (conncap) {measured:8.0f} B")
        print(f"  tuner report estimate          {est:8.0f} B   ratio {est / measured:.3f}  (goal 0.90-1.10)")
        print(f"  estimate breakdown: {estimate.memory['idle_breakdown']}")

        reference = time_report()
        with Held(exe, args.load) as held:
            loaded = time_report()
            sockets = assess.snapshot().sockstat["sockets"]["used"]
        print("tuner report wall time (median of 5):")
        print(f"  reference, idle host          {reference:.3f} s")
        print(f"  with {sockets:,} sockets open {loaded:.3f} s   ratio {loaded / reference:.2f}  (goal < 0.5 s)")


if __name__ == "__main__":
    main()
