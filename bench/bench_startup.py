#!/usr/bin/env python3
"""Benchmark: how long `tuner` takes to start, next to a bare interpreter in the same run.

Times, alternating so that a busy host slows each alike, the median wall time of

    python -c pass                 the floor: an interpreter that does nothing
    python -m tuner --help         typer and the CLI's own imports
    python -m tuner report --json  the whole report: imports, every reading, the model

Goals (issue 9): report --json <= 0.25 s, --help <= 0.15 s on the 2-vCPU VM.  Prints
the figures and their ratios to `python -c pass`; asserts nothing.

    python bench/bench_startup.py [--runs 15]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "tuner --help": [sys.executable, "-m", "tuner", "--help"],
    "tuner report --json": [sys.executable, "-m", "tuner", "report", "--json"],
}
GOALS = {"tuner --help": 0.15, "tuner report --json": 0.25}


def wall(argv) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15, help="runs of each command (median reported)")
    args = ap.parse_args()
    times = {name: [] for name in COMMANDS}
    for argv in COMMANDS.values():
        wall(argv)  # warm the page cache once
    for _ in range(args.runs):
        for name, argv in COMMANDS.items():
            times[name].append(wall(argv))
    floor = statistics.median(times["python -c pass"])
    print(f"start-up, median of {args.runs} alternating runs:")
    for name, samples in times.items():
        med = statistics.median(samples)
        goal = f"   goal <= {GOALS[name]:.2f} s" if name in GOALS else ""
        print(f"  {name:22} {med:6.3f} s   x{med / floor:5.1f} of python -c pass{goal}")


if __name__ == "__main__":
    main()
