#!/usr/bin/env python3
"""Benchmark for the service cost sampler (issue 26): one sample of a service holding
100,000 connections, against the ways of reading the same sockets that it replaced, in
the same run:

    sampler     servicecost.Sampler as tuner uses it: past 20,000 descriptors, the held
                sockets counted and their buffers estimated from a sample of the service's
                own descriptors (tuner.host.fdsample)
    every       every held socket read through sock_diag, one walk of the socket table for
                both families (the sampler below 20,000 descriptors)
    per family  every held socket, one sock_diag walk per address family: how the
                sampler read them before 2026-12-07 (with a slower parse then: 198 ms
                a sample on 2026-12-06)
    ss -tmn     the system tool printing the same SKMEMINFO

The service is `tuner probe --serve` (several workers: the hard RLIMIT_NOFILE here is
20,000) in a fresh network namespace, loaded by `tuner probe --connect tuner://` over
127.0.0.0/8 and held; the ways are timed in turn, --samples rounds (median wall time).
Goal: the sampler under 50 ms; its count and buffers beside every socket's.

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
    """The sampler, once `n` sockets are held on the port (every one counted: a sampled
    count may read a few short of n)."""
    with hostns.in_netns(ns):
        sampler = servicecost.Sampler(port)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with hostns.in_netns(ns):
            if sampler.dump()[0] >= n:
                return sampler
        time.sleep(1)
    raise RuntimeError(f"{n:,} connections were not held within {seconds:g} s")


def timed(ways: dict, rounds: int) -> dict:
    """{name: (median wall ms, median CPU ms of this process, last result)}, the ways
    taken in turn each round (a drift of the machine's speed is shared)."""
    wall = {k: [] for k in ways}
    cpu = {k: [] for k in ways}
    out = {}
    for _ in range(rounds):
        for name, fn in ways.items():
            w, c = time.perf_counter(), time.process_time()
            out[name] = fn()
            wall[name].append((time.perf_counter() - w) * 1000)
            cpu[name].append((time.process_time() - c) * 1000)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k]), out[k]) for k in ways}


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
            every = servicecost.Sampler(port)
            every.descriptors = False
            per_family = servicecost.Sampler(port)
            per_family.descriptors, per_family.unspec = False, False
            got = timed({"sampler": sampler.sample, "every": every.sample, "per family": per_family.sample}, samples)
        got["ss"] = timed({"ss": lambda: ss_reference(ns, port)}, max(3, samples // 3))["ss"]
        return {"n": n, "ways": {k: {"wall_ms": w, "cpu_ms": c} for k, (w, c, _) in got.items()},
                "sample": got["sampler"][2].to_dict(), "every": got["every"][2].to_dict(),
                "ss_sockets": got["ss"][2]}
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
    s, e, ways = r["sample"], r["every"], r["ways"]
    print(f"{time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} vCPUs, "
          f"Linux {platform.release()}, n={args.n:,}, {args.samples} rounds, {len(s['pids'])} processes")
    read = f"{s['sampled']:,} read through its descriptors" if s["sampled"] else "every one read"
    for name, what in (("sampler", f"{s['sockets']:,} sockets, {read} (goal < 50 ms wall)"),
                       ("every", f"{e['sockets']:,} sockets, every one read, one walk"),
                       ("per family", "every one read, a walk per family (before 2026-12-07)"),
                       ("ss", f"ss -tmn, {r['ss_sockets']:,} sockets")):
        w = ways[name]
        print(f"{name:<11} {w['wall_ms']:7.1f} ms wall {w['cpu_ms']:7.1f} ms CPU (median)  {what}")
    print(f"sampled / every socket: sockets {s['sockets'] / max(1, e['sockets']):.4f}, buffers "
          f"{s['socket_buffer_bytes']:,} / {e['socket_buffer_bytes']:,} B, kernel {s['kernel_bytes'] / 2**20:.1f} / "
          f"{e['kernel_bytes'] / 2**20:.1f} MiB; service PSS {s['memory_bytes'] / 2**20:.1f} MiB; "
          f"{s['slab_bytes_per_socket']} B slab/socket ({s['slab_source']})")
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
