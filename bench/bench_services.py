#!/usr/bin/env python3
"""Benchmark for `tuner probe --connect URL` (issue 18): 100,000 connections held, each
verified twice, against real servers in one run, with tuner's own exchange as the
reference:

    tuner   tuner probe --serve   <- tuner probe --connect tuner://...   (the reference)
    http    nginx (reuseport workers, enough worker_connections) <- --connect http://
    ws      the `ws` package in Node cluster workers (bench/ws_cluster.js) <- --connect ws://

For each: the open rate (connections answered per second, the first check), the time
the second check took at the end of the hold, and the probe workers' user memory (USS)
per held connection. Goals: http and ws open rates >= 0.7x tuner's own in the same run;
<= 1.5 KB of user memory per held connection.

Then the same nginx stepped and kept busy (issue 26): `--step N/4 --ping-every 10
--hold H2` (every held connection one request per 10 s for the whole hold): the
probe's user memory per held connection with that traffic (goal <= 1.5 KB), the hold's
exchanges against n x H2 / 10, the hold's latency, each step's row (the service's
memory and its sockets' kernel memory) and what sampling the service took per step
(goal < 50 ms at 100,000).

Each run happens in a fresh network namespace (deleted afterwards), the server inside it
on 127.0.0.1 and the probe spreading its sources over 127.0.0.0/8 (100,000 connections to
one ADDR:PORT need more than one source address's ports). The hard RLIMIT_NOFILE here is
20,000, so the servers run several processes (nginx workers, Node cluster workers, the
probe's --serve workers).

    python bench/bench_services.py [-n 100000] [--hold 5]

Prints a table; asserts nothing. Needs root, nginx, node (tests/realservers.py installs
what is missing, `ws` included).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import realservers  # noqa: E402  (starts real servers; installs them when missing)

NOFILE = 20000            # per server process: the hard limit of this machine
PER_PROCESS = 17000       # connections a server process is planned to hold
WS_PER_PROCESS = 11000    # ... a Node worker: they accept on one shared listener, unevenly


def netns_add() -> str:
    name = f"tuner-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    return name


def netns_del(name: str) -> None:
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
    for pid in pids:
        subprocess.run(["kill", "-9", pid])
    subprocess.run(["ip", "netns", "del", name])


def probe(netns: str, url: str, n: int, hold: float, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tuner", "probe", "--netns", netns, "--connect", url,
                           "-n", str(n), "--source-net", "127.0.0.0/8", "--hold", str(hold),
                           "--timeout", "120", "--json", "-q", *extra],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    if not proc.stdout:
        raise RuntimeError(f"probe of {url} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)


def run_tuner(netns: str, n: int, hold: float) -> dict:
    port = realservers.free_port(("127.0.0.1",), netns)
    workers = -(-n // PER_PROCESS)
    srv = subprocess.Popen([sys.executable, "-m", "tuner", "probe", "--netns", netns, "--serve",
                            f"127.0.0.1:{port}", "--expect", str(n), "--hold", str(hold + 60),
                            "--workers", str(workers), "--timeout", "600", "--json", "-q"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        wait_listening(netns, port)
        return probe(netns, f"tuner://127.0.0.1:{port}", n, hold)
    finally:
        srv.terminate()
        srv.communicate(timeout=120)


def wait_listening(netns: str, port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Hltn", f"sport = :{port}"],
                             capture_output=True, text=True).stdout
        if out.strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} in {netns}")


def run_nginx(netns: str, n: int, hold: float, *extra: str) -> dict:
    """nginx with reuseport listeners (each worker its own accept queue, the kernel spreads
    connections evenly) and worker_connections well above each one's share."""
    workers = -(-n // PER_PROCESS)
    binary = realservers.need("nginx")
    d, hosts, port = realservers._prepare("nginx", ("127.0.0.1",), None, netns)
    conf = realservers._write(os.path.join(d, "nginx.conf"), f"""daemon off;
user www-data;
worker_processes {workers};
worker_rlimit_nofile {NOFILE};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {NOFILE - 100}; }}
http {{
    access_log off;
{chr(10).join(f"    {k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=65535;
        keepalive_timeout 3600s;
        keepalive_requests 1000000;
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
}}
""")
    srv = realservers.start("nginx", [binary, "-p", d + "/", "-e", f"{d}/error.log", "-c", conf], port=port,
                            hosts=hosts, config=conf, dir=d, netns=netns, nofile=NOFILE,
                            ready=lambda s: len(s.children()) >= workers)
    try:
        return probe(netns, f"http://127.0.0.1:{port}/", n, hold, *extra)
    finally:
        srv.stop()


PING_EVERY = 10.0


def run_ramp(netns: str, n: int, hold: float) -> dict:
    """nginx again, in 4 steps, every held connection exercised once per PING_EVERY."""
    return run_nginx(netns, n, hold, "--step", str(-(-n // 4)), "--settle", "2",
                     "--ping-every", str(PING_EVERY))


def ramp_lines(r: dict, hold: float) -> list:
    lat, pings = r["latency_ms"] or {}, r["pings"]
    expected = r["verified"] * hold / PING_EVERY
    lines = [f"ramp: {r['verified']:,}/{r['requested']:,} verified twice; user "
             + (f"{r['user_bytes_per_conn'] / 1024:.2f} KB/conn" if r["user_bytes_per_conn"] else "-")
             + f" with --ping-every {PING_EVERY:g} (goal <= 1.5); hold: {r['latency_exchanges']:,} exchanges "
             f"(n x hold / {PING_EVERY:g} = {expected:,.0f}), p50/p99/max "
             + "/".join(f"{lat.get(k, 0):.1f}" for k in ("p50", "p99", "max")) + " ms; "
             f"pings sent {pings['sent']:,}, late {pings['late']:,}, refused {pings['refused']:,}"]
    for s in r["steps"]:
        lat = s["latency_ms"] or {}
        lines.append(f"  step {s['step']}: {s['connections']:,} held, nginx "
                     f"{(s['service_memory_bytes'] or 0) / 2**20:.1f} MiB + "
                     f"{(s['service_kernel_bytes'] or 0) / 2**20:.1f} MiB kernel, {s['service_cpu_seconds']} s CPU, "
                     f"p99 {lat.get('p99', 0):.1f} ms; sampling the service took {s['sample_ms']} ms (goal < 50)")
    return lines


def run_ws(netns: str, n: int, hold: float) -> dict:
    realservers.need_ws()
    node = realservers.need("node")
    workers = -(-n // WS_PER_PROCESS)
    d, hosts, port = realservers._prepare("ws", ("127.0.0.1",), None, netns)
    script = os.path.join(HERE, "ws_cluster.js")
    srv = realservers.start("node-ws", [node, script, "--port", str(port), "--host", "127.0.0.1",
                                        "--workers", str(workers)], port=port, hosts=hosts, config=script,
                            dir=d, netns=netns, nofile=NOFILE)
    try:
        return probe(netns, f"ws://127.0.0.1:{port}/", n, hold)
    finally:
        srv.stop()


def row(name: str, r: dict, ref_rate) -> list:
    rate = r["rate_per_s"]
    return [name, f"{r['verified']:,}/{r['requested']:,}", f"{rate:,}" if rate else "-",
            f"{rate / ref_rate:.2f}x" if rate and ref_rate else "-",
            f"{r['seconds_verified']:.2f}" if r["seconds_verified"] else "-",
            f"{r['seconds_check']:.2f}" if r["seconds_check"] is not None else "-",
            f"{r['user_bytes_per_conn'] / 1024:.2f}" if r["user_bytes_per_conn"] else "-",
            r["stalled"]["sentence"][:60]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--hold", type=float, default=5.0)
    ap.add_argument("--ramp-hold", type=float, default=30.0, help="the ramp run's hold (seconds)")
    args = ap.parse_args()
    results = {}
    for name, run, hold in (("tuner", run_tuner, args.hold), ("http", run_nginx, args.hold),
                            ("ws", run_ws, args.hold), ("ramp", run_ramp, args.ramp_hold)):
        ns = netns_add()
        try:
            results[name] = run(ns, args.n, hold)
        finally:
            netns_del(ns)
        print(f"{name}: {results[name]['stalled']['sentence']}", file=sys.stderr, flush=True)
    ramp = results.pop("ramp")
    ref = results["tuner"]["rate_per_s"]
    head = ["protocol", "verified twice", "open rate /s", "vs tuner", "open s", "2nd check s",
            "user KB/conn", "first sentence"]
    rows = [row(name, r, ref) for name, r in results.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print(f"{time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} vCPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
          f"Linux {platform.release()}, n={args.n:,}, hold {args.hold:g} s")
    for line in [head, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip())
    goals = [f"{name} open rate {r['rate_per_s'] / ref:.2f}x tuner's (goal >= 0.7)"
             for name, r in results.items() if name != "tuner" and r["rate_per_s"] and ref]
    goals += [f"{name} {r['user_bytes_per_conn'] / 1024:.2f} KB/conn (goal <= 1.5)"
              for name, r in results.items() if r["user_bytes_per_conn"]]
    print("; ".join(goals))
    print("\n".join(ramp_lines(ramp, args.ramp_hold)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
