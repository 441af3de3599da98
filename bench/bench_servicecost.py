#!/usr/bin/env python3
"""Benchmark for the service cost sampler (issue 26): one sample of a service holding
100,000 connections, against `ss -tmn` reading the same sockets' memory in the same run
(the reference: the system tool that prints the same SKMEMINFO).

The service is `tuner probe --serve` (several workers: the hard RLIMIT_NOFILE here is
20,000) in a fresh network namespace, loaded by `tuner probe --connect tuner://` over
127.0.0.0/8 and held; while held, tuner.host.servicecost.Sampler samples it --samples
times (PSS of every process, SKMEMINFO of every held socket, CPU) and `ss -tmnH
sport = :PORT` runs --samples times.  Goal: one sample under 50 ms (median wall time).

    python bench/bench_servicecost.py [-n 100000] [--samples 15]

Prints a table; asserts nothing.  Needs root.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import realservers  # noqa: E402
from bench_services import PER_PROCESS, netns_add, netns_del, wait_listening  # noqa: E402
from tuner.host import netns as hostns, servicecost  # noqa: E402


def held(ns: str, port: int, n: int, seconds: float = 600) -> servicecost.Sampler:
    """The sampler, once `n` sockets are held on the port."""
    with hostns.in_netns(ns):
        sampler = servicecost.Sampler(port)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with hostns.in_netns(ns):
            if sampler.sample().sockets >= n:
                return sampler
        time.sleep(1)
    raise RuntimeError(f"{n:,} connections were not held within {seconds:g} s")


def timed(fn, count: int):
    """(median wall ms, median CPU ms of this process, last result)."""
    wall, cpu, out = [], [], None
    for _ in range(count):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        wall.append((time.perf_counter() - w) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    return statistics.median(wall), statistics.median(cpu), out


def ss_reference(ns: str, port: int) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-tmnH", "state", "established",
                          f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return out.count("skmem:")


def run(n: int, samples: int) -> dict:
    ns = netns_add()
    port = realservers.free_port(("127.0.0.1",), ns)
    workers = -(-n // PER_PROCESS)
    srv = subprocess.Popen([sys.executable, "-m", "tuner", "probe", "--netns", ns, "--serve",
                            f"127.0.0.1:{port}", "--expect", str(n), "--hold", "900",
                            "--workers", str(workers), "--timeout", "900", "--json", "-q"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    cli = None
    try:
        wait_listening(ns, port)
        cli = subprocess.Popen([sys.executable, "-m", "tuner", "probe", "--netns", ns, "--connect",
                                f"tuner://127.0.0.1:{port}", "-n", str(n), "--source-net",
                                "127.0.0.0/8", "--hold", "300", "--timeout", "300", "--json", "-q"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        sampler = held(ns, port, n)
        with hostns.in_netns(ns):
            wall, cpu, last = timed(sampler.sample, samples)
        ss_wall, _, ss_count = timed(lambda: ss_reference(ns, port), max(3, samples // 3))
        return {"n": n, "processes": len(last.pids), "sockets": last.sockets, "wall_ms": wall,
                "cpu_ms": cpu, "ss_ms": ss_wall, "ss_sockets": ss_count, "sample": last.to_dict()}
    finally:
        for proc in (cli, srv):
            if proc is not None:
                proc.kill()
                proc.wait()
        netns_del(ns)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=15)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()
    r = run(args.n, args.samples)
    s = r["sample"]
    print(f"{time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} vCPUs, "
          f"Linux {platform.release()}, n={args.n:,}, {args.samples} samples")
    print(f"sampler: {r['wall_ms']:.1f} ms wall, {r['cpu_ms']:.1f} ms CPU (median) for "
          f"{r['processes']} processes and {r['sockets']:,} sockets (goal < 50 ms wall)")
    print(f"ss -tmn (reference, same sockets): {r['ss_ms']:.1f} ms wall "
          f"({r['ss_sockets']:,} sockets); sampler/ss = {r['wall_ms'] / r['ss_ms']:.2f}")
    print(f"service: PSS {s['memory_bytes'] / 2**20:.1f} MiB, sockets' kernel memory "
          f"{s['kernel_bytes'] / 2**20:.1f} MiB ({s['socket_buffer_bytes'] / 2**20:.1f} buffers + "
          f"{s['socket_slab_bytes'] / 2**20:.1f} slab at {s['slab_bytes_per_socket']} B/socket, "
          f"{s['slab_source']})")
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
