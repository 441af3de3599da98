#!/usr/bin/env python3
"""Benchmark for the connection probe (issue 4): the probe against the C reference.

For 100,000 connections (and 1,000,000 with --big, 2,000,000 with --huge) run, in
alternation, the C reference (shared/bench/conncap.c, compiled to a temporary
directory) and `tuner probe` (the CLI, pre-flight included), in both source modes:

    none     no bind: the kernel picks 127.0.0.1 and a port (conncap's default)
    spread   IP_BIND_ADDRESS_NO_PORT over 127.0.0.0/8 (the probe's default; conncap 'noport')

and print the time to every connection verified, the ratio (goal <= 1.3), the
workers' user-space memory per connection (goal <= 0.8 KB), and kernel memory per
connection next to `tuner report`'s estimate (goal within 10%).

Every run happens in a fresh network namespace, deleted afterwards: its sockets
(TIME_WAIT included: conncap closes gracefully) go with it, so one run's leftovers
never slow the next, and sockstat counts only that run.  The host-wide limits the knob
table says N loopback connections need (open files, for 1,000,000 and more) are raised
through the sysctl setting kind for the runs of N, and put back in a finally.

    python bench/bench_probe.py [--big] [--huge] [--repeat 3]

Prints figures; asserts nothing.  Needs root and gcc.
"""
import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # run as a script from a checkout: this tuner, not another

from tuner import assess, knobs
from tuner.host import procfs  # noqa: E402
from tuner.settings import kind  # noqa: E402
from tuner.settings.sysctl import text as sysctl_text  # noqa: E402

CONNCAP_C = os.environ.get("CONNCAP_C", os.path.join(ROOT, "..", "shared", "bench", "conncap.c"))
MODES = {"none": ("none", "none"), "spread": ("noport", "127.0.0.0/8")}  # mode: (conncap, --source-net)
KERNEL_BYTES_PER_CONN = 9000  # rough slab plus page-table cost, only to refuse runs that cannot fit


@contextlib.contextmanager
def host_limits(n):
    """For the block: the host-wide limits on connections that the knob table says n
    loopback connections need (the per-namespace ones are each run's own fresh
    namespace's), raised to its `needed` value through the sysctl setting kind, which
    reads back what it wrote; always put back, and read back, afterwards."""
    sysctl = kind("sysctl")
    raised = []
    try:
        for row in assess.build(n, "loopback").rows:
            knob = knobs.BY_NAME[row.name]
            if not (knob.is_sysctl and knob.scope == "host" and knob.caps == knobs.CAPS_CONNECTIONS
                    and row.needed):
                continue
            detail = {"name": knob.name}
            before, value = sysctl.read(None, detail), sysctl_text(row.needed)
            print(f"  raising {knob.name} {before} -> {value} for the run (restored afterwards)")
            raised.append((detail, before))
            sysctl.write(None, detail, value)
        yield
    finally:
        for detail, before in reversed(raised):
            sysctl.undo(None, detail, before)


@contextlib.contextmanager
def netns():
    name = f"tuner-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def settle(limit=20.0):
    """Wait until the previous run's sockets are freed (Slab stops shrinking): RCU frees
    them in the background and would otherwise steal CPU from the next run."""
    t0 = time.monotonic()
    last = meminfo("Slab")
    while time.monotonic() - t0 < limit:
        time.sleep(0.5)
        now = meminfo("Slab")
        if abs(now - last) < 4 * 2**20:
            return
        last = now


def meminfo(key):
    return procfs.meminfo_kb()[key] * 1024


def run_conncap(exe, n, mode):
    settle()
    with netns() as ns:
        t0 = time.perf_counter()
        out = subprocess.run(["ip", "netns", "exec", ns, exe, str(n), "9500", mode], check=True,
                             capture_output=True, text=True, timeout=600).stdout
        wall = time.perf_counter() - t0
    figures = dict(kv.split("=") for kv in out.splitlines()[0].split())
    if figures["ready"] != figures["workers"]:
        raise RuntimeError(f"conncap did not verify everything: {out.splitlines()[0]}")
    return {"seconds": float(figures["seconds"]), "wall": wall,
            "slab": float(figures["slab_bytes_per_conn"])}


def run_probe(n, source_net):
    env = dict(os.environ, PYTHONPATH=ROOT)
    settle()
    with netns() as ns:
        t0 = time.perf_counter()
        # The user's command, not the library: pre-flight and start-up count too (in
        # `wall`); `seconds_total` is the figure comparable with conncap's.
        proc = subprocess.run([sys.executable, "-m", "tuner", "probe", "--json", "--netns", ns,
                               "--connections", str(n), "--source-net", source_net],
                              capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"probe failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    r = json.loads(proc.stdout)
    return {"seconds": r["seconds_total"], "wall": wall, "slab": r["kernel_slab_bytes_per_conn"],
            "establish": r["seconds_establish"], "exchange": r["seconds_exchange"],
            "close": r["seconds_close"], "user_kb": r["user_bytes_per_conn"] / 1024,
            "workers": r["workers"], "tcp_mem": r["kernel_tcp_mem_bytes_per_conn"]}


def report_estimate(n):
    """tuner report's idle kernel bytes per loopback connection, or None if unavailable."""
    proc = subprocess.run([sys.executable, "-m", "tuner", "report", "--json", "--target", str(n)],
                          capture_output=True, text=True, cwd=ROOT)
    try:
        return json.loads(proc.stdout)["memory"]["idle_bytes_per_connection"]
    except (ValueError, KeyError, TypeError):
        return None


CAP_SYS_ADMIN = 21


def has_cap_sys_admin():
    return procfs.has_capability(CAP_SYS_ADMIN)


def bench(exe, n, repeat, modes):
    avail = meminfo("MemAvailable")
    if n * KERNEL_BYTES_PER_CONN > avail * 0.9:
        print(f"\n{n:,} connections: skipped, needs ~{n * KERNEL_BYTES_PER_CONN / 2**30:.1f} GiB, "
              f"{avail / 2**30:.1f} GiB available")
        return
    print(f"\n{n:,} connections, {repeat} run(s) per mode, alternating C and probe:")
    estimate = report_estimate(n)
    # 2 descriptors per connection plus the rest of the system; CAP_SYS_ADMIN may exceed
    # the open-files limit anyway, but the benchmark should not depend on that.
    with host_limits(n):
        for mode in modes:
            c_mode, source_net = MODES[mode]
            c_runs, p_runs = [], []
            for _ in range(repeat):
                c_runs.append(run_conncap(exe, n, c_mode))
                p_runs.append(run_probe(n, source_net))
            c = statistics.median(r["seconds"] for r in c_runs)
            p = statistics.median(r["seconds"] for r in p_runs)
            med = {k: statistics.median(r[k] for r in p_runs) for k in p_runs[0]}
            c_slab = statistics.median(r["slab"] for r in c_runs)
            print(f"  [{mode}] C {c:6.2f} s   probe {p:6.2f} s   ratio {p / c:.2f} (goal <= 1.30)"
                  f"   runs C {[round(r['seconds'], 2) for r in c_runs]} probe {[r['seconds'] for r in p_runs]}")
            print(f"  [{mode}] probe: {med['workers']:.0f} workers, establish {med['establish']:.2f} s, "
                  f"exchange {med['exchange']:.2f} s, close {med['close']:.2f} s; wall incl. start and "
                  f"teardown: C {statistics.median(r['wall'] for r in c_runs):.2f} s, probe {med['wall']:.2f} s")
            print(f"  [{mode}] user space {med['user_kb']:.3f} KB/conn (goal <= 0.8); kernel slab "
                  f"{med['slab']:.0f} B/conn (C {c_slab:.0f}), tcp_mem {med['tcp_mem']:.0f} B/conn"
                  + (f"; report estimate {estimate:.0f} B/conn, measured/estimate "
                     f"{med['slab'] / estimate:.2f} (goal 0.90-1.10)" if estimate else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--big", action="store_true", help="also 1,000,000 connections")
    ap.add_argument("--huge", action="store_true", help="also 2,000,000 connections")
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode for 100,000 (big runs: 1)")
    ap.add_argument("--modes", default="none,spread", help="comma-separated: none, spread")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_probe needs root (network namespaces, host-wide limits)")
    print(f"CAP_SYS_ADMIN: {has_cap_sys_admin()} (with it the kernel lets this process exceed the "
          f"host's open-files limit); "
          f"RLIMIT_NOFILE hard {resource.getrlimit(resource.RLIMIT_NOFILE)[1]}")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "conncap")
        subprocess.run(["gcc", "-O2", "-o", exe, CONNCAP_C], check=True)
        modes = args.modes.split(",")
        bench(exe, 100_000, args.repeat, modes)
        if args.big:
            bench(exe, 1_000_000, 1, modes)
        if args.huge:
            bench(exe, 2_000_000, 1, modes)


if __name__ == "__main__":
    main()
