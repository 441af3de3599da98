#!/usr/bin/env python3
"""Benchmark for the Ansible playbook (issue 13): ansible/playbooks/million.yml on
namespace hosts, 3 load hosts x 100,000 connections against one server, next to the
same playbook with a single load host of 100,000 (the single-host probe's rate), in
the same run on the same machine.

Both runs use the test rig (tests/fleetrig.py: network namespaces on a bridge, Ansible
reaching each through a python wrapper inside it) and the user's path end to end:
ansible-playbook, facts, apply (aliases and all), the split probe, the asserts, revert.
All hosts share this machine's vCPUs, so three load hosts at once divide the CPU: the
figures compare the per-host rate alone and in company, and the playbook's own
overhead (wall time minus the probe's).  The server namespace's listen-queue counters
(ListenOverflows, SyncookiesSent, ...) are read after each play: a server that
accepts too slowly shows there first.

    python bench/bench_fleet.py [--per-host 100000] [--loads 3]

Prints figures, and for a run that failed, the task that failed and its reason (the
other run's figures are printed all the same).  Exit status 1 when a run failed.
Needs root; leaves no namespace behind.
"""
import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from fleetrig import PLAYBOOKS, namespace_fleet  # noqa: E402
from tuner.host.procfs import net_counters  # noqa: E402
from tuner.host.netns import in_netns  # noqa: E402

LISTEN_COUNTERS = ("ListenOverflows", "ListenDrops", "SyncookiesSent", "TCPReqQFullDrop")


def run(loads: int, per_host: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        with namespace_fleet(os.path.join(tmp, "fleet"), loads=loads, per_host=per_host) as fleet:
            # Each load host holds until the slowest one and the server's hold are done
            # (they finish within a second of each other here; the margin is generous).
            extra = (f"tuner_hold=2 tuner_client_hold={15 + per_host * loads // 20000} "
                     f"tuner_probe_timeout={60 + per_host * loads // 1000}")
            start = time.monotonic()
            play = fleet.playbook(os.path.join(PLAYBOOKS, "million.yml"), "-e", extra, timeout=1800)
            wall = time.monotonic() - start
            with in_netns(fleet.server):   # before the rig removes the namespace
                counters = net_counters("TcpExt")
    # The server's result: collected in the play's block, or (a step failed) by its
    # always section once the serve job was stopped.
    served = None
    for r in play.records:
        if r["host"] == "server" and r["action"].endswith("async_status") and "probe" in r["result"]:
            served = r["result"]["probe"]
    hosts = {r["host"]: r["result"]["probe"] for r in play.records
             if r["task"].startswith("Connect") and "probe" in r["result"]}
    failed = [r for r in play.records if r["status"] in ("failed", "unreachable")]
    why = None
    if play.proc.returncode != 0:
        why = (f"{failed[0]['task']!r} failed on {failed[0]['host']}: {failed[0]['result'].get('msg')}"
               if failed else f"ansible-playbook exited {play.proc.returncode}: {play.output[-2000:]}")
    return {"loads": loads, "wall": wall, "served": served, "hosts": dict(sorted(hosts.items())),
            "why": why, "listen": {k: counters.get(k, 0) for k in LISTEN_COUNTERS}}


def row(label: str, host: str, r: dict, alone: dict) -> str:
    rate = r.get("rate_per_s") or 0
    seconds = r.get("seconds_verified")
    versus = f"{rate / alone['rate_per_s']:.2f}" if alone and alone.get("rate_per_s") else "-"
    shown = f"{seconds:.2f}" if seconds is not None else "-"   # a short run never verified all
    return (f"{label:<24}{host:<8}{r['verified']:>10,}{shown:>10}"
            f"{rate:>10,}{versus:>10}" + ("" if r.get("ok") else "  (short)"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-host", type=int, default=100000)
    p.add_argument("--loads", type=int, default=3)
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, sysctls)")

    single = run(1, args.per_host)
    fleet = run(args.loads, args.per_host)
    alone = single["hosts"].get("load1")
    print(f"million.yml: {args.loads} load hosts x {args.per_host:,} against one server, next to one "
          f"load host alone (namespaces on one {os.cpu_count()}-vCPU machine)")
    print(f"{'run':<24}{'host':<8}{'verified':>10}{'seconds':>10}{'conn/s':>10}{'vs alone':>10}")
    if alone:
        print(row("single load host", "load1", alone, alone))
    for host, r in fleet["hosts"].items():
        print(row(f"{args.loads} load hosts at once", host, r, alone))
    if fleet["hosts"] and alone and not fleet["why"]:
        total_rate = sum(r["rate_per_s"] for r in fleet["hosts"].values())
        print(f"all load hosts together: {total_rate:,} conn/s "
              f"({total_rate / alone['rate_per_s']:.2f} x the single host's)")
    for name, run_ in (("single", single), (f"{args.loads} hosts", fleet)):
        s = run_["served"]
        server = (f"server verified {s['verified']:,} of {s['expect']:,} over {s['workers']} workers "
                  f"in {s['seconds']:.1f} s (ended by {s['stopped_by']})" if s else "no server result")
        listen = ", ".join(f"{k} {v:,}" for k, v in run_["listen"].items())
        print(f"{name}: {server}; playbook wall time {run_['wall']:.1f} s; server namespace: {listen}")
        if run_["why"]:
            print(f"{name} FAILED: {run_['why']}")
    if single["why"] or fleet["why"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
