#!/usr/bin/env python3
"""Benchmark for `tuner metrics --listen` (issue 12): scrape latency under load.

Starts `tuner metrics --listen 127.0.0.1:0`, then times HTTP scrapes of /metrics and
`tuner report --json` runs, first on the idle host (the reference run), then with
200,000 sockets open (100,000 loopback connections held by shared/bench/conncap.c).
A scrape re-reads the host like a report does but pays no interpreter start-up, so the
two columns say what a scrape costs and what a cron'd `--textfile` run costs.
Goal (the issue's): a scrape well under a second, with the socket count not mattering
(every read is O(1) in sockets: sockstat, never a socket walk).

    flock /work/.testlock python bench/bench_metrics.py [--load 100000] [--runs 20]

Prints figures; asserts nothing. Needs root (slabinfo) and gcc.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from bench_report import Held, build_conncap  # noqa: E402
from tuner.host import procfs  # noqa: E402


def start_server():
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "metrics", "--listen", "127.0.0.1:0"],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stderr.readline()
    m = re.search(r"(http://127\.0\.0\.1:\d+/metrics)", line)
    if not m:
        proc.kill()
        sys.exit(f"tuner metrics --listen did not start: {line}{proc.stderr.read()}")
    return proc, m.group(1)


def scrape_times(url, runs):
    times, body = [], b""
    for _ in range(runs):
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = resp.read()
        times.append(time.perf_counter() - t0)
    return times, body


def report_times(runs):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tuner", "report", "--json"], check=True,
                       stdout=subprocess.DEVNULL, cwd=ROOT)
        times.append(time.perf_counter() - t0)
    return times


def row(label, sockets, scrapes, reports):
    med = statistics.median
    print(f"  {label:<10} {sockets:>9,}  scrape median {med(scrapes) * 1000:7.1f} ms  "
          f"max {max(scrapes) * 1000:7.1f} ms   report --json median {med(reports) * 1000:7.1f} ms")
    return med(scrapes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", type=int, default=100_000, help="connections held (2 sockets each)")
    ap.add_argument("--runs", type=int, default=20, help="scrapes per phase (reports: a quarter)")
    args = ap.parse_args()
    server, url = start_server()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            exe = build_conncap(tmp)
            print(f"tuner metrics --listen scrape vs tuner report --json ({args.runs} scrapes, "
                  f"{max(args.runs // 4, 3)} reports per phase):")
            print(f"  {'phase':<10} {'sockets':>9}")
            idle = procfs.sockstat()["sockets"]["used"]
            ref = row("reference", idle, scrape_times(url, args.runs)[0], report_times(max(args.runs // 4, 3)))
            with Held(exe, args.load):
                sockets = procfs.sockstat()["sockets"]["used"]
                scrapes, body = scrape_times(url, args.runs)
                loaded = row("loaded", sockets, scrapes, report_times(max(args.runs // 4, 3)))
            open_line = next(line for line in body.decode().splitlines()
                             if line.startswith("tuner_connections_open"))
            print(f"  the loaded scrape saw: {open_line}")
            print(f"  loaded / reference scrape: {loaded / ref:.2f}  (goal: well under 1 s, "
                  f"independent of the socket count)")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
