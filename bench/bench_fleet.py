#!/usr/bin/env python3
"""Benchmark for the Ansible playbook (issue 13): ansible/playbooks/million.yml on
namespace hosts, 3 load hosts x 100,000 connections against one server, next to the
same playbook with a single load host of 100,000 (the single-host probe's rate).

Both runs use the test rig (tests/fleetrig.py: network namespaces on a bridge, Ansible
reaching each through a python wrapper inside it) and the user's path end to end:
ansible-playbook, facts, apply (aliases and all), the split probe, the asserts, revert.
All hosts share this machine's 2 vCPUs, so three load hosts at once divide the CPU:
the figures compare the per-host rate alone and in company, and the playbook's own
overhead (wall time minus the probe's).

    python bench/bench_fleet.py [--per-host 100000] [--loads 3]

Prints figures; asserts nothing.  Needs root; leaves no namespace behind.
"""
import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from fleetrig import PLAYBOOKS, namespace_fleet  # noqa: E402


def run(loads: int, per_host: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        with namespace_fleet(os.path.join(tmp, "fleet"), loads=loads, per_host=per_host) as fleet:
            # Each load host holds until the slowest one and the server's hold are done.
            extra = f"tuner_hold=2 tuner_client_hold={10 + per_host * loads // 5000} tuner_probe_timeout=300"
            start = time.monotonic()
            play = fleet.playbook(os.path.join(PLAYBOOKS, "million.yml"), "-e", extra, timeout=900)
            wall = time.monotonic() - start
    if play.proc.returncode != 0:
        sys.exit(f"playbook failed ({loads} x {per_host:,}):\n{play.output[-3000:]}")
    served = play.results("async_status")["server"]["result"]["probe"]
    hosts = {h: r["result"]["probe"] for h, r in sorted(play.results("probe").items()) if h != "server"}
    return {"wall": wall, "served": served, "hosts": hosts}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-host", type=int, default=100000)
    p.add_argument("--loads", type=int, default=3)
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, sysctls)")

    single = run(1, args.per_host)
    fleet = run(args.loads, args.per_host)
    alone = single["hosts"]["load1"]
    print(f"million.yml: {args.loads} load hosts x {args.per_host:,} against one server "
          f"(namespaces on one {os.cpu_count()}-vCPU machine)")
    print(f"{'run':<24}{'host':<8}{'verified':>10}{'seconds':>10}{'conn/s':>10}{'vs alone':>10}")
    print(f"{'single load host':<24}{'load1':<8}{alone['verified']:>10,}{alone['seconds_verified']:>10.2f}"
          f"{alone['rate_per_s']:>10,}{'1.00':>10}")
    for host, r in fleet["hosts"].items():
        print(f"{f'{args.loads} load hosts at once':<24}{host:<8}{r['verified']:>10,}{r['seconds_verified']:>10.2f}"
              f"{r['rate_per_s']:>10,}{r['rate_per_s'] / alone['rate_per_s']:>10.2f}")
    total_rate = sum(r["rate_per_s"] for r in fleet["hosts"].values())
    print(f"all load hosts together: {total_rate:,} conn/s "
          f"({total_rate / alone['rate_per_s']:.2f} x the single host's)")
    for name, run_ in (("single", single), ("fleet", fleet)):
        s = run_["served"]
        print(f"{name}: server verified {s['verified']:,} of {s['expect']:,} "
              f"(stopped by {s['stopped_by']}), playbook wall time {run_['wall']:.1f} s")


if __name__ == "__main__":
    main()
