"""`tuner metrics`: the exposition equals the report, --listen re-reads the host at each
scrape, --textfile is atomic, bad options are one line and exit 2.

Everything here is real: prometheus_client's own parser reads the output, the HTTP
scrapes go to a real `tuner metrics --listen` on 127.0.0.1, and the connections whose
use the metrics must see are held by a real probe inside a throwaway namespace.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tuner import assess, metrics

from conftest import run_tuner

REPO = os.path.join(os.path.dirname(__file__), "..")


def parse(text: str) -> dict:
    """{metric name: {frozenset(labels.items()): value}} via prometheus_client's parser."""
    out: dict = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def one(samples: dict, name: str, **labels) -> float:
    return samples[name][frozenset(labels.items())]


def metric_figures(samples: dict) -> dict:
    """The report figures a scrape carries, keyed the way report_figures keys them."""
    out = {}
    for name, series in samples.items():
        if name in ("tuner_scrape_duration_seconds", "tuner_build_info"):
            continue
        for labels, value in series.items():
            out[(name, tuple(sorted(labels)))] = value
    return out


def report_figures(rep: dict) -> dict:
    """What `tuner report --json` says each exported series must be."""
    role = rep["role"]
    key = lambda name, **labels: (name, tuple(sorted(labels.items())))
    out = {key("tuner_capacity_connections", role=role): rep["max_connections"],
           key("tuner_binding_limit_info", role=role, knob=rep["binding"]): 1,
           key("tuner_connections_open", role=role): rep["sockets_now"]["connections"],
           key("tuner_kernel_memory_bytes_per_connection", estimate="idle"):
               rep["memory"]["idle_bytes_per_connection"],
           key("tuner_kernel_memory_bytes_per_connection", estimate="worst"):
               rep["memory"]["worst_bytes_per_connection"],
           key("tuner_connections_per_process", role=role): rep["processes"]["connections_per_process"],
           key("tuner_scrape_success"): 1}
    for r in rep["rows"]:
        if r["allows"] is not None:
            out[key("tuner_limit_connections", knob=r["name"], scope=r["scope"], caps=r["caps"])] = r["allows"]
        if r["utilization"] is not None:
            out[key("tuner_limit_utilization_ratio", knob=r["name"])] = r["utilization"]
        out[key("tuner_limit_status_info", knob=r["name"], status=r["status"])] = 1
    if rep["target"] is not None:
        out[key("tuner_target_reachable", target=str(rep["target"]))] = int(rep["reachable"])
    return out


def test_exposition_equals_the_report_of_the_same_snapshot():
    """One snapshot, two renderings: every figure the metrics carry is the report's."""
    snap = assess.snapshot()
    req = metrics.Request(target=1_000_000, role="server")
    samples = parse(metrics.exposition(req, snap=snap))
    rep = json.loads(json.dumps(assess.build(1_000_000, "server", snap=snap).to_dict()))
    assert metric_figures(samples) == report_figures(rep)
    assert 0 < one(samples, "tuner_limit_utilization_ratio", knob="fs.file-max") < 1
    assert set(samples) == set(metrics.HOST_METRIC_NAMES)


# Figures from counters that move between any two processes' reads, whoever runs them:
# MemAvailable (its allowance is MemAvailable / ~8 KiB) and fs.file-nr (a per-CPU
# approximate counter, percpu_counter_read_positive, that also counts each reader's own
# files). The same-snapshot test above pins them exactly; across processes they are
# checked to 1% (allowances) and 0.001 (a ratio: ~2,500 of fs.file-max's 2.47M files).
def _moving(key) -> bool:
    name, labels = key
    knob = dict(labels).get("knob")
    return name == "tuner_capacity_connections" or knob in ("fs.file-max", "MemAvailable")


def _close(key, got, want) -> bool:
    if key[0] == "tuner_limit_utilization_ratio":
        return abs(got - want) < 0.001
    return abs(got - want) <= want / 100


def test_cli_equals_report_json_taken_at_the_same_moment():
    """`tuner metrics` between two `tuner report --json` runs: each figure both reports
    agree on must be the metric's value (moving counters aside, checked close). Others'
    work can change anything, so retry until every figure held still once."""
    args = ["--target", "2M", "--role", "loopback"]
    unchecked = None
    for _ in range(20):
        before = report_figures(json.loads(run_tuner("report", *args, "--json").stdout))
        got = metric_figures(parse(run_tuner("metrics", *args, check_rc=0).stdout))
        after = report_figures(json.loads(run_tuner("report", *args, "--json").stdout))
        assert set(got) == set(before), set(got) ^ set(before)
        if unchecked is None:
            unchecked = set(before)
        for k in set(unchecked):
            if _moving(k):
                assert _close(k, got[k], before[k]), (k, got[k], before[k])
                unchecked.discard(k)
            elif before[k] == after[k]:
                assert got[k] == before[k], k
                unchecked.discard(k)
        if not unchecked:
            return
    pytest.fail(f"these never held still for three runs in a row: {sorted(unchecked)}")


def test_failed_read_is_a_failed_scrape_not_an_error():
    """A namespace deleted under a running --listen: that scrape says tuner_scrape_success 0
    and carries no report figures, rather than a 500 the scraper cannot explain."""
    text = metrics.exposition(metrics.Request(netns="tuner-no-such-ns"))
    samples = parse(text)
    assert one(samples, "tuner_scrape_success") == 0
    assert "tuner_capacity_connections" not in samples and "tuner_build_info" in samples


# ---------------------------------------------------------------- --listen

def _start_listen(*args):
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "metrics", "--listen", "127.0.0.1:0", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
    if not m:
        proc.kill()
        pytest.fail(f"no serving line: {line!r} {proc.stderr.read()!r}")
    return proc, f"http://127.0.0.1:{m.group(1)}/metrics"


def _scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200
        return parse(resp.read().decode())


def test_listen_rereads_the_host_at_each_scrape_while_a_probe_holds_connections(netns):
    n = 6000
    server, url = _start_listen("--netns", netns)
    probe = None
    try:
        first = _scrape(url)
        # The namespace is new: the only TCP sockets in it will be the probe's.
        assert one(first, "tuner_connections_open", role="loopback") == 0
        probe = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "probes", "-n", str(n),
                                  "--hold", "120", "-q"], cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            second = _scrape(url)
            if one(second, "tuner_connections_open", role="loopback") >= n or time.monotonic() > deadline:
                break
            assert probe.poll() is None, "the probe ended before holding its connections"
            time.sleep(0.5)
        assert one(second, "tuner_connections_open", role="loopback") >= n
        # 2n descriptors more in use host-wide: fs.file-max's utilization moved up.
        util = lambda s: one(s, "tuner_limit_utilization_ratio", knob="fs.file-max")
        assert util(second) > util(first)
        assert (one(second, "tuner_limit_connections", knob="fs.file-max", scope="host", caps="connections")
                < one(first, "tuner_limit_connections", knob="fs.file-max", scope="host", caps="connections"))
        probe.send_signal(signal.SIGTERM)
        probe.wait(timeout=60)
        deadline = time.monotonic() + 30
        while one(third := _scrape(url), "tuner_connections_open", role="loopback") > 0:
            assert time.monotonic() < deadline, "connections still counted after the probe ended"
            time.sleep(0.5)
        assert one(third, "tuner_scrape_success") == 1
    finally:
        if probe is not None and probe.poll() is None:
            probe.kill()
            probe.wait()
        server.send_signal(signal.SIGTERM)
        rc = server.wait(timeout=30)
    assert rc == 0, server.stderr.read()


# ---------------------------------------------------------------- a service's figures

SERVER = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(int(sys.argv[1]))          # and never accept: connects wait in the accept queue
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


def test_service_figures_follow_the_service_at_each_scrape(netns):
    """--port in a namespace: the server's descriptors, limit, backlog and accept queue as
    `tuner diagnose` reads them, the queue moving between scrapes, and a service that
    stops is a failed service scrape while the host's figures go on."""
    from tuner.host.netns import in_netns

    server = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", SERVER, "8"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    listen, url = _start_listen("--port", port, "--netns", netns)
    clients = []
    try:
        first = _scrape(url)
        pid = str(server.pid)
        diag = json.loads(run_tuner("diagnose", "--port", port, "--netns", netns, "--json").stdout)
        [proc] = diag["processes"]
        pid = str(proc["pid"])   # ip netns exec runs the server as its own child or itself
        assert one(first, "tuner_process_open_fds", pid=pid) == proc["fds"]
        assert one(first, "tuner_process_max_fds", pid=pid) == proc["nofile_soft"]
        assert one(first, "tuner_listener_backlog", address="127.0.0.1", port=str(port)) == 8
        assert one(first, "tuner_listener_queued", address="127.0.0.1", port=str(port)) == 0
        assert one(first, "tuner_service_capacity_connections") == diag["max_connections"]
        assert one(first, "tuner_service_scrape_success") == 1
        with in_netns(netns):
            clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        second = _scrape(url)
        assert one(second, "tuner_listener_queued", address="127.0.0.1", port=str(port)) == 3
        # Completed but not accepted: in the queue, not yet held by the service.
        assert one(second, "tuner_service_connections") == diag["connections"]["held"]
        server.kill()
        server.wait(timeout=10)
        third = _scrape(url)
        assert one(third, "tuner_service_scrape_success") == 0
        assert "tuner_process_open_fds" not in third
        assert one(third, "tuner_scrape_success") == 1 and "tuner_capacity_connections" in third
    finally:
        for c in clients:
            c.close()
        if server.poll() is None:
            server.kill()
            server.wait()
        listen.send_signal(signal.SIGTERM)
        rc = listen.wait(timeout=30)
    assert rc == 0
    assert "service scrape failed" in listen.stderr.read()


@pytest.mark.parametrize("args, message", [
    (["--pid", "1", "--port", "80"], "one of --pid PID, --port PORT or --unit NAME"),
    (["--port", "1"], "nothing listens on TCP port 1"),
])
def test_bad_service_is_one_line_exit_2(args, message):
    proc = run_tuner("metrics", *args)
    _assert_refused(proc, message)


# ---------------------------------------------------------------- --textfile

WRITER = """
import sys
from tuner import metrics
for _ in range(int(sys.argv[2])):
    metrics.write_textfile(sys.argv[1], metrics.Request())
"""


def test_textfile_is_replaced_atomically(tmp_path):
    """A reader polling the file while another process rewrites it again and again never
    sees a partial file: each read parses and ends with the last metric."""
    path = tmp_path / metrics.TEXTFILE_NAME
    proc = run_tuner("metrics", "--textfile", tmp_path, check_rc=0)
    assert proc.stdout == "" and path.exists()
    assert oct(path.stat().st_mode & 0o777) == oct(0o644 & ~_umask())
    last = metrics.METRICS[-1].name
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "300"], cwd=REPO)
    reads, versions = 0, set()
    try:
        while writer.poll() is None:
            text = path.read_text()
            samples = parse(text)
            assert last in samples, f"partial file read:\n{text[-300:]}"
            assert set(samples) >= {"tuner_capacity_connections", "tuner_limit_connections"}
            versions.add(one(samples, "tuner_scrape_duration_seconds"))
            reads += 1
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0
    # The reader really raced the writer: many reads, of many different writes.
    assert reads > 50 and len(versions) > 10, (reads, len(versions))
    assert os.listdir(tmp_path) == [metrics.TEXTFILE_NAME], "a temporary file was left behind"


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


# ---------------------------------------------------------------- bad input

def _assert_refused(proc, message):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tuner: error:"), proc.stderr
    assert message in lines[0], lines[0]
    assert proc.stdout == ""


def test_listen_on_a_port_in_use_is_exit_2():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _assert_refused(run_tuner("metrics", "--listen", f"127.0.0.1:{port}", timeout=30),
                        "cannot listen there")


@pytest.mark.parametrize("listen, message", [
    (":9858", "has no address"),
    ("9858", "give ADDR:PORT"),
    ("localhost:9858", "not an IP address"),
    ("127.0.0.1:65536", "give ADDR:PORT"),
    ("127.0.0.1:http", "give ADDR:PORT"),
    ("192.0.2.1:9858", "cannot listen there"),   # not an address of this host: EADDRNOTAVAIL
])
def test_bad_listen_is_one_line_exit_2(listen, message):
    _assert_refused(run_tuner("metrics", "--listen", listen, timeout=30), message)


def test_bad_textfile_dirs_are_one_line_exit_2(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "file").write_text("")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    cases = [(tmp_path / "missing", "no such directory"), (tmp_path / "link", "is a symlink"),
             (tmp_path / "file", "is not a directory"), (shared, "writable by other users")]
    for path, message in cases:
        _assert_refused(run_tuner("metrics", "--textfile", path), message)
    assert sorted(os.listdir(real)) == [] and sorted(os.listdir(shared)) == []


def test_textfile_on_a_read_only_filesystem_is_exit_2(tmp_path):
    """A read-only bind mount, private to a throwaway mount namespace."""
    if os.geteuid() != 0:
        pytest.skip("a mount namespace needs root")
    d = tmp_path / "ro"
    d.mkdir(mode=0o755)
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount --bind {d} {d} && mount -o remount,bind,ro {d} && "
         f"exec {sys.executable} -m tuner metrics --textfile {d}"],
        capture_output=True, text=True, timeout=60, cwd=REPO)
    _assert_refused(proc, "not writable")
    assert os.listdir(d) == []


@pytest.mark.parametrize("args, message", [
    (["--textfile", "/tmp", "--listen", "127.0.0.1:0"], "give one"),
    (["--netns", "tuner-no-such-ns"], "no network namespace"),
    (["--role", "router"], "unknown role"),
    (["--target", "lots"], "not a whole number"),
])
def test_other_bad_input_is_one_line_exit_2(args, message):
    _assert_refused(run_tuner("metrics", *args), message)


# ---------------------------------------------------------------- tuner probe --textfile

def test_probe_textfile_carries_the_runs_figures(netns, tmp_path):
    """The textfile says what the same run's --json says."""
    proc = run_tuner("probe", "--netns", netns, "-n", "3000", "--json", "--textfile", tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert os.listdir(tmp_path) == [metrics.PROBE_TEXTFILE_NAME]
    samples = parse((tmp_path / metrics.PROBE_TEXTFILE_NAME).read_text())
    assert one(samples, "tuner_probe_success") == 1
    assert one(samples, "tuner_probe_connections_requested") == 3000
    assert one(samples, "tuner_probe_connections_verified") == result["verified"] == 3000
    assert one(samples, "tuner_probe_connections_per_second") == result["rate_per_s"]
    assert one(samples, "tuner_probe_establish_seconds") == result["seconds_establish"]
    assert one(samples, "tuner_probe_user_memory_bytes_per_connection") == result["user_bytes_per_conn"]
    if result["kernel_figures_reliable"]:
        assert one(samples, "tuner_probe_kernel_memory_bytes_per_connection") == result["kernel_slab_bytes_per_conn"]
    else:
        assert "tuner_probe_kernel_memory_bytes_per_connection" not in samples
    assert "tuner_probe_stopped_by_info" not in samples
    assert abs(one(samples, "tuner_probe_last_run_timestamp_seconds") - time.time()) < 120


def test_probe_textfile_records_a_run_that_fell_short(netns, tmp_path):
    """A probe stopped by a limit still writes its figures, naming the limit."""
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw",
                    "net.ipv4.ip_local_port_range=40000 40099"], check=True)
    proc = run_tuner("probe", "--netns", netns, "-n", "500", "--source-net", "none", "--force",
                     "--json", "--textfile", tmp_path, timeout=180)
    assert proc.returncode == 3, proc.stderr
    result = json.loads(proc.stdout)
    samples = parse((tmp_path / metrics.PROBE_TEXTFILE_NAME).read_text())
    assert one(samples, "tuner_probe_success") == 0
    assert one(samples, "tuner_probe_connections_verified") == result["verified"] < 500
    assert samples["tuner_probe_stopped_by_info"] == {frozenset({"limit": result["stopped_by"]}.items()): 1}


def test_probe_bad_textfile_is_refused_before_probing(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    _assert_refused(run_tuner("probe", "-n", "10", "--textfile", shared), "writable by other users")
    _assert_refused(run_tuner("probe", "-n", "10", "--textfile", tmp_path / "missing"), "no such directory")
    _assert_refused(run_tuner("probe", "--serve", "127.0.0.1:0", "--textfile", tmp_path),
                    "--textfile does not apply to --serve")
    assert os.listdir(shared) == []


# ---------------------------------------------------------------- documentation

def test_readme_and_man_page_carry_the_generated_metric_table():
    with open(os.path.join(REPO, "docs", "metrics.md")) as f:
        assert metrics.markdown_table() in f.read(), \
            "docs/metrics.md's table is stale: paste python -c 'from tuner import metrics; print(metrics.markdown_table())'"
    with open(os.path.join(REPO, "man", "tuner-metrics.1")) as f:
        page = f.read()
    for m in metrics.METRICS:
        assert m.name.replace("-", "\\-") in page
    with open(os.path.join(REPO, "docs", "metrics.md")) as f:
        assert metrics.markdown_table(metrics.PROBE_METRICS) in f.read()
    with open(os.path.join(REPO, "man", "tuner-probe.1")) as f:
        page = f.read()
    for m in metrics.PROBE_METRICS:
        assert m.name in page


def test_application_cap_utilization_and_dead_connections(real_server):
    """metrics --port of a real nginx: its own cap (1 worker x worker_connections 100, 3 of
    them its two listeners and channel), how much of it the connections held use, and the
    CLOSE_WAIT sockets it holds (none: nginx closes what its peers close)."""
    from apphold import PARTIAL

    srv = real_server("nginx", workers=1, worker_connections=100, nofile=4096)
    listen, url = _start_listen("--port", srv.port)
    clients = []
    try:
        for _ in range(40):
            clients.append(srv.connect())
            clients[-1].sendall(PARTIAL)
        deadline = time.monotonic() + 10
        while one(s := _scrape(url), "tuner_service_connections") < 40:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        cap = s["tuner_application_cap_connections"]
        [(labels, value)] = cap.items()
        assert value == 97 and dict(labels) == {"app": "nginx", "setting": "worker_connections 100 x 1 worker",
                                                "sureness": "read"}
        assert one(s, "tuner_application_utilization_ratio", app="nginx") == pytest.approx(40 / 97)
        assert one(s, "tuner_service_peer_closed_sockets") == 0
    finally:
        for c in clients:
            c.close()
        listen.kill()
        listen.wait()


def test_probe_textfile_exports_the_services_measured_cost(tmp_path, nofile_raised):
    """A step run's `service` (what a connection costs the probed service and where its
    memory stops it, tuner.cost over rows sampled from a real server whose cost is known
    by construction) is exported by the probe's textfile (issue 26); a run without one
    exports neither series."""
    from test_cost import rows_at
    from test_servicecost import Costly
    from tuner import cost
    from tuner.host import servicecost

    srv = Costly(64 << 10)
    try:
        sampler = servicecost.Sampler(srv.port)
        service = cost.project(rows_at(srv, sampler, (0, 40, 80)), sampler.roots)
    finally:
        srv.close()
    assert service["bytes_per_connection"]["application"] >= 0.95 * (64 << 10)   # its buffer, measured
    path = metrics.write_probe_textfile(str(tmp_path), {"ok": True, "service": service})
    samples = parse(open(path).read())
    for part in ("application", "kernel"):
        assert one(samples, "tuner_probe_service_memory_bytes_per_connection", part=part) == \
            service["bytes_per_connection"][part]
    assert one(samples, "tuner_probe_service_projected_connections", limit=service["binding"]) == \
        service["projected_max"]
    path = metrics.write_probe_textfile(str(tmp_path), {"ok": True})
    samples = parse(open(path).read())
    assert "tuner_probe_service_memory_bytes_per_connection" not in samples
    assert "tuner_probe_service_projected_connections" not in samples
