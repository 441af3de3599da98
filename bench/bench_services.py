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
probe's --serve workers). The servers are set up as an SRE sets up one for this load:
the namespace's somaxconn and tcp_max_syn_backlog at 65,535 (so the listen backlogs are
what the servers ask for), nginx's handshake timeout (client_header_timeout before
1.25.5) and Node's handshakeTimeout raised from 60 s and 120 s, since 100,000 TLS
handshakes queue for minutes on two vCPUs; `--rate RUN=N` paces a run the server cannot
take all at once (Node's workers share one listener: one accept queue of 65,535).

After the table, a line per run says what set its pace: --rate, or the server (its
accept queue held one or more on average while opening) or the probe (it did not), the CPUs
busy while opening and the probe's and the server's share of it, the server's peak
memory (PSS); and the namespace's TCP counters that moved (ListenOverflows,
TCPReqQFullDrop, ...) and nginx's error log by message.

    python bench/bench_services.py [-n 100000] [--hold 5] [--only tuner,http,...] [--floor-n 5000] [--rate wss=250]

Prints a table; asserts nothing. Needs root, nginx, node (tests/realservers.py installs
what is missing, `ws` included).
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import realservers  # noqa: E402  (starts real servers; installs them when missing)
from tuner import knobs  # noqa: E402  (the names of the namespace's listen limits)

NOFILE = 20000            # per server process: the hard limit of this machine
PER_PROCESS = 17000       # connections a server process is planned to hold
WS_PER_PROCESS = 11000    # ... a Node worker: they accept on one shared listener, unevenly


# The namespace's own listen limits, set as an SRE sets a server host's (a fresh
# namespace starts at somaxconn 4096 and tcp_max_syn_backlog 2048, whatever the host
# has): with 4096, nginx's `backlog=65535` was cut to 4096 per worker, and 20,000 TLS
# connections opened at once overflowed the accept queues 37,082 times (ListenOverflows,
# 2026-12-07); at 100,000 the clients whose SYNs were dropped past tcp_syn_retries' 127 s
# got no SYN-ACK (1,909 on 12-06) and those whose handshake's last ACK was dropped were
# reset once the server gave up its SYN-ACKs (4,017).  Both are the namespace's, and go
# with it.
# The knob table's burst knobs (somaxconn, tcp_max_syn_backlog), both per namespace.
NETNS_SYSCTLS = {k.name: 65535 for k in knobs.KNOBS if k.caps == knobs.CAPS_BURSTS and k.scope == "netns"}


def netns_add() -> str:
    name = f"tuner-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "netns", "exec", name, "sysctl", "-q", "-w",
                    *(f"{k}={v}" for k, v in NETNS_SYSCTLS.items())], check=True)
    return name


class Pace:
    """What set a run's pace, sampled each second while the probe runs: the server's
    accept queue (connections the kernel completed and the server has not yet accepted,
    summed over its listeners) and how busy the machine's CPUs were.  A queue that
    stays near 0 means the server kept up with what the probe opened; one that grows
    means the server set the pace."""

    def __init__(self, netns: str, port: int, server=None):
        import threading   # only the pace sampler runs beside the probe
        self.netns, self.port, self.queue_max, self.samples = netns, port, 0, []
        self.server, self.memory_max = server, 0     # the server's processes' PSS, its peak
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> "Pace":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    def run(self) -> None:
        start = time.monotonic()
        while not self.done.wait(1.0):
            out = subprocess.run(["ip", "netns", "exec", self.netns, "ss", "-Hltn", f"sport = :{self.port}"],
                                 capture_output=True, text=True).stdout
            queued = sum(int(line.split()[1]) for line in out.splitlines() if len(line.split()) > 2)
            self.queue_max = max(self.queue_max, queued)
            self.samples.append((time.monotonic() - start, *cpu_times(), queued))
            if self.server is not None:
                self.memory_max = max(self.memory_max, pss(realservers.process_group(self.server.pid)))

    def busy(self, seconds: float) -> Optional[float]:
        """The machine's CPUs busy (not idle, not iowait) over the first seconds of the
        run (the opening), 0..1."""
        within = self.opening(seconds)
        if len(within) < 2:
            return None
        (_, busy0, total0, _), (_, busy1, total1, _) = within[0], within[-1]
        return (busy1 - busy0) / max(1, total1 - total0)

    def opening(self, seconds: float) -> list:
        return [x for x in self.samples if x[0] <= seconds + 1]

    def queue_mean(self, seconds: float) -> Optional[float]:
        """Connections waiting in the server's accept queue, on average while opening."""
        within = self.opening(seconds)
        return sum(x[3] for x in within) / len(within) if within else None


def pss(pids) -> int:
    """The processes' proportional set size together, in bytes (shared pages counted once)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += sum(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except OSError:
            pass
    return total


def cpu_times() -> tuple:
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]
    return sum(ticks) - idle, sum(ticks)


def netns_del(name: str) -> None:
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
    for pid in pids:
        subprocess.run(["kill", "-9", pid])
    subprocess.run(["ip", "netns", "del", name])


# The namespace's TCP counters that say whether the kernel dropped what the server had no
# room for: the accept queue full at the handshake's end (ListenOverflows), the SYN queue
# (TCPReqQFullDrop), SYN-ACKs and data retransmitted, connections the kernel gave up on.
# (Not TCPAbortOnData: the probe resets every connection at its end, and they count there.)
KERNEL_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop", "TCPReqQFullDoCookies", "TCPTimeouts",
                   "TCPSynRetrans", "TCPAbortOnTimeout", "TCPAbortOnClose")


def kernel_counters(netns: str) -> dict:
    """TcpExt counters of the namespace (fresh per run: its whole count is the run's)."""
    text = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/netstat"],
                          capture_output=True, text=True).stdout.splitlines()
    values = {}
    for names, numbers in zip(text[::2], text[1::2]):
        values.update(zip(names.split()[1:], (int(x) for x in numbers.split()[1:])))
    return {k: values.get(k, 0) for k in KERNEL_COUNTERS if values.get(k)}


def error_log(srv) -> dict:
    """nginx's error log by message (numbers, addresses and ids taken out), with counts."""
    import re   # only for the log's lines, once per run
    counts = {}
    try:
        with open(os.path.join(srv.dir, "error.log"), errors="replace") as f:
            for line in f:
                # Start-up lines, and the probe's resets of every connection at its end.
                if "[notice]" in line or "closed keepalive connection" in line:
                    continue
                msg = re.sub(r"^\S+ \S+ \[(\w+)\] \d+#\d+: (\*\d+ )?", r"[\1] ", line.strip())
                msg = re.sub(r"(client|server): [^,]*,?|\d+", "N", msg.split(" while ")[0])[:90]
                counts[msg] = counts.get(msg, 0) + 1
    except OSError:
        pass
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:6])


RATES = {}    # run name -> --rate (connections per second), from the command line


def probe(netns: str, url: str, n: int, hold: float, *args: str, run: str = "", server=None) -> dict:
    """The probe's JSON result, with `pace` (Pace's figures over the opening, the server's
    peak memory when it is given) and `kernel` (the namespace's counters)."""
    from urllib.parse import urlsplit   # only here: the port of the URL the probe is given
    rate = RATES.get(run)
    with Pace(netns, urlsplit(url).port, server) as pace:
        proc = subprocess.run([sys.executable, "-m", "tuner", "probe", "--netns", netns, "--connect", url,
                               "-n", str(n), "--source-net", "127.0.0.0/8", "--hold", str(hold),
                               "--timeout", "900", "--json", "-q", *args,
                               *(["--rate", f"{rate:g}"] if rate else [])],
                              capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if not proc.stdout:
        raise RuntimeError(f"probe of {url} failed: {proc.stderr.strip()[-500:]}")
    r = json.loads(proc.stdout)
    opening = r["seconds_verified"] or 0
    r["pace"] = {"rate": rate, "queue_max": pace.queue_max, "queue_mean": pace.queue_mean(opening),
                 "busy": pace.busy(opening),
                 "server_bytes": pace.memory_max}
    r["kernel"] = kernel_counters(netns)
    return r


def run_tuner(netns: str, n: int, hold: float) -> dict:
    port = realservers.free_port(("127.0.0.1",), netns)
    workers = -(-n // PER_PROCESS)
    srv = subprocess.Popen([sys.executable, "-m", "tuner", "probe", "--netns", netns, "--serve",
                            f"127.0.0.1:{port}", "--expect", str(n), "--hold", str(hold + 60),
                            "--workers", str(workers), "--timeout", "600", "--json", "-q"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        wait_listening(netns, port)
        return probe(netns, f"tuner://127.0.0.1:{port}", n, hold, run="tuner")
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
error_log {d}/error.log info;
events {{ worker_connections {NOFILE - 100}; }}
http {{
    access_log off;
{chr(10).join(f"    {k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=65535{" ssl" if certs else ""};{tls}
        keepalive_timeout 3600s;
        # nginx before 1.25.5 times the TLS handshake of an accepted connection with
        # client_header_timeout (later: ssl_handshake_timeout), 60 s by default: two
        # saturated vCPUs must not have it close handshakes that are merely slow.
        client_header_timeout 300s;
        keepalive_requests 1000000;
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
}}
""")
    return realservers.start("nginx", [binary, "-p", d + "/", "-e", f"{d}/error.log", "-c", conf], port=port,
                             hosts=hosts, config=conf, dir=d, netns=netns, nofile=NOFILE,
                             ready=lambda s: len(s.children()) >= workers)


def run_nginx(netns: str, n: int, hold: float, *extra: str, run: str = "http") -> dict:
    srv = start_nginx(netns, n)
    try:
        return probe(netns, f"http://127.0.0.1:{srv.port}/", n, hold, *extra, run=run, server=srv)
    finally:
        srv.stop()


PING_EVERY = 10.0


def run_ramp(netns: str, n: int, hold: float) -> dict:
    """nginx again, in 4 steps, every held connection exercised once per PING_EVERY."""
    return run_nginx(netns, n, hold, "--step", str(-(-n // 4)), "--settle", "2",
                     "--ping-every", str(PING_EVERY), run="ramp")


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
                     f"p99 {lat.get('p99', 0):.1f} ms; sampling the service took {s['sample_ms']} ms (goal < 50), "
                     f"{s.get('sample_cpu_ms')} ms of CPU, "
                     + (f"{s['service_sampled']:,} held sockets read" if s.get("service_sampled") else "every socket read"))
    return lines


def run_https(version: str):
    def run(netns: str, n: int, hold: float, certs) -> dict:
        srv = start_nginx(netns, n, certs)
        try:
            r = probe(netns, f"https://127.0.0.1:{srv.port}/", n, hold, "--ca", certs.ca,
                      "--tls-version", version, run=f"https{version}", server=srv)
            r["log"] = error_log(srv)
            return r
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
                             dir=d, netns=netns, nofile=NOFILE, timeout=120,
                             ready=lambda s: len(listener_pids(netns, port) - {s.pid}) >= workers)


def listener_pids(netns: str, port: int) -> set:
    """The processes that hold the listener on port: a Node worker holds the shared one
    only once it has started and asked for it. Ready means all of them: the port listens
    as soon as the first does, and the probe's measure of the server's CPU takes the
    processes that hold it when it starts (on 12-07 it found 2 of Node's 11 and read
    0.23 ms per handshake)."""
    import re   # only to read ss's users:(("node",pid=N,fd=M),...)
    out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Hltnp", f"sport = :{port}"],
                         capture_output=True, text=True).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def run_ws(netns: str, n: int, hold: float) -> dict:
    srv = start_ws(netns, n)
    try:
        return probe(netns, f"ws://127.0.0.1:{srv.port}/", n, hold, run="ws", server=srv)
    finally:
        srv.stop()


def run_wss(netns: str, n: int, hold: float, certs) -> dict:
    srv = start_ws(netns, n, certs)
    try:
        return probe(netns, f"wss://127.0.0.1:{srv.port}/", n, hold, "--ca", certs.ca, run="wss", server=srv)
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


def pace_line(name: str, r: dict) -> str:
    """Who set the run's open rate: --rate (the server kept up when it was reached), or
    the server (connections waited in its accept queue: on average at least one while
    opening) or the probe (the server accepted each at once); the CPU the two spent per
    opened connection against what the machine had; the server's peak memory."""
    pace, cpu, rate = r["pace"], r.get("cpu") or {}, r["rate_per_s"]
    mean = pace.get("queue_mean")
    queue = f"its accept queue peaked at {pace['queue_max']:,}" + (f", {mean:,.1f} on average" if mean is not None else "")
    if pace["rate"]:
        who = (f"paced by --rate {pace['rate']:g}/s; the server "
               + ("kept up" if rate and rate >= 0.95 * pace["rate"] else "fell behind") + f" ({queue})")
    elif mean is not None and mean >= 1:
        who = f"the server set the pace: {queue}"
    else:
        who = f"the probe set the pace (the server accepted at once): {queue}"
    ncpu = os.cpu_count() or 1
    share = [f"{side} {cpu[key] * rate / 1000 / ncpu:.0%}" for side, key in
             (("the probe", "probe_ms_per_conn"), ("the server", "server_ms_per_conn")) if cpu.get(key) and rate]
    others = (pace["busy"] or 0) - sum(cpu.get(k) or 0 for k in ("probe_ms_per_conn", "server_ms_per_conn")) * (rate or 0) / 1000 / ncpu
    busy = f"the {ncpu} vCPUs {pace['busy']:.0%} busy while opening" if pace["busy"] is not None else \
        "opened too fast to sample the CPUs"
    rest = (f", the rest {max(0.0, others):.0%}: the kernel's softirqs and other processes on this host"
            if pace["busy"] is not None else "")
    return (f"{name}: {who}; {busy}" + (f" ({', '.join(share)} at {rate:,}/s{rest})" if share else "")
            + (f"; the server's processes peaked at {pace['server_bytes'] / 2**20:,.0f} MiB PSS "
               f"({pace['server_bytes'] / max(1, r['verified']) / 1024:.1f} KB per held connection)"
               if pace["server_bytes"] else ""))


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
    ap.add_argument("--rate", action="append", default=[], metavar="RUN=N",
                    help="open that run's connections at N per second (the probe's --rate), e.g. wss=250; "
                         "repeatable (default: as fast as the server takes them)")
    ap.add_argument("--results", metavar="FILE",
                    help="keep every run's result in FILE (JSON) and print the table of all it holds: runs made "
                         "in separate invocations (each under its own lock) in one table")
    args = ap.parse_args()
    for spec in args.rate:
        run, _, value = spec.partition("=")
        if run not in RUNS or not value.replace(".", "", 1).isdigit() or float(value) <= 0:
            ap.error(f"--rate {spec!r}: RUN=N with RUN one of {', '.join(RUNS)} and N > 0")
        RATES[run] = float(value)
    results = {}
    if args.results and os.path.exists(args.results):
        with open(args.results) as f:
            results = json.load(f)
    names = [name for name in args.only.split(",") if name]   # none: print the table of --results
    if set(names) - set(RUNS):
        ap.error(f"--only: runs among {', '.join(RUNS)}")
    d = tempfile.mkdtemp(prefix="tuner-bench-certs-")
    try:
        run_all(args, names, results, d)
    finally:   # the run's certificates go with it (they were left behind, one directory per run)
        shutil.rmtree(d, ignore_errors=True)
    print_table(args, results)
    return 0


def run_all(args, names: list, results: dict, d: str) -> None:
    """Each run in a fresh namespace, its result kept (in --results as soon as it is had)."""
    certs = None
    for name in names:
        if name in TLS_RUNS and certs is None:
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
        if args.results:
            with open(args.results + ".new", "w") as f:
                json.dump(results, f)
            os.replace(args.results + ".new", args.results)


def print_table(args, results: dict) -> None:
    # In RUNS' order, however the runs were made (--results gathers them across invocations).
    results = {name: results[name] for name in RUNS if name in results}
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
    for name, r in results.items():
        if r.get("pace"):
            print(pace_line(name, r))
        if "kernel" in r:
            print(f"{name}: the namespace's kernel counters {r['kernel'] or 'none moved (' + ', '.join(KERNEL_COUNTERS) + ')'}"
                  + (f"; nginx error log {r['log']}" if r.get("log") else ""))
        said = (r.get("stalled") or {}).get("sentence") or ""
        if len(said) > 60:
            print(f"{name}: {said}")


if __name__ == "__main__":
    sys.exit(main())
