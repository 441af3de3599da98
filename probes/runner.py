"""run_probe(): the library entry point for callers that are not lean.

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
from typing import Callable, Optional

from .config import ProbeConfig, ProbeConfigError
from .progress import OnProgress
from .result import EXIT_USAGE, ProbeResult

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ProbeError(RuntimeError):
    """The probe machinery itself failed (not a limit of the host): message has the detail."""


def command(config: ProbeConfig, python: str = sys.executable) -> list:
    """The argv that runs `config` as a lean orchestrator emitting JSON lines."""
    settings = config.to_dict()
    settings.pop("netns")
    argv = [python, "-m", "probes", "--jsonl", "--parent-pid", str(os.getpid()),
            "--config", json.dumps(settings)]
    return ["ip", "netns", "exec", config.netns, *argv] if config.netns else argv


def run_probe(config: ProbeConfig, on_progress: Optional[OnProgress] = None,
              on_plan: Optional[Callable[[dict], None]] = None) -> ProbeResult:
    """Open, verify, hold and close config.connections loopback connections.

    Returns the ProbeResult whether or not every connection verified (result.ok,
    result.stopped_by, result.exit_code say how it ended).  Ctrl-C during the run ends
    every worker and returns the partial result with interrupted=True and
    stopped_by='SIGINT'; a second Ctrl-C kills the orchestrator and re-raises.
    Raises ProbeConfigError when the configuration cannot run here (nothing opened) and
    ProbeError when the orchestrator fails.
    """
    config.validate()
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(command(config), stdout=subprocess.PIPE, stderr=stderr, env=env,
                                text=True, bufsize=1)
        state = {"result": None, "error": None}
        try:
            _read_events(proc, state, on_progress, on_plan)
        except KeyboardInterrupt:
            # The terminal sent SIGINT to the whole group; make sure the orchestrator saw it
            # too, then let it end the workers and report how far it got.
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                _read_events(proc, state, on_progress, on_plan)
            except KeyboardInterrupt:
                proc.kill()  # workers follow through PR_SET_PDEATHSIG
                proc.wait()
                raise
        finally:
            if proc.poll() is None and state["result"] is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
        if state["result"] is not None:
            return ProbeResult.from_dict(state["result"])
        if proc.returncode == EXIT_USAGE and state["error"]:
            raise ProbeConfigError(state["error"])
        stderr.seek(0)
        tail = stderr.read().decode(errors="replace").strip().splitlines()[-5:]
        raise ProbeError(f"probe orchestrator exited with status {proc.returncode}: "
                         + (" | ".join(tail) or state["error"] or "no output"))


def run_split(config, netns: Optional[str] = None, on_event: Optional[Callable[[dict], None]] = None) -> dict:
    """Run a ServeConfig (--serve) or ConnectConfig (--connect) in a lean interpreter, like
    run_probe; returns the result dict.  on_event sees every event (listening/plan,
    progress).  SIGTERM to the caller is passed on, so a stopped server still reports;
    Ctrl-C ends it the same way.  Raises ProbeConfigError / ProbeError like run_probe."""
    from .serve import ServeConfig
    config.validate()
    mode, where = ("--serve", config.listen) if isinstance(config, ServeConfig) else ("--connect", config.target)
    argv = [sys.executable, "-m", "probes", "--jsonl", "--parent-pid", str(os.getpid()), mode, where,
            "--config", json.dumps(config.to_dict())]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    state = {"result": None, "error": None}
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True, bufsize=1)
        old = signal.signal(signal.SIGTERM, lambda *_: proc.poll() is None and proc.send_signal(signal.SIGTERM))
        interrupted = False
        try:
            while True:
                try:
                    for line in proc.stdout:
                        event = json.loads(line)
                        if event.get("event") == "result":
                            state["result"] = event["result"]
                        elif event.get("event") == "error":
                            state["error"] = event["message"]
                        elif on_event is not None:
                            on_event(event)
                    break
                except KeyboardInterrupt:
                    # The terminal's SIGINT reached the whole group; the orchestrator ends
                    # its workers and reports; a second Ctrl-C (re-raised) kills it.
                    if interrupted:
                        raise
                    interrupted = True
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGINT)
        except BaseException:
            proc.kill()  # workers follow through PR_SET_PDEATHSIG
            raise
        finally:
            signal.signal(signal.SIGTERM, old)
            proc.wait()
            proc.stdout.close()
        if state["result"] is not None:
            return state["result"]
        if proc.returncode == EXIT_USAGE and state["error"]:
            raise ProbeConfigError(state["error"])
        stderr.seek(0)
        tail = stderr.read().decode(errors="replace").strip().splitlines()[-5:]
        raise ProbeError(f"probe {mode[2:]} exited with status {proc.returncode}: "
                         + (" | ".join(tail) or state["error"] or "no output"))


def _read_events(proc, state, on_progress, on_plan) -> None:
    for line in proc.stdout:
        event = json.loads(line)
        kind = event.get("event")
        if kind == "progress" and on_progress is not None:
            on_progress(event["established"], event["verified"], event["rate"], event["phase"])
        elif kind == "plan" and on_plan is not None:
            on_plan(event)
        elif kind == "result":
            state["result"] = event["result"]
        elif kind == "error":
            state["error"] = event["message"]
