"""`python -m probes`: run the probe in this (lean) interpreter.

    python -m probes --connections 100000 [--json]     summary (or the result as JSON) on stdout,
                                                       progress lines on stderr
    python -m probes --jsonl --config '{...}'          one JSON event per line (run_probe's feed)

Exit status: 0 all verified, 2 bad configuration (nothing opened), 3 fell short (see
stopped_by), 128+N ended by signal N (130 Ctrl-C), 1 the probe itself failed.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from .config import ProbeConfig, ProbeConfigError
from .result import EXIT_USAGE, ProbeResult


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m probes", description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", "-n", type=int, default=10000)
    p.add_argument("--hold", type=float, default=0.0, help="seconds to hold them all")
    p.add_argument("--rate", type=float, help="new connections per second (default: as fast as possible)")
    p.add_argument("--workers", default="auto", help="'auto' or a count")
    p.add_argument("--per-worker", type=int, help="connections per worker (default: from RLIMIT_NOFILE)")
    p.add_argument("--source-net", default="127.0.0.0/8", help="client source addresses, or 'none'")
    p.add_argument("--port", type=int, help="first listener port (default: outside ip_local_port_range)")
    p.add_argument("--timeout", type=float, help="seconds to establish and verify")
    p.add_argument("--worker-nofile", type=int, help="RLIMIT_NOFILE in workers (to provoke EMFILE)")
    p.add_argument("--accept-pause", type=float, default=0.0, help="sleep after each accept round")
    p.add_argument("--progress-interval", type=float, default=0.25)
    p.add_argument("--config", help="all settings as a JSON object (overrides the flags)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the result as one JSON object")
    out.add_argument("--jsonl", action="store_true", help="print every event as a JSON line")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def config_from(args) -> ProbeConfig:
    if args.config:
        return ProbeConfig.from_dict(json.loads(args.config))
    workers = args.workers if args.workers == "auto" else int(args.workers)
    return ProbeConfig(connections=args.connections, hold=args.hold, rate=args.rate, workers=workers,
                       per_worker=args.per_worker, source_net=args.source_net, port=args.port,
                       timeout=args.timeout, worker_nofile=args.worker_nofile,
                       accept_pause=args.accept_pause, progress_interval=args.progress_interval)


def follow_parent(pid: int) -> None:
    """Die with the process that started us (run_probe), so its death ends the workers too."""
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != pid:
        sys.exit(1)


def main(argv=None) -> int:
    args = parse(argv)
    if args.parent_pid:
        follow_parent(args.parent_pid)

    def jsonl(event):
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    try:
        cfg = config_from(args)
        cfg.validate()
    except (ProbeConfigError, ValueError, TypeError) as exc:
        if args.jsonl:
            jsonl({"event": "error", "message": str(exc)})
        print(f"probe: {exc}", file=sys.stderr)
        return EXIT_USAGE

    if args.jsonl:
        emit = jsonl
    else:
        from .progress import plain_lines
        show = None if args.quiet else plain_lines(cfg.connections)

        def emit(event):
            if event["event"] == "plan" and not args.quiet:
                print(f"probe plan: {event['describe']}", file=sys.stderr, flush=True)
            elif event["event"] == "progress" and show:
                show(event["established"], event["verified"], event["rate"], event["phase"])

    from .orchestrator import orchestrate
    try:
        result = orchestrate(cfg, emit)
    except ProbeConfigError as exc:
        if args.jsonl:
            jsonl({"event": "error", "message": str(exc)})
        print(f"probe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.jsonl:
        jsonl({"event": "result", "result": result})
    elif args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(ProbeResult.from_dict(result).summary_lines()))
    return ProbeResult.from_dict(result).exit_code


if __name__ == "__main__":
    sys.exit(main())
