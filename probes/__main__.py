"""`python -m probes`: run the probe in this (lean) interpreter.

    python -m probes --connections 100000 [--json]     summary (or the result as JSON) on stdout,
                                                       progress lines on stderr
    python -m probes --jsonl --config - < SETTINGS     one JSON event per line (run_probe's feed),
                                                       the settings as JSON on stdin (a credential in
                                                       them stays out of the command line)
    python -m probes --serve ADDR:PORT [--expect N --hold S] [--json|--jsonl]
                                                       the server side of a probe across hosts
    python -m probes --connect URL -n N [--source-net CIDR] [--json|--jsonl]
                                                       its client side (probes.wire: the exchange)

Exit status: 0 all verified, 2 bad configuration (nothing opened), 3 fell short (see
stopped_by), 128+N ended by signal N (130 Ctrl-C), 1 the probe itself failed.  --serve
ends on SIGINT/SIGTERM, --timeout, or once --expect verified and then their clients
closed or --hold seconds passed, with 0 when every expected connection verified, else 3.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from . import modes
from .config import ProbeConfig, ProbeConfigError
from .result import EXIT_USAGE

MAX_SETTINGS = 16 << 20   # bytes of --config on stdin: far past any configuration (a few KB)


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m probes", description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", "-n", type=int, default=10000)
    p.add_argument("--hold", type=float, help="seconds to hold them all (default 0; --serve: at most "
                                               "this long once --expect verified, 0 ends then)")
    p.add_argument("--rate", type=float, help="new connections per second (default: as fast as possible)")
    p.add_argument("--workers", default="auto", help="'auto' or a count")
    p.add_argument("--per-worker", type=int, help="connections per worker (default: from RLIMIT_NOFILE)")
    p.add_argument("--source-net", help="client source addresses, or 'none' (local default 127.0.0.0/8; "
                                        "--connect default: kernel-chosen)")
    p.add_argument("--port", type=int, help="first listener port (default: outside ip_local_port_range)")
    p.add_argument("--timeout", type=float, help="seconds to establish and verify")
    p.add_argument("--worker-nofile", type=int, help="RLIMIT_NOFILE in workers (to provoke EMFILE)")
    p.add_argument("--accept-pause", type=float, default=0.0, help="sleep after each accept round")
    p.add_argument("--progress-interval", type=float, default=0.25)
    p.add_argument("--config", help="all settings as a JSON object (overrides the flags); '-' reads it "
                                    "from stdin (keep a protocol's password there, not in argv)")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--serve", metavar="ADDR:PORT", help="serve the wire exchange to remote clients")
    split.add_argument("--connect", metavar="URL", help="open the connections to a --serve elsewhere "
                                                        "(HOST:PORT) or to a URL of probes/protocols "
                                                        "(their options: --config)")
    p.add_argument("--expect", type=int, help="--serve: connections to verify; more wait, "
                                               "then are reset once that many verified")
    p.add_argument("--echo-timeout", type=float, default=10.0, help="--serve: seconds a client has to echo")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the result as one JSON object")
    out.add_argument("--jsonl", action="store_true", help="print every event as a JSON line")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def settings(args) -> dict:
    """--config's JSON object: the text given, or with '-' stdin's, read to its end; then
    stdin is /dev/null, so the forked workers do not hold the pipe."""
    if args.config != "-":
        return json.loads(args.config)
    with os.fdopen(os.dup(0), "rb") as f:
        text = f.read(MAX_SETTINGS + 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if len(text) > MAX_SETTINGS:
        raise ValueError(f"--config -: more than {MAX_SETTINGS:,} bytes of settings on stdin")
    return json.loads(text)


def config_from(args):
    """The configuration of the mode asked for: ProbeConfig, ServeConfig or ConnectConfig."""
    workers = None if args.workers == "auto" else int(args.workers)
    if args.serve:
        from .serve import ServeConfig
        if args.config:
            return ServeConfig.from_dict(settings(args))
        return ServeConfig(listen=args.serve, expect=args.expect,
                           hold=args.hold,
                           timeout=args.timeout, echo_timeout=args.echo_timeout, workers=workers,
                           worker_nofile=args.worker_nofile, progress_interval=args.progress_interval)
    if args.connect:
        from .connect import ConnectConfig
        if args.config:
            return ConnectConfig.from_dict(settings(args))
        return ConnectConfig(target=args.connect, connections=args.connections,
                             source_net=None if (args.source_net or "none") == "none" else args.source_net,
                             rate=args.rate, hold=args.hold or 0.0, timeout=args.timeout, workers=workers,
                             worker_nofile=args.worker_nofile, progress_interval=args.progress_interval)
    if args.config:
        return ProbeConfig.from_dict(settings(args))
    return ProbeConfig(connections=args.connections, hold=args.hold or 0.0, rate=args.rate, workers=workers or "auto",
                       per_worker=args.per_worker, source_net=args.source_net or "127.0.0.0/8", port=args.port,
                       timeout=args.timeout, worker_nofile=args.worker_nofile,
                       accept_pause=args.accept_pause, progress_interval=args.progress_interval)


def follow_parent(pid: int) -> None:
    """Die with the process that started us (run_probe), so its death ends the workers too."""
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != pid:
        sys.exit(1)


def quiet_broken_pipe() -> None:
    """The reader went away (`python -m probes | head`): nothing more can be said, and
    Python's own flush of stdout at exit must not raise again (a traceback)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):
            pass


def main(argv=None) -> int:
    """Exit status as the module docstring says; a reader that goes away while the run
    goes on (stderr into `| head`) ends it like SIGPIPE would: 128 + SIGPIPE."""
    try:
        return _main(argv)
    except BrokenPipeError:
        quiet_broken_pipe()
        return 128 + signal.SIGPIPE


def _main(argv=None) -> int:
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
        from .progress_lines import plain_lines
        show = None if args.quiet else plain_lines(getattr(cfg, "connections", None) or getattr(cfg, "expect", 0) or 0)

        def emit(event):
            if event["event"] in ("plan", "listening") and not args.quiet:
                print(f"probe {event['event']}: {event['describe']}", file=sys.stderr, flush=True)
            elif event["event"] == "progress" and show:
                show(event.get("established", event.get("accepted")), event["verified"], event["rate"],
                     event["phase"])

    try:
        result = modes.orchestrator(cfg)(cfg, emit).run()
    except ProbeConfigError as exc:
        if args.jsonl:
            jsonl({"event": "error", "message": str(exc)})
        print(f"probe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.jsonl:
            jsonl({"event": "result", "result": result.to_dict()})
        elif args.json:
            print(json.dumps(result.to_dict(), indent=2))
        else:
            print("\n".join(result.summary_lines()))
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_broken_pipe()   # the run is over: its exit status stands
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
