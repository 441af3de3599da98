"""Where memory stops a service (tuner/cost.py, issue 26), tested for real: a server
whose cost per connection is known by construction (tests/servers/costly.py) runs inside
a cgroup v1 memory cgroup with a limit made here (removed in teardown); it is sampled at
a few held counts below the limit, the projection is made, then the same server is
loaded by a plain client until the kernel's OOM killer ends it: the projection must be
within 10% of where it really failed, naming the cgroup limit."""
from __future__ import annotations

import os
import time
import uuid

import pytest

from test_servicecost import Costly
from tuner import cost
from tuner.host import servicecost

V1_MEMORY = "/sys/fs/cgroup/memory"
LIMIT = 96 << 20
BUFFER = 256 << 10


def rows_at(srv: Costly, sampler: servicecost.Sampler, counts) -> list:
    rows = []
    for count in counts:
        assert srv.hold(count) == count
        s = sampler.sample()
        rows.append({"connections": count, "service_memory_bytes": s.memory_bytes,
                     "service_kernel_bytes": s.kernel_bytes, "service_buffer_bytes": s.socket_buffer_bytes})
    return rows


def test_fit_is_least_squares_with_r2():
    f = cost.fit([(0, 100), (100, 300), (200, 500), (300, 700)])
    assert (f.slope, f.intercept, f.r2, f.points) == (2.0, 100.0, 1.0, 4)
    noisy = cost.fit([(0, 0), (100, 250), (200, 350), (300, 650)])
    assert 0.9 < noisy.r2 < 1.0 and abs(noisy.slope - 2.05) < 1e-9   # sxy 102,500 / sxx 50,000
    assert cost.fit([(5, 1), (6, 2)]) is None          # a span of one connection says nothing
    assert cost.fit([(0, 7)]) is None


def test_heap_slope_starts_past_the_young_generation_and_needs_growth_past_it():
    MiB = 1 << 20
    # A young generation of 32 MiB filling over the first rows, then 1 MiB per 10 connections.
    heap = {0: 6, 100: 30, 200: 40, 300: 50, 400: 60, 500: 70, 600: 80}
    rows = [{"connections": n, "service_heap_bytes": mb * MiB} for n, mb in heap.items()]
    f = cost.heap_fit(rows, 32 * MiB)
    assert f.points == 5 and f.slope == MiB / 10       # from 200 (6 + 32 <= 40) on
    assert cost.heap_fit(rows[:6], 32 * MiB) is None    # 40 -> 70 MiB: within the young generation
    assert cost.heap_fit([dict(r, service_heap_bytes=None) for r in rows], 32 * MiB) is None
    assert cost.heap_fit(rows, 0).points == 7


def test_a_run_file_with_a_figure_that_is_not_a_number_is_not_a_step_run(tmp_path):
    """diagnose --cost reads numbers only: the optional heap and buffer figures too, and
    the application's own count (service_own) as the probe writes it; a malformed one
    had reached own_limits as an internal error."""
    import json

    row = {"connections": 10, "service_memory_bytes": 1, "service_kernel_bytes": 1}
    bad_own = ["x", ["x"], [[1]], [{"kind": "clients", "used": "q"}], [{"kind": 5, "used": 1}]]
    for extra in ({"service_heap_bytes": "1e9"}, {"service_buffer_bytes": [1]}, {"service_heap_bytes": True},
                  *({"service_own": own} for own in bad_own)):
        path = tmp_path / "run.json"
        path.write_text(json.dumps({"steps": [row, dict(row, **extra)]}))
        with pytest.raises(ValueError, match="not a step run"):
            cost.rows_of_run(str(path))
    own = [{"name": "maxmemory-clients 4.0 MiB", "kind": "clients", "bytes": 4 << 20, "source": "s", "does": "d",
            "used": 1800, "connections": 1, "evicted": None}]
    path.write_text(json.dumps({"steps": [row, dict(row, service_heap_bytes=None, service_buffer_bytes=3,
                                                    service_own=own)]}))
    assert len(cost.rows_of_run(str(path))) == 2


def test_a_run_file_in_a_directory_others_can_write_is_refused(tmp_path):
    """Root acts on a run file (rule 8): the directories on the way are checked as the
    file is, since whoever may write one could swap in another root-owned file of that
    name; a sticky directory (/tmp's kind) is fine."""
    import json

    doc = json.dumps({"steps": [{"connections": n, "service_memory_bytes": n, "service_kernel_bytes": n}
                                for n in (10, 20)]})
    for mode, refused in ((0o777, True), (0o1777, False), (0o755, False)):
        where = tmp_path / f"d{mode:o}"
        where.mkdir()
        where.chmod(mode)
        (where / "run.json").write_text(doc)
        if refused:
            with pytest.raises(ValueError, match="directory only root"):
                cost.rows_of_run(str(where / "run.json"))
        else:
            assert len(cost.rows_of_run(str(where / "run.json"))) == 2


def test_without_a_slope_the_memory_row_is_unknown_not_zero():
    d = cost.project([{"connections": 10, "service_memory_bytes": 1 << 20, "service_kernel_bytes": 0}],
                     [os.getpid()])
    assert d["projected_max"] is None and d["binding"] is None
    assert d["bytes_per_connection"] == {"application": None, "kernel": None, "heap": None}
    assert "unknown" in d["sentence"]


@pytest.fixture
def memory_cgroup():
    if not os.path.exists(os.path.join(V1_MEMORY, "memory.limit_in_bytes")):
        pytest.skip("no cgroup v1 memory controller mounted here")
    path = os.path.join(V1_MEMORY, f"tuner-cost-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    try:
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
            f.write(str(LIMIT))
        yield path
    finally:
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.1)      # the killed server's pages are still being freed
        assert not os.path.exists(path)


def test_cgroup_limit_projection_within_10_percent_of_the_oom_kill(memory_cgroup, nofile_raised):
    procs = os.path.join(memory_cgroup, "cgroup.procs")
    srv = Costly(BUFFER, argv_prefix=("sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh"))
    try:
        sampler = servicecost.Sampler(srv.port)
        assert sampler.roots == [srv.proc.pid]
        rows = rows_at(srv, sampler, (0, 40, 80, 120))
        d = cost.project(rows, sampler.roots)
        app = d["bytes_per_connection"]["application"]
        assert BUFFER <= app <= BUFFER * 1.03, d
        assert d["binding"] == "memory.limit_in_bytes", d
        assert d["memory_limit"]["bytes"] == LIMIT
        assert d["memory_limit"]["source"] == os.path.join(memory_cgroup, "memory.limit_in_bytes")
        assert "its cgroup memory limit binds first" in d["sentence"]
        projected = d["projected_max"]
        failed_at = srv.hold(10 * projected)       # until the OOM killer stops it
        srv.proc.wait(timeout=30)
        assert srv.proc.returncode == -9, "the server was not killed"
        print(f"projected {projected}, killed at {failed_at}: {d['sentence']}")
        assert abs(projected - failed_at) <= 0.10 * failed_at, (projected, failed_at, d["sentence"])
    finally:
        srv.close()


def test_diagnose_with_a_step_runs_cost_adds_the_memory_row_that_binds(memory_cgroup, nofile_raised, tmp_path):
    """tuner diagnose --cost FILE (a step run's rows) adds the memory row to its minimum:
    in a 96 MiB cgroup a server spending 256 KiB per connection stops on memory long
    before its descriptors, and diagnose says so, with the same projection the run's rows
    give (issue 26).  A file that is not a step run is one line, exit 2."""
    import json
    import subprocess
    import sys

    procs = os.path.join(memory_cgroup, "cgroup.procs")
    srv = Costly(BUFFER, argv_prefix=("sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh"))
    try:
        sampler = servicecost.Sampler(srv.port)
        rows = rows_at(srv, sampler, (0, 40, 80, 120))
        run = tmp_path / "run.json"
        run.write_text(json.dumps({"schema": "tuner.probe.connect/3", "steps": rows}))
        p = subprocess.run([sys.executable, "-m", "tuner", "diagnose", "--pid", str(srv.proc.pid), "--cost", str(run),
                            "--json"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        d = json.loads(p.stdout)
        spent = d["service_cost"]
        assert spent["binding"] == "memory.limit_in_bytes" and spent["projected_max"] > 120
        assert d["binding_limit"] == "memory (memory.limit_in_bytes)", d["verdict"]
        assert d["max_connections"] == spent["projected_max"]
        row = next(r for r in d["limits"] if r["scope"] == "memory")
        assert row["status"] == "binds" and row["current"] == [LIMIT]
        expect = cost.project(rows, [srv.proc.pid], held=120)["projected_max"]
        assert abs(spent["projected_max"] - expect) <= max(3, 0.01 * expect), (spent, expect)
        assert "its cgroup memory limit binds first" in d["verdict"]
        bad = tmp_path / "bad.json"
        bad.write_text('{"schema": "tuner.report/3"}')
        p = subprocess.run([sys.executable, "-m", "tuner", "diagnose", "--pid", str(srv.proc.pid), "--cost", str(bad)],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and "not a step run" in p.stderr and len(p.stderr.strip().splitlines()) == 1
        # Root acts on it: a run file other users can write is refused, in one line.
        run.chmod(0o666)
        p = subprocess.run([sys.executable, "-m", "tuner", "diagnose", "--pid", str(srv.proc.pid), "--cost", str(run)],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and "other users can write it" in p.stderr, p.stderr
    finally:
        srv.close()


def test_without_a_slope_diagnose_says_the_memory_row_is_unknown(nofile_raised, tmp_path):
    """A step run of one row measured no slope: the memory row is there, unknown, and the
    minimum is what the other limits say."""
    import json
    import subprocess
    import sys

    srv = Costly(4096)
    try:
        run = tmp_path / "run.json"
        run.write_text(json.dumps({"steps": [{"connections": 10, "service_memory_bytes": 1 << 20,
                                              "service_kernel_bytes": 1 << 16}]}))
        p = subprocess.run([sys.executable, "-m", "tuner", "diagnose", "--pid", str(srv.proc.pid), "--cost", str(run),
                            "--json"], capture_output=True, text=True, timeout=120)
        d = json.loads(p.stdout)
        row = next(r for r in d["limits"] if r["scope"] == "memory")
        assert row["allows"] is None and row["status"] == "unreadable"
        assert d["service_cost"]["projected_max"] is None and not d["binding_limit"].startswith("memory")
    finally:
        srv.close()


def test_diagnose_watch_measures_the_cost_per_connection_as_they_arrive(nofile_raised):
    """tuner diagnose --watch samples the service's memory as its connections grow (issue
    26: two samples over --watch): a server spending a known buffer per connection is
    measured at that cost in the summary, with where its memory would stop it."""
    import json
    import signal
    import subprocess
    import sys

    srv = Costly(BUFFER)
    try:
        watch = subprocess.Popen([sys.executable, "-m", "tuner", "diagnose", "--pid", str(srv.proc.pid),
                                  "--watch", "--interval", "0.3", "--json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)
        for count in (40, 80, 120):
            assert srv.hold(count) == count
            time.sleep(2.5)
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=60)
    finally:
        srv.close()
    summary = json.loads(out.splitlines()[-1])
    spent = summary["service_cost"]
    assert spent is not None, err
    assert 0.9 * BUFFER <= spent["bytes_per_connection"]["application"] <= 1.1 * BUFFER, spent
    assert spent["projected_max"] and spent["sentence"].startswith("the service would hold")
