"""The connection probe against the real kernel: verified runs, each failure class
provoked for real, and clean ends.

Where a knob has to be lowered (port range, somaxconn) the probe runs inside a
throwaway network namespace (conftest's `netns`), which also gives sockstat a
baseline of zero that no other activity on the host can disturb.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from probes import ProbeConfig, ProbeConfigError, ProbeResult, run_probe
from probes import classify, kernel
from probes.launch import PACKAGE_ROOT
from conftest import MARKER_VAR, marked, processes_with, wait_gone

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the probe tests use network namespaces")


def sysctl_in(ns: str, **values) -> None:
    args = [f"{k.replace('__', '.')}={v}" for k, v in values.items()]
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *args], check=True)


def tcp_inuse(ns: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/sockstat"], check=True,
                         capture_output=True, text=True).stdout
    fields = next(line for line in out.splitlines() if line.startswith("TCP:")).split()
    return int(fields[fields.index("inuse") + 1])


def probe_cmd(*args) -> list:
    return [sys.executable, "-m", "probes", *map(str, args)]


def probe_env() -> dict:
    return dict(os.environ, PYTHONPATH=PACKAGE_ROOT)


def test_verifies_every_connection_and_leaves_nothing_behind(netns, monkeypatch):
    monkeypatch.setenv(MARKER_VAR, "37.0413")   # the orchestrator and its workers inherit it
    progress = []
    plans = []
    result = run_probe(ProbeConfig(connections=20000, hold=0.3, timeout=37.0413, netns=netns),
                       on_progress=lambda *a: progress.append(a), on_plan=plans.append)
    assert result.ok and result.stopped_by is None and result.exit_code == 0, result.errors
    assert result.verified == result.established == result.attempted == 20000
    assert result.failed == 0 and result.mismatches == 0 and result.errors == []
    # 20000 connections need 40000 descriptors: more than one worker under a 20000 limit.
    assert result.workers == plans[0]["workers"] >= 2
    assert result.per_worker * 2 + 64 <= result.nofile
    assert 0 < result.seconds_establish <= result.seconds_total < 37.0413
    assert result.seconds_exchange >= 0 and result.rate_per_s > 1000
    assert 0.25 <= result.seconds_hold < 2
    # A TCP socket pair costs a few KB of slab; the workers' heap far less per connection.
    assert 2000 < result.kernel_slab_bytes_per_conn < 40000
    assert result.kernel_figures_reliable and result.kernel_figures_note is None
    assert 0 < result.user_bytes_per_conn < 4096
    assert result.peak_sockets >= 2 * 20000
    assert result.sockets_baseline == 0 and result.sockets_after == 0
    assert tcp_inuse(netns) == 0
    phases = [p[3] for p in progress]
    assert "hold" in phases and phases[-1] == "done" and progress[-1][1] == 20000
    assert wait_gone("37.0413") == []
    # The dict form is what `tuner probe --json` prints: JSON-able, same figures back.
    again = ProbeResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result


def test_standalone_json_in_the_host_namespace():
    before = kernel.sockstat()["tcp_inuse"]
    proc = subprocess.run(probe_cmd("--connections", 2000, "--json", "--quiet", "--timeout", 31.0419),
                          capture_output=True, text=True, env=probe_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] and result["verified"] == 2000 and result["workers"] == 1
    assert result["peak_sockets"] >= before + 4000
    assert wait_gone("31.0419") == []


def test_low_rlimit_nofile_in_a_worker_is_emfile():
    result = run_probe(ProbeConfig(connections=3000, workers=1, worker_nofile=1024, timeout=33.0421))
    assert not result.ok and result.exit_code == 3
    assert result.stopped_by == "RLIMIT_NOFILE"
    first = result.errors[0]
    assert first.errno == "EMFILE" and first.limit == "RLIMIT_NOFILE" and first.count >= 1
    assert "nofile limit" in first.hint and first.fix is None  # the numbers are tuner's, from the knob table
    # It stopped short, but what it did open it verified.
    assert 0 < result.verified == result.established < 1024 // 2 + 1
    assert wait_gone("33.0421") == []


def test_one_port_range_is_eaddrnotavail_unless_sources_are_spread(netns):
    sysctl_in(netns, net__ipv4__ip_local_port_range="40000 40000")
    result = run_probe(ProbeConfig(connections=2000, source_net="none", netns=netns, timeout=20))
    assert not result.ok and result.stopped_by == "net.ipv4.ip_local_port_range"
    first = result.errors[0]
    assert (first.side, first.op, first.errno) == ("client", "connect", "EADDRNOTAVAIL")
    assert "ip_local_port_range" in first.hint
    assert 1 <= result.verified < 2000
    # The same namespace, sources spread over 127.0.0.0/8: one port per address is enough.
    spread = run_probe(ProbeConfig(connections=2000, netns=netns, timeout=20))
    assert spread.ok and spread.verified == 2000
    assert tcp_inuse(netns) == 0


def test_tiny_somaxconn_and_slow_accept_is_backlog_overflow(netns):
    sysctl_in(netns, net__core__somaxconn=4)
    result = run_probe(ProbeConfig(connections=2000, accept_pause=0.05, timeout=2, netns=netns))
    assert not result.ok and result.stopped_by == "net.core.somaxconn"
    assert result.listen_overflows > 0
    first = result.errors[0]
    assert first.errno == "ETIMEDOUT" and "somaxconn" in first.hint
    assert result.verified == result.established < 2000
    assert tcp_inuse(netns) == 0


def test_sigint_mid_ramp_ends_every_worker_and_socket(netns):
    marker = "29.0423"
    proc = subprocess.Popen(["ip", "netns", "exec", netns,
                             *probe_cmd("--jsonl", "--connections", 60000, "--rate", 30000,
                                        "--timeout", marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=probe_env())
    try:
        for line in proc.stdout:
            event = json.loads(line)
            if event["event"] == "progress" and event["established"] >= 5000:
                break
        assert len(processes_with(marker)) >= 2  # orchestrator and workers are up
        proc.send_signal(signal.SIGINT)
        events = [json.loads(line) for line in proc.stdout]
        assert proc.wait(timeout=20) == 128 + signal.SIGINT
    finally:
        if proc.poll() is None:
            proc.kill()
    result = ProbeResult.from_dict(events[-1]["result"])
    assert result.interrupted and result.stopped_by == "SIGINT" and not result.ok
    assert 5000 <= result.established < 60000 and result.verified == result.established
    assert result.sockets_after == 0 and tcp_inuse(netns) == 0
    assert wait_gone(marker) == []


def test_killed_caller_takes_the_probe_down(netns):
    """SIGKILL the process that called run_probe mid-hold: the orchestrator and workers
    follow it (PR_SET_PDEATHSIG) and every socket closes."""
    marker = "28.0425"
    code = (f"import sys; from probes import ProbeConfig, run_probe\n"
            f"def seen(e, v, r, phase):\n"
            f"    if phase == 'hold': print('holding', flush=True)\n"
            f"run_probe(ProbeConfig(connections=5000, hold=60, timeout={marker}, netns={netns!r}), seen)\n")
    caller = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=marked(marker, probe_env()))
    try:
        assert caller.stdout.readline().strip() == "holding"
        assert tcp_inuse(netns) >= 10000
        caller.kill()
        caller.wait(timeout=5)
        assert wait_gone(marker) == []
        deadline = time.monotonic() + 5
        while tcp_inuse(netns) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tcp_inuse(netns) == 0
    finally:
        if caller.poll() is None:
            caller.kill()


def test_listener_port_inside_the_port_range_is_refused():
    low, high = kernel.port_range()
    with pytest.raises(ProbeConfigError, match="ip_local_port_range"):
        run_probe(ProbeConfig(connections=100, port=low + 1))
    with pytest.raises(ProbeConfigError):
        run_probe(ProbeConfig(connections=0))


def test_errno_classification_names_the_knob():
    """The knob table's signs decide: an errno of a call, counters that rose, a table
    that is full; the words name the knob."""
    assert classify.limit_for("client", "socket", 24, {}) == "RLIMIT_NOFILE"          # EMFILE
    assert classify.limit_for("client", "socket", 23, {}) == "fs.file-max"            # ENFILE
    assert classify.limit_for("client", "bind", 99, {}) == "source addresses"         # EADDRNOTAVAIL
    assert classify.limit_for("client", "connect", 99, {}) == "net.ipv4.ip_local_port_range"
    assert classify.limit_for("client", "connect", 98, {}) == "net.ipv4.ip_local_port_range"  # EADDRINUSE
    assert classify.limit_for("client", "socket", 105, {"TCPMemoryPressures": 3}) == "net.ipv4.tcp_mem"
    assert classify.limit_for("client", "socket", 12, {}) == "memory"                 # ENOMEM
    assert classify.limit_for("client", "connect", 111, {}) == classify.PEER         # ECONNREFUSED
    assert classify.timeout_limit({}, {"conntrack_count": 262144, "conntrack_max": 262144}) \
        == "net.netfilter.nf_conntrack_max"
    assert classify.timeout_limit({}, {"conntrack_count": 1000, "conntrack_max": 262144}) == classify.TIMEOUT
    # An overflowing accept queue explains a timeout before memory pressure does.
    assert classify.timeout_limit({"ListenDrops": 2, "TCPMemoryPressures": 1}, {}) == "net.core.somaxconn"
    assert classify.timeout_limit({"TCPMemoryPressures": 1}, {}) == "net.ipv4.tcp_mem"
    assert classify.timeout_limit({}, {}) == classify.TIMEOUT
    assert "fs.file-max" in classify.hint("fs.file-max")  # the knob; its value is the table's
    assert "pids.max caps the tasks" in classify.hint("pids.max")
    assert "RLIMIT_NPROC caps the tasks" in classify.hint(classify.NPROC)
    assert "--alias-net" in classify.hint("net.ipv4.ip_local_port_range", role="client")


@pytest.mark.parametrize("sig, json_out", [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_signal_to_tuner_probe_mid_hold_prints_the_partial_result(netns, sig, json_out):
    """SIGTERM (a service manager, kill) or SIGINT to `tuner probe` itself, not its
    group: it is passed on, the workers end, and the summary still comes out."""
    marker = "26.0427" if sig == signal.SIGTERM else "26.0429"
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "probe", "-n", "2000", "--hold", "20",
                             "--netns", netns, "--timeout", marker, *(["--json"] if json_out else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=probe_env())
    try:
        deadline = time.monotonic() + 20
        while tcp_inuse(netns) < 4000:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err
    if json_out:
        result = json.loads(out)
        assert result["interrupted"] and result["stopped_by"] == sig.name
        assert result["verified"] == 2000 and result["sockets_after"] == 0
    else:
        assert f"stopped by {sig.name} (interrupted)" in out
        assert "2,000 of 2,000" in out
    assert wait_gone(marker) == []
    assert tcp_inuse(netns) == 0


def test_slab_growth_other_activity_drowned_is_marked_unreliable():
    """/proc/meminfo Slab is host-wide (a namespace does not isolate it): a growth that is
    negative, or below a quarter of the sockets' TCP objects alone, is not the probe's."""
    size = kernel.tcp_object_size()
    assert 1024 <= size <= 8192  # objsize of the TCP cache (or the fallback)
    # The review's case: 1,000 connections (2,000 sockets), Slab 21 MB smaller at the peak.
    reliable, why = kernel.judge_slab(-21_073_000, 2000, size)
    assert not reliable and "shrank" in why and "other activity" in why
    reliable, why = kernel.judge_slab(int(0.2 * 2000 * size), 2000, size)
    assert not reliable and "25%" in why
    assert kernel.judge_slab(2000 * 4 * size, 2000, size) == (True, None)
    assert kernel.judge_slab(0, 0, size)[0] is False  # nothing held: nothing measured
    # How the verdict is shown: test_probe_cli's test_unmeasurable_kernel_figures_are_not_printed_as_numbers.


def test_one_fast_port_share_for_plans_and_warnings(monkeypatch):
    """connect() scans the even ports first: where sockets cannot carry their own port
    range (before Linux 6.3) every plan fills half of each source address's usable port
    range (the constant tuner.knobs plans with too), 90% where they can."""
    from probes import config, connect
    assert kernel.own_port_range()                 # this kernel is 6.18
    assert connect.fast_capacity(1) >= 0.9 * (kernel.port_range()[1] - kernel.port_range()[0]) * 0.99
    monkeypatch.setattr(kernel, "own_port_range", lambda: False)
    monkeypatch.setattr(kernel, "port_range", lambda: (40000, 40099))
    monkeypatch.setattr(kernel, "reserved_ports", lambda low, high: 0)
    plan = config.make_plan(ProbeConfig(connections=1000, workers=1, port=20000), nofile=20000)
    assert plan.addresses_per_worker == 20          # 1000 / (100 ports x 0.5)
    assert connect.fast_capacity(3) == 150          # short ranges too: no special case
    monkeypatch.setattr(kernel, "reserved_ports", lambda low, high: 60)
    assert connect.fast_capacity(1) == 20           # reserved ports are not connect()'s


def test_workers_that_cannot_hold_their_share_are_refused_up_front():
    from probes import config
    with pytest.raises(ProbeConfigError) as refused:
        config.make_plan(ProbeConfig(connections=30000, workers=2, port=20000), nofile=20000)
    message = str(refused.value)
    assert "--workers 2" in message and "15,000 connections per worker need 30,064" in message
    assert "RLIMIT_NOFILE is 20,000" in message and "--workers 4 or more, or --workers auto" in message
    with pytest.raises(ProbeConfigError, match="--per-worker 12000"):
        config.make_plan(ProbeConfig(connections=30000, per_worker=12000, port=20000), nofile=20000)
    assert config.make_plan(ProbeConfig(connections=30000, workers=4, port=20000), nofile=20000).fits
    # Through the CLI: bad input, one line, nothing opened.
    proc = subprocess.run([sys.executable, "-m", "tuner", "probe", "-n", "30000", "--workers", "1"],
                          capture_output=True, text=True, env=probe_env(), timeout=60)
    assert proc.returncode == 2 and "--workers auto" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""


@pytest.mark.parametrize("both", [False, True])
def test_a_reader_that_goes_away_is_no_traceback(netns, both):
    """`python -m probes | head -1`: the summary meets a closed pipe; the run's exit status
    stands, without a BrokenPipeError traceback. With stderr into the same pipe (`2>&1 |
    head -1`) the progress lines meet it mid-run: it ends as SIGPIPE would (141), and its
    workers with it."""
    marker = f"47.042{int(both)}"
    proc = subprocess.Popen(["ip", "netns", "exec", netns, *probe_cmd("-n", 3000, "--timeout", marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT if both else subprocess.PIPE,
                            env=probe_env())
    proc.stdout.readline() if both else None   # the plan line is out: the run is under way
    proc.stdout.close()
    err = b"" if both else proc.stderr.read()
    assert proc.wait(timeout=120) == (128 + signal.SIGPIPE if both else 0), err
    assert b"Traceback" not in err and b"BrokenPipe" not in err
    assert wait_gone(marker) == []


def _open_pairs_meanwhile(stop, held, begin=lambda: True):
    """Loopback connection pairs opened in this process's (the host's) namespace, 200 every
    20 ms from when `begin()` says until told to stop: other work on the host that a probe
    in a namespace shares Slab with."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    held.append(listener)
    port = listener.getsockname()[1]
    while not stop.is_set() and not begin():
        time.sleep(0.005)
    while not stop.is_set() and len(held) < 12000:
        for _ in range(100):
            c = socket.create_connection(("127.0.0.1", port))
            held += [c, listener.accept()[0]]
        time.sleep(0.02)


def _tcp_inuse(pid: int) -> int:
    """TCP sockets in use in the network namespace of process `pid` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    return int(line.split()[2])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def test_other_sockets_opening_during_a_run_make_its_kernel_figures_unmeasurable(netns):
    """Slab is host-wide: sockets opened elsewhere on the host during a loopback probe
    inflate its growth, which the quarter floor never catches (issue 28: 2.05x the
    estimate printed as measured).  The host's TCP objects growing past the probe's own
    sockets make the figure 'not measurable', in the JSON and the text alike."""
    import threading

    # The opener starts once the probe's listener is up in its namespace (its baseline is
    # read just before), and the probe opens at --rate 500, so the others' sockets open
    # between the probe's two readings however slowly this machine starts the probe.
    # A process parked in the namespace shows its sockstat (ip netns exec execs in place).
    watcher = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "300"])
    stop, held, probe = threading.Event(), [], []
    begin = lambda: bool(probe) and _tcp_inuse(watcher.pid) > 0
    opener = threading.Thread(target=_open_pairs_meanwhile, args=(stop, held, begin), daemon=True)
    opener.start()
    try:
        probe.append(subprocess.Popen([sys.executable, "-m", "tuner", "probe", "--netns", netns, "-n", "1000",
                                       "--rate", "500", "--json", "-q"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        out, err = probe[0].communicate(timeout=120)
    finally:
        stop.set()
        opener.join(30)
        for s in held:
            s.close()
        if probe and probe[0].poll() is None:
            probe[0].kill()
        watcher.kill()
        watcher.wait()
    assert probe[0].returncode == 0, err
    r = json.loads(out)
    assert len(held) > 2000   # the opener did open sockets meanwhile
    assert r["kernel_figures_reliable"] is False and "other sockets opened on the host" in r["kernel_figures_note"]
    # The same judge, alone: growth within the probe's own sockets is the probe's.
    base, after = {"tcp_objects": 100}, {"tcp_objects": 100 + 2000}
    assert kernel.others_opened(base, after, 2000) is None
    assert "grew by 6,000" in kernel.others_opened(base, {"tcp_objects": 6100}, 2000)
