#!/usr/bin/env python3
"""Benchmark for `tuner diagnose` (issue 10): diagnosing a busy service must be cheap.

Inside a throwaway network namespace, `tuner probe --serve` (its SO_REUSEPORT workers)
holds N connections from `tuner probe --connect` (default 200,000). Then, in the same
run, it times `tuner diagnose --port P --netns NS --json` (the whole command, start-up
included) next to `tuner report --json` (the reference), and the library call
`tuner.diagnose.evaluate.diagnose()` alone; and checks the figures diagnose reads against the
load (connections held = N). Goal: diagnose under one second at 200,000.

    flock /work/.testlock python bench/bench_diagnose.py [--connections 200000] [--runs 5]

Prints figures; asserts nothing. Needs root (namespaces). Run it under the test lock:
it holds N connections' worth of kernel memory while it runs.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

PORT = 7000


def tuner(*args, **kw):
    return [sys.executable, "-m", "tuner", *map(str, args)]


def timed(argv, runs):
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        times.append(time.perf_counter() - t0)
        out = proc
    return times, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    n = args.connections

    from pyroute2 import netns as pnetns

    ns = f"tuner-bench-{uuid.uuid4().hex[:6]}"
    pnetns.create(ns)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    procs = []
    try:
        serve = subprocess.Popen(["ip", "netns", "exec", ns, *tuner("probe", "--serve", f"127.0.0.1:{PORT}",
                                                                    "--expect", n, "--timeout", 900)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        procs.append(serve)
        time.sleep(2)
        connect = subprocess.Popen(["ip", "netns", "exec", ns, *tuner("probe", "--connect", f"127.0.0.1:{PORT}",
                                                                      "-n", n, "--source-net", "127.0.0.0/24",
                                                                      "--hold", 900, "--timeout", 600)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        procs.append(connect)
        t0 = time.monotonic()
        held = 0
        while held < n and connect.poll() is None:
            time.sleep(2)
            d = subprocess.run(tuner("diagnose", "--port", PORT, "--netns", ns, "--json"),
                               capture_output=True, text=True, cwd=ROOT)
            if d.returncode in (0, 3):
                held = json.loads(d.stdout)["connections"]["held"]
            print(f"  loading: {held:,} of {n:,} held after {time.monotonic() - t0:,.0f} s", flush=True)
        if held < n:
            print(f"the load did not reach {n:,} (held {held:,}); figures below are for {held:,}")

        d_times, d_out = timed(tuner("diagnose", "--port", PORT, "--netns", ns, "--json"), args.runs)
        r_times, _ = timed(tuner("report", "--json"), args.runs)
        v_times, _ = timed(tuner("--version"), args.runs)
        d = json.loads(d_out.stdout)

        from tuner.diagnose import evaluate as diagnose_mod
        lib_times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            lib = diagnose_mod.diagnose(pids=d["pids"])
            lib_times.append(time.perf_counter() - t)

        med = statistics.median
        print()
        print(f"service: {len(d['pids'])} probe --serve worker(s) on port {PORT} in {ns}, "
              f"{d['connections']['held']:,} connections held (library: {lib.connections['held']:,}), "
              f"{d['connections']['peers']:,} distinct peers")
        print(f"verdict: {d['verdict']}")
        print(f"{'command':<44}{'median':>10}{'min':>10}{'max':>10}")
        for name, ts in ((f"tuner diagnose --port {PORT} --json", d_times),
                         ("tuner report --json (reference)", r_times),
                         ("tuner --version (interpreter start-up)", v_times),
                         ("diagnose() library call", lib_times)):
            print(f"{name:<44}{med(ts):>9.3f}s{min(ts):>9.3f}s{max(ts):>9.3f}s")
        print(f"goal: diagnose under 1 s at {n:,}: {'met' if med(d_times) < 1.0 else 'NOT met'} "
              f"(diagnose/report {med(d_times) / med(r_times):.2f})")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        left = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in left:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        pnetns.remove(ns)


if __name__ == "__main__":
    main()
