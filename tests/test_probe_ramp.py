"""`tuner probe --connect URL --step K` and `--ping-every S` (issue 26), for real: a small
server whose answer time grows past a known connection count (tests/servers/
slow_after.py, its place known by construction) for --max-p99; real nginx and Redis
(tests/realservers.py) for the step rows and the exchanges kept up over a hold.

No timing is asserted: a slow answer is a second against a bound of a fifth of one,
and counts of exchanges are compared with what the schedule implies, loosely."""
import json
import os
import subprocess
import sys

import pytest

import realservers
from conftest import run_tuner
from realservers import real_server  # noqa: F401 (a fixture)

from probes.latency import Histogram, highest_of, index_of
from tuner import schemas

HERE = os.path.dirname(os.path.abspath(__file__))


def probe(url, n, *args, hold=1, timeout=60):
    proc = run_tuner("probe", "--connect", url, "-n", n, "--hold", hold, "--json", "-q", *args,
                     timeout=timeout + 120)
    assert proc.stdout, proc.stderr
    doc = json.loads(proc.stdout)
    schemas.validate(doc)
    return proc.returncode, doc


@pytest.fixture
def slow_after(tmp_path):
    """slow_after(count, delay) -> port of a started tests/servers/slow_after.py."""
    started = []

    def run(count: int, delay: float) -> int:
        port = realservers.free_port(("127.0.0.1",))
        script = os.path.join(HERE, "servers", "slow_after.py")
        srv = realservers.start("slow-after", [sys.executable, script, str(port), str(count), str(delay)],
                                port=port, hosts=("127.0.0.1",), config=script, dir=str(tmp_path))
        started.append(srv)
        return port

    yield run
    for srv in started:
        srv.stop()


def test_max_p99_stops_the_ramp_within_one_step_of_where_answers_slow_down(slow_after):
    count, step = 350, 100
    port = slow_after(count, 1.0)
    rc, doc = probe(f"tcp://127.0.0.1:{port}", 800, "--send", r"ping\n", "--expect", r"pong\n",
                    "--step", step, "--settle", "0.2", "--max-p99", "200")
    assert rc == 3 and doc["stopped_by"] == "max-p99", doc["stalled"]
    ramp = doc["ramp"]
    over, within = ramp["over"], ramp["within"]
    # The first step at or past the count is where it stops; the one before is within.
    assert count <= over["connections"] < count + step, [r["connections"] for r in doc["steps"]]
    assert over["latency_ms"]["p99"] >= 200 and within["latency_ms"]["p99"] <= 200
    assert within["connections"] == over["connections"] - step
    assert doc["steps"][-1] == over and len(doc["steps"]) == over["step"]
    assert doc["stalled"]["side"] == "server" and doc["stalled"]["at"] == within["connections"]
    assert doc["stalled"]["sentence"].startswith(f"the server's p99 passed 200 ms at {over['connections']:,}")
    assert ramp["sentence"].endswith(f"at {within['connections']:,}; "
                                     f"{over['latency_ms']['p99']:,.0f} ms at {over['connections']:,}")


def test_step_text_has_the_table_and_the_latency_sentence(slow_after):
    port = slow_after(10 ** 6, 0)
    proc = run_tuner("probe", "--connect", f"tcp://127.0.0.1:{port}", "-n", 300, "--step", 100,
                     "--settle", 0, "--send", r"ping\n", "--expect", r"pong\n", "-q", timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("held "))
    assert "p50 / p90 / p99 / max" in lines[head]
    assert [line.split()[0] for line in lines[head + 2:head + 5]] == ["100", "200", "300"]
    after = " ".join(line.strip() for line in lines[head + 5:])
    # The service's cost sentence (tuner.cost), then the latency one.
    assert after.startswith("the service would hold ") and " per connection: " in after, after
    assert lines[-1].startswith("p99 ") and lines[-1].endswith(" at 300"), after


def test_ping_every_keeps_every_held_connection_exercised_over_the_hold(real_server):
    srv = real_server("redis", hosts=("127.0.0.1",))
    n, hold, every = 400, 6, 1.0
    rc, doc = probe(f"redis://127.0.0.1:{srv.port}", n, "--ping-every", every, hold=hold)
    assert rc == 0 and doc["verified"] == n, doc["stalled"]
    lat = doc["latency_ms"]
    assert lat is not None and 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    # Every held connection once per second for the hold: n x hold / every, roughly.
    expected = n * hold / every
    assert 0.6 * expected <= doc["latency_exchanges"] <= 1.3 * expected, doc["latency_exchanges"]
    pings = doc["pings"]
    assert pings["refused"] == 0 and pings["answered"] >= doc["latency_exchanges"]
    assert pings["sent"] - pings["answered"] <= n     # at most one in flight per connection


def test_mqtt_steps_time_pingreq_and_mosquitto_memory_rises(real_server):
    """MQTT's exchange on a held connection is PINGREQ -> PINGRESP (the second check's):
    each step's latency is timed by it, and the broker's rows are sampled."""
    srv = real_server("mosquitto", hosts=("127.0.0.1",))
    rc, doc = probe(f"mqtt://127.0.0.1:{srv.port}", 900, "--step", 300, "--settle", 0.3,
                    "--ping-every", 2, hold=3)
    assert rc == 0 and doc["verified"] == 900, doc["stalled"]
    rows = doc["steps"]
    assert [r["connections"] for r in rows] == [300, 600, 900]
    assert all(r["latency_ms"] and r["exchanges"] for r in rows), rows
    assert [r["service_sockets"] for r in rows] == [300, 600, 900]
    assert rows[0]["service_memory_bytes"] < rows[-1]["service_memory_bytes"]
    assert doc["pings"]["refused"] == 0 and doc["latency_ms"] is not None


def test_tuner_serve_answers_enq_on_held_connections():
    """tuner's own exchange has a timed round on a held connection too: ENQ -> ACK
    (wire.py step 5), answered by a real `tuner probe --serve`."""
    port = realservers.free_port(("127.0.0.1",))
    srv = subprocess.Popen([sys.executable, "-m", "tuner", "probe", "--serve", f"127.0.0.1:{port}",
                            "--expect", "200", "--hold", "30", "--timeout", "60", "--json", "-q"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=os.path.dirname(HERE))
    try:
        _wait(port)
        rc, doc = probe(f"tuner://127.0.0.1:{port}", 200, "--ping-every", "0.5", "--step", "100",
                        "--settle", "0", hold=3)
        served, err = srv.communicate(timeout=60)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    assert rc == 0 and doc["verified"] == 200, doc["stalled"]
    assert doc["pings"]["refused"] == 0 and doc["pings"]["answered"] >= 200 * 3 / 0.5 * 0.6, doc["pings"]
    assert doc["latency_ms"] and all(r["latency_ms"] for r in doc["steps"])
    assert srv.returncode == 0 and json.loads(served)["verified"] == 200, err


def _wait(port: int, seconds: float = 20) -> None:
    """Until something listens on the port (read with ss: a test connection would be a
    client the server counts)."""
    import time
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def test_nginx_steps_have_rising_memory_and_kernel_memory(real_server):
    srv = real_server("nginx", workers=1, worker_connections=4096, hosts=("127.0.0.1",))
    rc, doc = probe(f"http://127.0.0.1:{srv.port}/", 3000, "--step", 1000, "--settle", 0.5,
                    "--ping-every", 5)
    assert rc == 0, doc["stalled"]
    rows = doc["steps"]
    assert [r["connections"] for r in rows] == [1000, 2000, 3000]
    assert all(r["service_memory_bytes"] and r["service_kernel_bytes"] for r in rows), rows
    mem = [r["service_memory_bytes"] for r in rows]
    kern = [r["service_kernel_bytes"] for r in rows]
    assert mem[0] < mem[-1] and kern[0] < kern[1] < kern[2], (mem, kern)
    assert [r["service_sockets"] for r in rows] == [1000, 2000, 3000]
    assert all(r["latency_ms"] and r["exchanges"] for r in rows)
    assert all(r["service_cpu_seconds"] is not None and r["service_cpu_seconds"] >= 0 for r in rows)
    # The cost per connection fitted from the rows, and where memory would stop nginx.
    service = doc["service"]
    assert service["bytes_per_connection"]["kernel"] > 1000 and service["fit_r2"]["kernel"] > 0.9, service
    assert service["projected_max"] > 3000 and service["binding"] == service["memory_limit"]["name"]
    assert service["sentence"].startswith(f"the service would hold {service['projected_max']:,} on this host")


def test_redis_steps_have_rising_memory(real_server):
    srv = real_server("redis", hosts=("127.0.0.1",))
    rc, doc = probe(f"redis://127.0.0.1:{srv.port}", 2000, "--step", 500, "--settle", 0.3)
    assert rc == 0, doc["stalled"]
    rows = doc["steps"]
    assert [r["connections"] for r in rows] == [500, 1000, 1500, 2000]
    mem = [r["service_memory_bytes"] for r in rows]
    assert all(a < b for a, b in zip(mem, mem[1:])), mem   # each client costs Redis its buffers
    assert [r["service_sockets"] for r in rows] == [500, 1000, 1500, 2000]


def test_step_options_are_checked_before_anything_runs():
    for args, words in ((["--connect", "tcp://127.0.0.1:9", "--ping-every", "1"], "as given sends nothing (give it one: --send, --expect)"),
                        (["--connect", "redis://127.0.0.1:9", "--max-p99", "5"], "needs --step"),
                        (["--step", "10"], "--step is for --connect only"),
                        (["--connect", "redis://127.0.0.1:9", "--step", "0"], "--step")):
        proc = run_tuner("probe", "-n", 10, *args)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_histogram_buckets_are_monotonic_and_within_their_precision():
    """Pure: every value lands in a bucket no wider than 1/32 of it, buckets in order,
    and percentiles of merged chunks equal those of one histogram."""
    prev = -1
    for v in list(range(0, 5000)) + [2 ** k + d for k in range(13, 32) for d in (-1, 0, 1)]:
        i = index_of(v)
        assert i >= prev and highest_of(i) >= v and (i == 0 or highest_of(i - 1) < v)
        assert highest_of(i) - v <= max(v // 32, 0), v
        prev = i
    values = [(i * 7919) % 100_000 for i in range(20_000)]
    whole = Histogram.of(values)
    merged = Histogram()
    for part in (values[:5000], values[5000:]):
        for chunk in Histogram.of(part).encode():
            merged.decode(chunk)
    assert merged.summary_ms() == whole.summary_ms() and merged.count == 20_000
    assert whole.percentile(100) == max(values) and whole.percentile(50) >= sorted(values)[9999]
