"""Shared fixtures: throwaway network namespaces and a guard that the host is left as found.

Tests run against the real kernel. Anything per-namespace is changed inside a
namespace made here and removed afterwards; host-global settings that a test does
change are snapshotted by `host_guard` (session-wide, autouse) and put back even when
the test fails, and the session fails loudly if something drifted.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

# A test that sends SIGINT to a tuner it started plays a terminal's Ctrl-C.  A test runner
# started as a background job of a non-interactive shell (as a CI launcher may be) has
# SIGINT ignored, and an ignored signal stays ignored across fork and exec: every tuner a
# test starts would ignore that Ctrl-C and the test would wait for it out.  (Issue 28: the
# two `diagnose --watch` Ctrl-C tests timed out in the full run and passed alone; rerun
# under `trap "" INT` they time out every time, and pass with this.)
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Fixtures of tests/applyhelp.py (host_restored, jpath, own_lock) and tests/realservers.py
# (real_server: nginx, redis-server, haproxy, PostgreSQL, Node ws) for every test module.
pytest_plugins = ("applyhelp", "realservers")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI (the CI variable set) a skipped test fails with its reason: CI installs
    everything the suite needs, so a skip there is a test that silently did not run."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where nothing may be skipped: {reason}"


@pytest.fixture(scope="session", autouse=True)
def host_guard():
    """Snapshot host-global settings and lo's addresses; restore them at the end."""
    if os.geteuid() != 0:
        yield
        return
    from applyhelp import addresses, host_values, restore

    before = host_values()
    addrs_before = addresses(None, "lo")
    yield
    after = host_values()
    drift = {n: (v, after[n]) for n, v in before.items() if after[n] != v}
    restore(before)
    extra = set(addresses(None, "lo")) - set(addrs_before)
    for cidr in extra:
        subprocess.run(["ip", "addr", "del", cidr, "dev", "lo"], check=False)
    assert not drift, f"tests left host settings changed (now restored): {drift}"
    assert not extra, f"tests left addresses on lo (now removed): {sorted(extra)}"


def make_netns(prefix: str = "tuner-t") -> str:
    from pyroute2 import netns as pnetns

    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    pnetns.create(name)
    # A new namespace's lo is down; loopback traffic inside it needs it up.
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    return name


def remove_netns(name: str) -> None:
    from pyroute2 import netns as pnetns

    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except ProcessLookupError:
            pass
    pnetns.remove(name)


@pytest.fixture
def netns():
    """A throwaway network namespace (lo up), removed even when the test fails."""
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root")
    name = make_netns()
    try:
        yield name
    finally:
        remove_netns(name)


def run_tuner(*args, env=None, env_extra=None, timeout=120, check_rc=None):
    """`python -m tuner ARGS` as a real process (the tests' one runner: exit codes, kill -9
    at a crash point through env_extra, uid changes; stdin is /dev/null, so no terminal);
    returns the CompletedProcess.  env: the whole environment (default: ours), env_extra:
    variables added to it."""
    if env_extra:
        env = dict(os.environ if env is None else env, **env_extra)
    proc = subprocess.run([sys.executable, "-m", "tuner", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    if check_rc is not None:
        assert proc.returncode == check_rc, (proc.returncode, proc.stdout, proc.stderr)
    return proc


MARKER_VAR = "TUNER_TEST_MARKER"


def marked(marker: str, env=None) -> dict:
    """An environment (ours, or env) carrying marker.  A probe's orchestrator reads its
    settings from stdin, not its command line (a credential must not be in ps), so a
    marker given in a configuration (--timeout 37.0413) is in no command line of the
    orchestrator or its workers: they inherit their caller's environment instead."""
    return dict(os.environ if env is None else env, **{MARKER_VAR: marker})


def processes_with(marker: str) -> list:
    """PIDs whose command line holds marker (probe workers are forks: same command line),
    or whose environment has it as marked() puts it."""
    out = subprocess.run(["pgrep", "-f", "--", marker], capture_output=True, text=True).stdout
    found = {int(p) for p in out.split()}
    needle = f"{MARKER_VAR}={marker}".encode()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        found.add(int(name))
            except OSError:   # gone meanwhile, or a kernel thread's
                pass
    return sorted(found - {os.getpid()})


def wait_gone(marker: str, seconds: float = 5.0) -> list:
    """PIDs still holding marker after up to `seconds`: [] when every process has ended."""
    deadline = time.monotonic() + seconds
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def remove_cgroup(path: str, seconds: float = 10.0) -> None:
    """Remove a cgroup the test made: whatever is still inside is the test's own, so it is
    killed, then the (empty) directory can go (rmdir fails while tasks are exiting)."""
    import signal

    deadline = time.monotonic() + seconds
    while True:
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except FileNotFoundError:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.rmdir(path)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def pids_cgroup_root() -> str:
    """Where a child cgroup with a pids controller can be made: the v2 hierarchy when pids
    is enabled there, else the v1 pids hierarchy (this host mounts pids in v1)."""
    try:
        with open("/sys/fs/cgroup/cgroup.subtree_control") as f:
            if "pids" in f.read().split():
                return "/sys/fs/cgroup"
    except OSError:
        pass
    if os.path.exists("/sys/fs/cgroup/pids/pids.current") or os.path.isdir("/sys/fs/cgroup/pids"):
        return "/sys/fs/cgroup/pids"
    pytest.skip("no cgroup hierarchy with the pids controller")


@pytest.fixture
def pids_cgroup():
    """A pids cgroup of the test's own (a fork limit provoked there, never against the
    host's threads-max or pid_max), removed with whatever is left inside."""
    path = os.path.join(pids_cgroup_root(), f"tuner-t-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    try:
        yield path
    finally:
        remove_cgroup(path)


@pytest.fixture
def nofile_raised():
    """The measuring side holds as many sockets as the server may: soft RLIMIT_NOFILE up
    to the hard limit for the test, back after it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
