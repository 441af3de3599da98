#!/usr/bin/env python3
"""Benchmark for AnyIP sources and per-socket port ranges (issue 20).

Two throwaway namespaces joined by a veth pair (ULA IPv6 and private IPv4).  In one run:

1. N connections (default 1,000,000) to one server ADDR:PORT from the client namespace
   over an IPv6 AnyIP prefix (`tuner apply --anyip-net fd00:77:1::/64`, the server
   routing it back), next to the same N over 34 IPv4 /32 aliases, each with the
   probes' per-socket port range (IP_LOCAL_PORT_RANGE, Linux 6.3+) and without it
   (TUNER_SHARED_PORT_RANGE=1, the kernel's even-then-odd search): time to every
   connection verified and the rate.
2. The port search alone: one source address, a 16,000-port range, 90% of it filled
   with nonblocking connect()s to one listener, set up with the probes' own
   probes.sockets.client_options; the rate of each tenth, with and without the range.

    python bench/bench_anyip.py [-n 1000000] [--skip-million]

Needs root; refuses a size that MemAvailable cannot hold.  Prints a Markdown table
(date, kernel, CPUs, memory) for docs/anyip.md; asserts nothing.
"""
import argparse
import datetime
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

from probes import sockets  # noqa: E402
from tuner import knobs
from tuner.host import procfs  # noqa: E402

# The knob table's name of the ephemeral port range (sysctl names live there only).
PORT_RANGE = next(k.name for k in knobs.KNOBS if k.unit == "ports")

PORT = 7000
V6_PREFIX = "fd00:77:1::/64"
ALIASES = [f"10.77.0.{i}" for i in range(130, 164)]      # 34 /32s inside 10.77.0.128/26
ALIAS_NET = "10.77.0.128/26"
BYTES_PER_CONN = 20_000   # both ends' kernel memory and the workers', generously


def sh(*args, **kw):
    return subprocess.run(list(map(str, args)), check=True, capture_output=True, text=True, **kw)


def make_pair():
    tag = uuid.uuid4().hex[:6]
    server, client = f"anyip-s-{tag}", f"anyip-c-{tag}"
    for ns in (server, client):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", server, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", client)
    for ns, last in ((server, 1), (client, 2)):
        sh("ip", "-n", ns, "addr", "add", f"fd00:77::{last}/64", "dev", "eth0", "nodad")
        sh("ip", "-n", ns, "addr", "add", f"10.77.0.{last}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
    return server, client


def tuner(ns, *args, env=None, timeout=900):
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "tuner", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})))


def prepare(server, client, n, journal):
    """The namespaces' own limits for n (apply, journaled: the namespaces go anyway),
    the AnyIP route and the aliases, and the server's routes back."""
    for ns, role, extra in ((server, "server", ()), (client, "client", ("--anyip-net", V6_PREFIX))):
        p = tuner(ns, "apply", "-n", n, "--role", role, "--netns", ns, "--yes", "--journal", journal + ns, *extra)
        out, err = p.communicate()
        if p.returncode not in (0, 3):
            raise SystemExit(f"apply in {ns} failed: {err}")
    sh("ip", "netns", "exec", client, "sysctl", "-qw", f"{PORT_RANGE}=1024 65535")
    for a in ALIASES:
        sh("ip", "-n", client, "addr", "add", f"{a}/32", "dev", "eth0")
    sh("ip", "-n", server, "-6", "route", "add", V6_PREFIX, "via", "fd00:77::2")


def run_pair(server, client, endpoint, n, source_net, shared):
    env = {"TUNER_SHARED_PORT_RANGE": "1"} if shared else {}
    serve = tuner(server, "probe", "--serve", endpoint, "--expect", n, "--hold", 60, "-q", "--json", env=env)
    time.sleep(3 + n / 200_000)      # every worker's listener open
    connect = tuner(client, "probe", "--connect", endpoint, "-n", n, "--source-net", source_net,
                    "--hold", 2, "--timeout", 600, "-q", "--json", env=env)
    out, err = connect.communicate()
    try:
        r = json.loads(out)
    except ValueError:
        r = {"verified": 0, "seconds_verified": None, "rate_per_s": None, "ok": False, "errors": [],
             "stopped_by": err.strip()[-200:]}
    if not r["ok"]:
        serve.terminate()         # it would wait for the connections that never come
    serve.communicate(timeout=300)
    return r


def describe(r):
    text = (f"{r['verified']:,} verified in {r['seconds_verified']} s ({r['rate_per_s'] or '-'}/s), "
            f"{r.get('source_addresses', '-')} sources")
    if not r["ok"]:
        first = r["errors"][0] if r.get("errors") else {}
        text += (f"; stopped by {r['stopped_by']}" + (f" ({first.get('op')} {first.get('errno')} after "
                 f"{first.get('first_message', '')[-60:]})" if first else ""))
    return text


def port_search(server, client, shared):
    """Rates of each tenth while one source fills 90% of a 16,000-port range."""
    sh("ip", "netns", "exec", client, "sysctl", "-qw", f"{PORT_RANGE}=40000 55999")
    listener = subprocess.Popen(["ip", "netns", "exec", server, sys.executable, "-c", LISTENER],
                                stdout=subprocess.PIPE, text=True)
    listener.stdout.readline()
    env = dict(os.environ, PYTHONPATH=ROOT, **({"TUNER_SHARED_PORT_RANGE": "1"} if shared else {}))
    out = sh("ip", "netns", "exec", client, sys.executable, "-c", FILLER, env=env).stdout
    listener.kill()
    listener.wait()
    sh("ip", "netns", "exec", client, "sysctl", "-qw", f"{PORT_RANGE}=1024 65535")
    return json.loads(out)


LISTENER = """
import resource, socket
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.77.0.1", 7001)); s.listen(65535); held = []
print("ready", flush=True)
while True:
    held.append(s.accept()[0])
"""

FILLER = """
import json, resource, socket, struct, time
from probes import kernel, sockets
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
low, high = kernel.port_range()
options = sockets.client_options((low, high), bind=True, freebind=False)
n, tenth = int((high - low + 1) * 0.9), int((high - low + 1) * 0.09)
held, marks, t0 = [], [], time.monotonic()
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    for level, name, value, size in options:
        sockets.libc.setsockopt(s.fileno(), level, name, value, size)
    s.bind(("10.77.0.2", 0))
    try:
        s.connect(("10.77.0.1", 7001))
    except BlockingIOError:
        pass
    held.append(s)
    if (i + 1) % tenth == 0:
        marks.append(time.monotonic())
for s in held:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
rates, last = [], t0
for m in marks:
    rates.append(round(tenth / (m - last))); last = m
print(json.dumps({"filled": n, "own_range": sockets.own_port_range(), "rates": rates,
                  "seconds": round(marks[-1] - t0, 2)}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=1_000_000)
    ap.add_argument("--skip-million", action="store_true", help="only the port-search part")
    ap.add_argument("--only", help="only the N-connection runs whose label holds this (AnyIP, aliases)")
    ap.add_argument("--shared-only", action="store_true", help="only the runs without the per-socket range")
    args = ap.parse_args()
    avail = procfs.meminfo_kb().get("MemAvailable", 0) * 1024
    n = args.n
    if n * BYTES_PER_CONN > avail:
        raise SystemExit(f"{n:,} connections need about {n * BYTES_PER_CONN / 2**30:.1f} GiB, "
                         f"MemAvailable is {avail / 2**30:.1f} GiB: pass a smaller -n")
    server, client = make_pair()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            prepare(server, client, n, os.path.join(tmp, "journal-"))
            for shared in (False, True):
                search = port_search(server, client, shared)
                rows.append(("16,000-port range, 1 source, fill 90%", shared,
                             f"{search['rates'][0]:,}/s first 10%, {search['rates'][-1]:,}/s last "
                             f"10% (90% in {search['seconds']} s)"))
            if not args.skip_million:
                for shared in ((True,) if args.shared_only else (False, True)):
                    for label, endpoint, net in (("IPv6 AnyIP " + V6_PREFIX, f"[fd00:77::1]:{PORT}", V6_PREFIX),
                                                 (f"34 IPv4 aliases in {ALIAS_NET}", f"10.77.0.1:{PORT}", ALIAS_NET)):
                        if args.only and args.only not in label:
                            continue
                        r = run_pair(server, client, endpoint, n, net, shared)
                        rows.append((f"{n:,} over {label}", shared, describe(r)))
                        print(rows[-1], flush=True)
    finally:
        for ns in (server, client):
            subprocess.run(["ip", "netns", "delete", ns], check=False)
    mem = procfs.meminfo_kb().get("MemTotal", 0) / 2**20
    print(f"{datetime.date.today()}, Linux {platform.release()}, {os.cpu_count()} CPUs, {mem:.0f} GiB; "
          f"IP_LOCAL_PORT_RANGE taken: {sockets.own_port_range()}\n")
    print("| case | per-socket port range | result |\n|---|---|---|")
    for case, shared, result in rows:
        print(f"| {case} | {'no (shared range)' if shared else 'yes'} | {result} |")


if __name__ == "__main__":
    main()
