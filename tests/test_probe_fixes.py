"""A fix the probe prints is the knob table's, for the probe as it ran, and running it
changes the limit that stopped the probe (issue 9, "Fixes come from the knob table").

Each case provokes one limit inside a throwaway namespace, forces the probe into it,
runs the printed `tuner apply` with --dry-run --json and checks its plan changes the
knob that stopped the probe; then applies it (journal and lock in tmp) and shows the
same probe passes.

RLIMIT_NOFILE cannot stop a `tuner probe` run half-way, so it has no case here; tried
for real under `prlimit --nofile=S:H` in a namespace, each way ends before a connection
is opened, with exit 2 and one line naming RLIMIT_NOFILE and what to do:
- a soft limit below the hard one: the probe raises its soft limit to the hard one
  (probes.config.raise_nofile) and the run passes;
- a hard limit that leaves a worker no room (64): refused (test_probe_limits.py);
- --workers K whose shares do not fit the hard limit: refused, naming the --workers
  that would fit ("use --workers 11 or more, or --workers auto");
- --workers auto under a hard limit so low that the orchestrator cannot hold every
  worker's listener (100 for 5,000 connections: 278 workers): this one ran into EMFILE
  in the orchestrator ("cannot listen on 127.0.0.1:20097: Too many open files", no
  limit named) until the plan counted the listeners; now refused with the knob table's
  fix for the hard limit and the lowest value that runs, which the test below proves
  exact.  A hard limit goes up only with CAP_SYS_RESOURCE (not on the CI machine), so
  there is no `tuner apply` that could lift it for the next run here: the fix is the
  table's words (LimitNOFILE=, limits.d), and the test lowers the limit to the value
  printed (lowering needs no privilege) and shows the probe then runs.
"""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tuner import knobs

from conftest import run_tuner

N = 5000


def ns_sysctl(netns, *settings):
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", *settings], check=True)


CASES = {
    # One source address and a 1,000-port range: connect() runs out of ports at ~1,000.
    "port range": (("net.ipv4.ip_local_port_range=40000 40999",),
                   ("--source-net", "127.0.0.2/32"), "net.ipv4.ip_local_port_range"),
    # An accept queue of 4 and a 2 s timeout: the burst overflows it and times out.
    "somaxconn": (("net.core.somaxconn=4", "net.ipv4.tcp_max_syn_backlog=4"),
                  ("--timeout", "2"), "net.core.somaxconn"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_printed_fix_plans_the_knob_that_stopped_the_probe_and_lifts_it(netns, tmp_path, case):
    settings, probe_args, knob = CASES[case]
    ns_sysctl(netns, *settings)
    env = dict(os.environ, TUNER_LOCK=str(tmp_path / "lock"), TUNER_JOURNAL=str(tmp_path / "j.json"))
    probe = ["probe", "--netns", netns, "-n", N, *probe_args]
    short = run_tuner(*probe, "--force", "--json", env=env)
    assert short.returncode == 3, short.stderr
    result = json.loads(short.stdout)
    assert result["stopped_by"] == knob
    fix = next(e["fix"] for e in result["errors"] if e["limit"] == knob)
    assert fix.startswith(f"{knob} needs "), fix
    command = shlex.split(fix.split(": ", 1)[1])
    assert command[:2] == ["tuner", "apply"], fix

    plan = json.loads(run_tuner(*command[1:], "--dry-run", "--json", env=env, check_rc=0).stdout)
    planned = {c["knob"]: c for c in plan["plan"]["changes"]}
    assert knob in planned, (fix, sorted(planned))
    # The value the fix names (grouped for people, like every number tuner prints) is
    # the value the plan sets.
    assert (fix.split(" needs ")[1].split(" for ")[0].replace(",", "")
            == " ".join(map(str, planned[knob]["new"])))

    run_tuner(*command[1:], "--yes", env=env, check_rc=0)
    ok = run_tuner(*probe, "--json", env=env)
    assert ok.returncode == 0, (ok.stdout[-2000:], ok.stderr)
    assert json.loads(ok.stdout)["verified"] == N


def test_apply_source_net_plans_for_that_many_sources(netns):
    """Without --source-net apply counts all of 127.0.0.0/8 as sources and leaves a narrow
    port range alone; with the probe's one address it widens the range."""
    ns_sysctl(netns, "net.ipv4.ip_local_port_range=40000 40999")
    wide = json.loads(run_tuner("apply", "--target", N, "--netns", netns, "--dry-run", "--json",
                                check_rc=0).stdout)
    one = json.loads(run_tuner("apply", "--target", N, "--netns", netns, "--source-net", "127.0.0.2/32",
                               "--dry-run", "--json", check_rc=0).stdout)
    assert "net.ipv4.ip_local_port_range" not in {c["knob"] for c in wide["plan"]["changes"]}
    assert "net.ipv4.ip_local_port_range" in {c["knob"] for c in one["plan"]["changes"]}
    bad = run_tuner("apply", "--target", N, "--netns", netns, "--source-net", "", "--dry-run")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--source-net" in bad.stderr


def _probe_under(nofile, netns, n):
    return subprocess.run(["prlimit", f"--nofile={nofile}:{nofile}", "--", sys.executable, "-m", "tuner",
                           "probe", "--netns", netns, "-n", str(n), "--force", "--json"],
                          capture_output=True, text=True, timeout=300)


def test_a_hard_nofile_limit_too_low_for_the_probes_listeners_is_refused_with_the_value_that_runs(netns):
    """The orchestrator holds one listener per worker: at a hard RLIMIT_NOFILE of 100,
    5,000 connections need 278 workers, more listeners than it may open. Refused before
    anything runs, naming RLIMIT_NOFILE, the table's fix, and the lowest limit that runs;
    at that limit the probe runs, one below it is refused again."""
    refused = _probe_under(100, netns, N)
    assert refused.returncode == 2, (refused.stdout[-1000:], refused.stderr)
    line = refused.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "RLIMIT_NOFILE is 100" in line and "listener" in line
    assert knobs.BY_NAME["RLIMIT_NOFILE.hard"].fix.render() in line
    lowest = int(re.search(r"to at least ([0-9,]+)", line).group(1).replace(",", ""))
    assert 100 < lowest < 20000

    ok = _probe_under(lowest, netns, N)
    assert ok.returncode == 0, (ok.stdout[-2000:], ok.stderr)
    result = json.loads(ok.stdout)
    assert result["verified"] == N and result["nofile"] == lowest
    assert _probe_under(lowest - 1, netns, N).returncode == 2
