"""Limits the probe itself hits, and how it ends (issue 8 items 9, 10, 11).

Each is provoked for real: a pids cgroup around tuner, a per-process descriptor limit
set with prlimit, a ramp so slow it cannot finish, a Ctrl-C in the middle of it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import marked, run_tuner, wait_gone
from probes.launch import PACKAGE_ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups, prlimit and namespaces need root")
ENV = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)


@pytest.mark.parametrize("ip_netns_exec", [False, True])
def test_fork_eagain_in_a_pids_cgroup_is_the_pids_limit_with_a_summary(pids_cgroup, netns, ip_netns_exec):
    """Item 10: 40 workers in a cgroup of 12 tasks.  The failed fork is classified as the
    cgroup's pids.max, the workers that did start verify what they open and stop, and
    the summary (here --json) is printed: no traceback.  Under `ip netns exec` too, whose
    fresh /sys has no cgroup mount: the cgroup is read where the caller's namespace
    mounts it (tuner.host.procpid.cgroup_root), not taken for kernel.threads-max."""
    with open(os.path.join(pids_cgroup, "pids.max"), "w") as f:
        f.write("12")
    marker = f"41.062{int(ip_netns_exec)}"
    wrap = f"ip netns exec {netns} " if ip_netns_exec else ""
    proc = subprocess.run(
        ["sh", "-c", f'echo $$ > {pids_cgroup}/cgroup.procs && exec {wrap}"$0" -m tuner "$@"', sys.executable,
         "probe", "-n", "2000", "--workers", "40", "--timeout", marker, "--force", "--json"],
        capture_output=True, text=True, timeout=120, env=marked(marker, ENV))
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and "BlockingIOError" not in proc.stderr
    result = json.loads(proc.stdout)
    assert result["stopped_by"] == "pids.max"
    fork = next(e for e in result["errors"] if e["op"] == "fork")
    assert (fork["side"], fork["errno"], fork["limit"]) == ("worker", "EAGAIN", "pids.max")
    assert "pids.max 12" in fork["first_message"]
    assert 0 < result["verified"] == result["established"] < 2000
    assert wait_gone(marker) == []


def test_timeout_bounds_a_ramp_that_cannot_finish_and_nothing_is_killed(netns):
    """Item 11: --rate 1e-9 opens one connection and then waits; --timeout 3 ends it (the
    worker waits on the stop pipe, not in a sleep tuner must SIGKILL and then blame on
    the OOM killer)."""
    marker = "3.0629"
    proc = run_tuner("probe", "--netns", netns, "-n", 10, "--rate", "1e-9", "--timeout", marker, "--json",
                     env=marked(marker))
    assert proc.returncode == 3, proc.stderr
    result = json.loads(proc.stdout)
    assert result["stopped_by"] == "timeout" and result["verified"] == 1
    assert [e for e in result["errors"] if e["side"] == "worker"] == []
    assert wait_gone(marker) == []


def test_ctrl_c_ends_a_slow_ramp_at_once_with_its_summary(netns):
    """Item 11: SIGINT in the middle of a ramp that would run for ages: the summary comes
    right away (the old sleeping worker held it for the 30 s kill grace)."""
    marker = "600.0631"
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "probe", "--netns", netns, "-n", "10",
                             "--rate", "1e-9", "--timeout", marker, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=marked(marker, ENV))
    try:
        for line in proc.stderr:
            if line.startswith("plan:"):
                break
        time.sleep(0.5)  # the first connection is open and the worker is waiting
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    result = json.loads(out)
    assert result["stopped_by"] == "SIGINT" and result["interrupted"]
    assert [e for e in result["errors"] if e["side"] == "worker"] == []
    assert wait_gone(marker) == []


@pytest.mark.parametrize("nofile", [1024, 256])
def test_probe_sizes_workers_for_a_low_hard_nofile_limit(nofile):
    """Item 9: under prlimit --nofile=N:N the probe (without the CLI's pre-flight, whose
    model is the report's) splits the connections over workers that fit N."""
    per_worker = (nofile - 64) // 2
    proc = subprocess.run(["prlimit", f"--nofile={nofile}:{nofile}", "--", sys.executable, "-m", "probes",
                           "-n", "2000", "--json", "--quiet"],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["verified"] == 2000 and result["nofile"] == nofile
    assert result["per_worker"] <= per_worker and result["workers"] == -(-2000 // per_worker)


@pytest.mark.parametrize("argv", [
    [sys.executable, "-m", "tuner", "probe", "-n", "2000"],
    [sys.executable, "-m", "probes", "-n", "2000"],
])
def test_a_hard_nofile_limit_that_leaves_no_room_is_refused_naming_it(argv):
    """Item 9: at 64 descriptors a worker has none left for connections: refused with
    RLIMIT_NOFILE named, exit 2, one line, no ZeroDivisionError."""
    proc = subprocess.run(["prlimit", "--nofile=64:64", "--", *argv], capture_output=True, text=True,
                          timeout=60, env=ENV)
    assert proc.returncode == 2, proc.stderr
    assert "RLIMIT_NOFILE 64" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr and "ZeroDivision" not in proc.stderr
