"""Launch a probe mode in a lean interpreter and follow its events: run() for any mode's
configuration (ProbeConfig, ServeConfig, ConnectConfig) returns its typed result;
run_probe() is run() for the local probe with progress callbacks.  The entry points for
callers that are not lean.

The caller (the tuner CLI) may run threads (rich's live bar refreshes from one), and
fork() in a threaded process copies locks held by other threads into the child.  So
the probe runs in a fresh interpreter (`python -m probes --jsonl`) that forks the
workers, and this side only reads its event lines and calls back; a Ctrl-C or the
caller's death reaches the orchestrator, never half of a fork.  Memory was not the
reason: measured on the 2-vCPU VM with 100,000 connections, workers forked from a
process that imported typer, rich and tuner held 2.34 MB USS each, from the lean
interpreter 2.25 MB (gc.freeze() keeps the inherited heap shared either way).  The
extra interpreter start costs ~0.15 s.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Callable, Optional, Tuple

from . import modes
from .config import ProbeConfig, ProbeConfigError
from .progress_lines import OnProgress
from .result import EXIT_USAGE, ModeResult, ProbeResult

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ProbeError(RuntimeError):
    """The probe machinery itself failed (not a limit of the host): message has the detail."""


# `python -m` puts the working directory first on sys.path: run as root from a directory
# another user can write (/tmp, their home), their probes/__main__.py would run as root.
# -P (3.11+) leaves it out; -I before it does too, and ignores PYTHONPATH (an installed
# tuner then, not a checkout).
SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else ["-I"]


def command(config, netns: Optional[str] = None, python: str = sys.executable) -> Tuple[list, str]:
    """(argv, stdin): the argv that runs any mode's `config` as a lean orchestrator
    emitting JSON lines, inside `ip netns exec` when the configuration (the local
    probe's) or `netns` says, and the settings it reads from its stdin (`--config -`).
    The settings never go in argv: every user reads any process's command line
    (/proc/PID/cmdline, ps), and they may hold a credential (a protocol's secret
    option: a broker's password); a pipe is read by the orchestrator alone, and `ip
    netns exec` hands its stdin on through exec."""
    settings = config.to_dict()
    netns = settings.pop("netns", None) or netns
    argv = [python, *SAFE_PATH, "-m", "probes", "--jsonl", "--parent-pid", str(os.getpid()), *config.mode_argv(),
            "--config", "-"]
    return (["ip", "netns", "exec", netns, *argv] if netns else argv), json.dumps(settings)


def run(config, netns: Optional[str] = None, on_event: Optional[Callable[[dict], None]] = None) -> ModeResult:
    """Run any mode's configuration in a lean interpreter (signals handled as run_probe
    says) and return its typed result; on_event sees every event but the result (plan or
    listening, progress)."""
    config.validate()
    name = "orchestrator" if config.MODE == "local" else config.MODE
    argv, settings = command(config, netns)
    return modes.result_type(config).from_dict(follow_events(argv, name, on_event, settings))


class ProbeInterrupted(ProbeError):
    """A signal ended the orchestrator before it could report (it was still starting)."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name} before the probe started")
        self.signum = signum


def run_probe(config: ProbeConfig, on_progress: Optional[OnProgress] = None,
              on_plan: Optional[Callable[[dict], None]] = None) -> ProbeResult:
    """Open, verify, hold and close config.connections loopback connections.

    Returns the ProbeResult whether or not every connection verified (result.ok,
    result.stopped_by, result.exit_code say how it ended).  SIGINT or SIGTERM during the
    run ends every worker and returns the partial result with interrupted=True and
    stopped_by='SIGINT'/'SIGTERM'; a second Ctrl-C kills the orchestrator and re-raises.
    Raises ProbeConfigError when the configuration cannot run here (nothing opened),
    ProbeInterrupted when a signal came before the orchestrator could report, and
    ProbeError when the orchestrator fails.
    """
    # The seconds of the hold left go to a callback that takes a fifth argument (one
    # written for four keeps working).
    with_hold = on_progress is not None and _takes_five(on_progress)

    def on_event(event: dict) -> None:
        kind = event.get("event")
        if kind == "progress" and on_progress is not None:
            figures = (event["established"], event["verified"], event["rate"], event["phase"])
            on_progress(*figures, event.get("hold_left")) if with_hold else on_progress(*figures)
        elif kind == "plan" and on_plan is not None:
            on_plan(event)

    return run(config, on_event=on_event)


def _takes_five(fn) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return (any(p.kind == p.VAR_POSITIONAL for p in params)
            or sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) >= 5)


def _env() -> dict:
    """Ours, with this package first on PYTHONPATH (the lean interpreter imports it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _start(argv: list, settings: str, stderr) -> subprocess.Popen:
    """The orchestrator, started with the settings on its stdin, then EOF.  One that died
    first (`ip netns exec` of a namespace that is gone) closed the pipe: its exit says why."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=_env(),
                            text=True, bufsize=1)
    try:
        proc.stdin.write(settings)
        proc.stdin.close()
    except BrokenPipeError:
        try:
            proc.stdin.close()
        except BrokenPipeError:   # the close flushed what the write had buffered
            pass
    return proc


def follow_events(argv: list, name: str, on_event: Optional[Callable[[dict], None]], settings: str = "") -> dict:
    """Start the orchestrator (argv), hand it `settings` on stdin, feed its events to
    on_event, return its result dict.

    SIGTERM and SIGINT to this process are passed on to the orchestrator, which ends its
    workers and still reports: whoever stops a probe (Ctrl-C, kill, a service manager)
    gets the partial result.  (A terminal's Ctrl-C reaches the whole process group, so
    the orchestrator may see it twice; it acts on the first.)  A second SIGINT kills the
    orchestrator (its workers follow through PR_SET_PDEATHSIG) and raises
    KeyboardInterrupt.  Handlers can only be set from the main thread; elsewhere the
    caller's own handling stands.
    """
    state = {"result": None, "error": None}
    got: list = []   # the signals this process received, in order
    with tempfile.TemporaryFile() as stderr:
        proc = _start(argv, settings, stderr)

        def forward(signum, frame):
            got.append(signum)
            if signum == signal.SIGINT and got.count(signal.SIGINT) > 1:
                raise KeyboardInterrupt
            if proc.poll() is None:
                proc.send_signal(signum)

        old = {}
        if threading.current_thread() is threading.main_thread():
            old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for line in proc.stdout:
                event = json.loads(line)
                kind = event.get("event")
                if kind == "result":
                    state["result"] = event["result"]
                elif kind == "error":
                    state["error"] = event["message"]
                elif on_event is not None:
                    on_event(event)
        except BaseException:
            proc.kill()
            raise
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            proc.wait()
            proc.stdout.close()
        if state["result"] is not None:
            return state["result"]
        if proc.returncode == EXIT_USAGE and state["error"]:
            raise ProbeConfigError(state["error"])
        if got and proc.returncode == -got[0]:
            # The signal came before the orchestrator set its own handlers: nothing was
            # reported, and nothing to report (no worker had started).
            if got[0] == signal.SIGINT:
                raise KeyboardInterrupt
            raise ProbeInterrupted(got[0])
        stderr.seek(0)
        tail = stderr.read().decode(errors="replace").strip().splitlines()[-5:]
        raise ProbeError(f"probe {name} exited with status {proc.returncode}: "
                         + (" | ".join(tail) or state["error"] or "no output"))
