#!/usr/bin/env python3
"""Benchmark for `tuner probe --connect URL` (issues 18 and 27): 100,000 connections held,
each verified twice, against real servers in one run, with tuner's own exchange as the
reference:

    tuner     tuner probe --serve   <- tuner probe --connect tuner://...   (the reference)
    http      nginx (reuseport workers, enough worker_connections) <- --connect http://
    ws        the `ws` package in Node cluster workers (bench/ws_cluster.js) <- --connect ws://
    https1.3  the same nginx with `listen ... ssl`, TLS 1.3 <- --connect https:// --tls-version 1.3
    https1.2  ... TLS 1.2
    wss       the Node cluster over Node's https <- --connect wss://
    floor1.3, floor1.2  bare ssl.SSLObjects over MemoryBIOs held by one plain Python
              process against that nginx (the library's own per-connection floor)

For each: the open rate (connections answered per second, the first check), the time
the second check took at the end of the hold, the probe workers' user memory (USS) per
held connection, and CPU per opened connection (per handshake under TLS) of the probe
and of the server (its processes, over the opening), so the table says whose pace it
is. Goals: http and ws open rates >= 0.7x tuner's own in the same run; <= 1.5 KB of
user memory per held plain connection; a held TLS connection <= 1.2x the floor; the
probe's CPU per full handshake <= the server's.

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

    python bench/bench_services.py [-n 100000] [--hold 5] [--only tuner,http,...] [--floor-n 5000]

Prints a table; asserts nothing. Needs root, nginx, node (tests/realservers.py installs
what is missing, `ws` included).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
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


def probe(netns: str, url: str, n: int, hold: float, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tuner", "probe", "--netns", netns, "--connect", url,
                           "-n", str(n), "--source-net", "127.0.0.0/8", "--hold", str(hold),
                           "--timeout", "900", "--json", "-q", *args],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)
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


def start_nginx(netns: str, n: int, certs=None):
    """nginx with reuseport listeners (each worker its own accept queue, the kernel spreads
    connections evenly) and worker_connections well above each one's share; with certs,
    `listen ... ssl` (TLS 1.2 and 1.3, nginx's defaults otherwise)."""
    workers = -(-n // PER_PROCESS)
    binary = realservers.need("nginx")
    d, hosts, port = realservers._prepare("nginx", ("127.0.0.1",), None, netns)
    tls = "" if certs is None else (f"\n        ssl_certificate {certs.server.cert};\n        ssl_certificate_key "
                                     f"{certs.server.key};\n        ssl_protocols TLSv1.2 TLSv1.3;")
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
        listen 127.0.0.1:{port} reuseport backlog=65535{" ssl" if certs else ""};{tls}
        keepalive_timeout 3600s;
        keepalive_requests 1000000;
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
}}
""")
    return realservers.start("nginx", [binary, "-p", d + "/", "-e", f"{d}/error.log", "-c", conf], port=port,
                             hosts=hosts, config=conf, dir=d, netns=netns, nofile=NOFILE,
                             ready=lambda s: len(s.children()) >= workers)


def run_nginx(netns: str, n: int, hold: float, *extra: str) -> dict:
    srv = start_nginx(netns, n)
    try:
        return probe(netns, f"http://127.0.0.1:{srv.port}/", n, hold, *extra)
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


def run_https(version: str):
    def run(netns: str, n: int, hold: float, certs) -> dict:
        srv = start_nginx(netns, n, certs)
        try:
            return probe(netns, f"https://127.0.0.1:{srv.port}/", n, hold, "--ca", certs.ca,
                         "--tls-version", version)
        finally:
            srv.stop()
    return run


def run_floor(version: str):
    """The floor: one plain Python process holds n bare SSLObjects (handshake and one
    request each) against the same nginx; its USS grown per connection."""
    def run(netns: str, n: int, hold: float, certs) -> dict:
        srv = start_nginx(netns, n, certs)
        try:
            proc = subprocess.run(["ip", "netns", "exec", netns, sys.executable, os.path.join(HERE, "tls_floor.py"),
                                   f"127.0.0.1:{srv.port}", str(n), version, certs.ca],
                                  capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError(f"tls_floor.py failed: {proc.stderr.strip()[-500:]}")
            return json.loads(proc.stdout)
        finally:
            srv.stop()
    return run


def start_ws(netns: str, n: int, certs=None):
    realservers.need_ws()
    node = realservers.need("node")
    workers = -(-n // WS_PER_PROCESS)
    d, hosts, port = realservers._prepare("ws", ("127.0.0.1",), None, netns)
    script = os.path.join(HERE, "ws_cluster.js")
    tls = [] if certs is None else ["--cert", certs.server.cert, "--key", certs.server.key]
    return realservers.start("node-ws", [node, script, "--port", str(port), "--host", "127.0.0.1",
                                         "--workers", str(workers), *tls], port=port, hosts=hosts, config=script,
                             dir=d, netns=netns, nofile=NOFILE)


def run_ws(netns: str, n: int, hold: float) -> dict:
    srv = start_ws(netns, n)
    try:
        return probe(netns, f"ws://127.0.0.1:{srv.port}/", n, hold)
    finally:
        srv.stop()


def run_wss(netns: str, n: int, hold: float, certs) -> dict:
    srv = start_ws(netns, n, certs)
    try:
        return probe(netns, f"wss://127.0.0.1:{srv.port}/", n, hold, "--ca", certs.ca)
    finally:
        srv.stop()


def row(name: str, r: dict, ref_rate) -> list:
    if "floor_bytes_per_conn" in r:
        return [name, f"{r['held']:,} held", f"{r['rate_per_s']:,}", "-", "-", "-",
                f"{r['floor_bytes_per_conn'] / 1024:.2f}", "-", "-", "-", f"{r['version']} bare SSLObject floor"]
    rate, cpu, tls = r["rate_per_s"], r.get("cpu") or {}, r.get("tls") or {}
    ms = (tls.get("handshake_ms") or {}).get("p50")
    return [name, f"{r['verified']:,}/{r['requested']:,}", f"{rate:,}" if rate else "-",
            f"{rate / ref_rate:.2f}x" if rate and ref_rate else "-",
            f"{r['seconds_verified']:.2f}" if r["seconds_verified"] else "-",
            f"{r['seconds_check']:.2f}" if r["seconds_check"] is not None else "-",
            f"{r['user_bytes_per_conn'] / 1024:.2f}" if r["user_bytes_per_conn"] else "-",
            f"{ms:g}" if ms else "-",
            _ms(cpu.get("probe_ms_per_conn")), _ms(cpu.get("server_ms_per_conn")),
            r["stalled"]["sentence"][:60]]


def _ms(x) -> str:
    return "-" if x is None else f"{x:.3f}"


RUNS = {"tuner": run_tuner, "http": run_nginx, "ws": run_ws, "ramp": run_ramp, "https1.3": run_https("1.3"),
        "https1.2": run_https("1.2"), "wss": run_wss, "floor1.3": run_floor("1.3"), "floor1.2": run_floor("1.2")}
TLS_RUNS = ("https1.3", "https1.2", "wss", "floor1.3", "floor1.2")


def goals(results: dict) -> list:
    ref = results.get("tuner", {}).get("rate_per_s")
    out = [f"{name} open rate {r['rate_per_s'] / ref:.2f}x tuner's (goal >= 0.7)"
           for name, r in results.items() if name in ("http", "ws") and r["rate_per_s"] and ref]
    out += [f"{name} {r['user_bytes_per_conn'] / 1024:.2f} KB/conn (goal <= 1.5)"
            for name, r in results.items() if name in ("tuner", "http", "ws") and r["user_bytes_per_conn"]]
    for v in ("1.3", "1.2"):
        r, floor = results.get(f"https{v}"), results.get(f"floor{v}")
        if r and floor and r["user_bytes_per_conn"]:
            out.append(f"https TLS {v} {r['user_bytes_per_conn'] / floor['floor_bytes_per_conn']:.2f}x the SSLObject "
                       f"floor (goal <= 1.2)")
        cpu = (r or {}).get("cpu") or {}
        if cpu.get("server_ms_per_conn"):
            out.append(f"https TLS {v} probe CPU {cpu['probe_ms_per_conn'] / cpu['server_ms_per_conn']:.2f}x "
                       f"the server's per handshake (goal <= 1)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--hold", type=float, default=5.0)
    ap.add_argument("--only", default=",".join(RUNS), help="runs, comma-separated: " + ", ".join(RUNS))
    ap.add_argument("--floor-n", type=int, default=5000, help="connections the SSLObject floor holds")
    ap.add_argument("--ramp-hold", type=float, default=30.0, help="the ramp run's hold (seconds)")
    ap.add_argument("--rsa", type=int, default=2048, help="the server certificate's RSA key bits (0: EC P-256)")
    args = ap.parse_args()
    results = {}
    certs = None
    for name in args.only.split(","):
        if name in TLS_RUNS and certs is None:
            d = tempfile.mkdtemp(prefix="tuner-bench-certs-")
            os.chmod(d, 0o755)
            certs = realservers.make_certs(d, rsa_bits=args.rsa or None)
        ns = netns_add()
        try:
            if name.startswith("floor"):
                results[name] = RUNS[name](ns, args.floor_n, args.hold, certs)
            elif name in TLS_RUNS:
                results[name] = RUNS[name](ns, args.n, args.hold, certs)
            else:
                results[name] = RUNS[name](ns, args.n, args.ramp_hold if name == "ramp" else args.hold)
        finally:
            netns_del(ns)
        said = results[name].get("stalled", {}).get("sentence") or results[name].get("version")
        print(f"{name}: {said}", file=sys.stderr, flush=True)
    ramp = results.pop("ramp", None)
    ref = results.get("tuner", {}).get("rate_per_s")
    head = ["protocol", "verified twice", "open rate /s", "vs tuner", "open s", "2nd check s",
            "user KB/conn", "handshake p50 ms", "probe CPU ms/conn", "server CPU ms/conn", "first sentence"]
    rows = [row(name, r, ref) for name, r in results.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print(f"{time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} vCPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
          f"Linux {platform.release()}, n={args.n:,}, hold {args.hold:g} s, "
          f"server certificate {f'RSA {args.rsa}' if args.rsa else 'EC P-256'}, floor n={args.floor_n:,}")
    for line in [head, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip())
    print("; ".join(goals(results)))
    if ramp:
        print("\n".join(ramp_lines(ramp, args.ramp_hold)))
    for name, r in results.items():
        if (r.get("cpu") or {}).get("sentence"):
            print(f"{name}: {r['cpu']['sentence']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
