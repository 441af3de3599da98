"""Redis's own memory caps (issue 26): `maxmemory-clients` is a connection cap (past it
Redis evicts the clients using the most memory, INFO stats evicted_clients), counted in
Redis's own accounting of its clients (INFO memory mem_clients_normal), not in its PSS.

For real: a Redis with maxmemory-clients 6 MiB under `tuner probe --connect redis://...
--step 20`; the probe reads Redis's own count at each step (the rows' service_own), fits
it against the connections held before Redis first evicted, and projects where the line
meets the cap.  The same ramp goes on past it, so where Redis really began evicting is
in the rows (and in INFO stats, asked apart): the projection is within 10% of it.  Then
`tuner diagnose --cost FILE` of that Redis names maxmemory-clients as binding, and its
fix (CONFIG SET maxmemory-clients ... && CONFIG REWRITE), run in a shell, changes the cap.

What one client costs Redis here is what the ramp does to it: each step's latency round
PINGs the held connections, and a client that sent a command in the last ~3 s counts its
16 KiB query buffer (22,272 B in all, measured by CLIENT LIST tot-mem); an idle one 1,800 B.
"""
import json
import os
import socket
import subprocess
import sys

from conftest import run_tuner
from realservers import real_server  # noqa: F401 (a fixture)
from test_metrics import one, parse
from tuner import metrics, schemas
from tuner.apps import redis as redis_app

LIMIT = "6mb"
LIMIT_BYTES = 6 << 20


def ask(port: int, *words: str):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        return redis_app.ask(s, *words)


def info(port: int, section: str) -> dict:
    return redis_app.info_fields(str(ask(port, "INFO", section)))


def test_client_eviction_limit_follows_redis_rule():
    """networking.c getClientEvictionLimit: bytes, or a percentage of maxmemory (none
    without one), never below 128 KiB; 0 is off."""
    assert redis_app.client_eviction_limit("6291456", 0) == 6 << 20
    assert redis_app.client_eviction_limit("10%", 100 << 20) == 10 << 20
    assert redis_app.client_eviction_limit("1%", 1 << 20) == 128 << 10
    assert redis_app.client_eviction_limit("1000", 0) == 128 << 10
    assert redis_app.client_eviction_limit("10%", 0) is None
    assert redis_app.client_eviction_limit("0", 1 << 30) is None
    assert redis_app.client_eviction_limit("lots", 0) is None


def _eviction_point(rows):
    """Redis's own readings at the last row before it evicted and at the first after."""
    own = [next(o for o in r["service_own"] if o["kind"] == "clients") for r in rows]
    first = next(i for i, o in enumerate(own) if o["evicted"] > 0)
    assert first >= 3, own                      # a line needs rows before it evicted
    return own[first - 1], own[first]


def test_maxmemory_clients_binds_and_is_projected_within_10_percent(real_server, tmp_path):
    srv = real_server("redis", hosts=("127.0.0.1",), args=("--maxmemory-clients", LIMIT))
    proc = run_tuner("probe", "--connect", f"redis://127.0.0.1:{srv.port}", "-n", 320, "--step", 20,
                     "--settle", 1, "--json", "-q", timeout=400)
    assert proc.stdout, proc.stderr
    doc = json.loads(proc.stdout)
    schemas.validate(doc)
    service = doc["service"]
    assert service["binding"] == "maxmemory-clients 6.0 MiB", service
    assert service["memory_limit"]["bytes"] == LIMIT_BYTES
    assert "its own client memory limit binds first" in service["sentence"], service["sentence"]
    limit = next(l for l in service["limits"] if l["name"] == service["binding"])
    assert limit["where"] == "application" and limit["counts"] == "own count" and limit["kind"] == "clients"
    # Redis evicted, and says so apart from the rows.
    assert int(info(srv.port, "stats")["evicted_clients"]) > 0
    last_whole, first_evicted = _eviction_point(doc["steps"])
    # It held `before` with none evicted; `after` clients had come when it had evicted some.
    before, after = last_whole["connections"], first_evicted["connections"] + first_evicted["evicted"]
    projected = service["projected_max"]
    print(f"projected {projected}; Redis began evicting between {before} and {after} clients; "
          f"{limit['per_connection']} B per client as Redis counts them: {service['sentence']}")
    assert 0.9 * before <= projected <= 1.1 * after, (projected, before, after)
    assert limit["acted_at"] == first_evicted["connections"]
    # The clients Redis closed were its choice, at its own cap: the first line says so.
    stalled = doc["stalled"]
    print(stalled["sentence"])
    assert stalled["side"] == "server" and "clients past its maxmemory-clients 6.0 MiB" in stalled["sentence"]
    # A PINGed client counts its 16 KiB query buffer: 768 + 1,024 + 20,472 B (CLIENT LIST).
    assert 15_000 <= limit["per_connection"] <= 30_000, limit
    # The plot draws what Redis counts, dashed, beside the PSS line: what the projection follows.
    (tmp_path / "ramp.json").write_text(proc.stdout)
    drawn = run_tuner("plot", str(tmp_path / "ramp.json"), "-o", str(tmp_path / "ramp.svg"))
    assert drawn.returncode == 0, drawn.stderr
    svg = (tmp_path / "ramp.svg").read_text()
    assert 'id="run1-own"' in svg and "what it counts itself against maxmemory-clients 6.0 MiB" in svg
    samples = parse(open(metrics.write_probe_textfile(str(tmp_path), doc)).read())
    assert one(samples, "tuner_probe_service_memory_bytes_per_connection", part="own") == limit["per_connection"]
    assert one(samples, "tuner_probe_service_projected_connections", limit=service["binding"]) == projected

    # diagnose --cost FILE: the same rows, the cap read now, the memory row binds, and
    # its fix is the adapter's CONFIG SET, which run as printed moves the cap.
    run = tmp_path / "run.json"
    run.write_text(proc.stdout)
    run.chmod(0o600)
    p = subprocess.run([sys.executable, "-m", "tuner", "diagnose", "--port", str(srv.port), "--cost", str(run),
                        "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    schemas.validate(d)
    assert d["binding_limit"] == "memory (maxmemory-clients 6.0 MiB)", d["verdict"]
    assert abs(d["max_connections"] - projected) <= 0.02 * projected, (d["max_connections"], projected)
    assert "maxmemory-clients 6.0 MiB" in d["verdict"]
    fix = next(f for f in d["fix"] if f.get("lines") and f["lines"][0].startswith("maxmemory-clients "))
    assert "CONFIG SET maxmemory-clients" in fix["then"] and "CONFIG REWRITE" in fix["then"], fix
    mib = int(fix["lines"][0].split()[1].removesuffix("mb"))
    assert mib > 6
    subprocess.run(fix["then"], shell=True, check=True, capture_output=True, timeout=30,
                   env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert ask(srv.port, "CONFIG", "GET", "maxmemory-clients")[1] == str(mib << 20)
    with open(srv.config) as f:
        assert f"maxmemory-clients {mib}mb" in f.read()


def _client_list(port: int) -> list:
    """CLIENT LIST as one dict per client (its own words: tot-mem, qbuf, rbs, ...)."""
    text = str(ask(port, "CLIENT", "LIST"))
    return [dict(w.split("=", 1) for w in line.split() if "=" in w) for line in text.splitlines()]


def test_an_idle_client_costs_redis_its_struct_and_its_smallest_reply_buffer(real_server):
    """What Redis counts for a client (networking.c getClientMemoryUsage: the client struct,
    its reply buffer, its query buffer, its argv) against what its source sizes them: a
    client that sent a command holds a query buffer of PROTO_IOBUF_LEN (16 KiB, in jemalloc's
    20 KiB class); idle for more than 2 s, clientsCron gives it back and shrinks the reply
    buffer to PROTO_REPLY_MIN_BYTES (1 KiB).  Every idle client then counts the same, and
    mem_clients_normal is that times the clients (docs/probe-services.md, Redis)."""
    import time

    srv = real_server("redis", hosts=("127.0.0.1",))
    n = 200
    clients = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(redis_app.command("PING"))
            assert s.recv(16) == b"+PONG\r\n"
            clients.append(s)
        busy = [c for c in _client_list(srv.port) if c.get("cmd") == "ping"]
        assert len(busy) == n and all(int(c["qbuf"]) + int(c["qbuf-free"]) >= redis_app.IOBUF for c in busy), busy[0]
        deadline = time.monotonic() + 60
        while True:
            idle = [c for c in _client_list(srv.port) if c.get("cmd") == "ping"]
            if all(c["qbuf-free"] == "0" and c["rbs"] == str(redis_app.REPLY_MIN) for c in idle):
                break
            assert time.monotonic() < deadline, idle[0]
            time.sleep(0.5)
        each = {int(c["tot-mem"]) for c in idle}
        assert len(each) == 1, each
        tot = each.pop()
        struct = tot - redis_app.REPLY_MIN - 8        # 8: the empty query buffer's allocation
        assert 256 <= struct <= 2048, tot             # sizeof(client) in a jemalloc class
        counted = int(info(srv.port, "memory")["mem_clients_normal"])
        print(f"an idle client counts {tot} B (struct {struct} + reply buffer {redis_app.REPLY_MIN} + 8); "
              f"{n} count {counted} B; one that just sent a command {int(busy[0]['tot-mem'])} B")
        # tuner's own question is counted from its first command on: at most one busy client more.
        assert n * tot <= counted <= n * tot + int(busy[0]["tot-mem"]), (counted, n * tot)
    finally:
        for s in clients:
            s.close()


def test_diagnose_watch_reads_redis_own_count_and_names_maxmemory_clients(real_server):
    """tuner diagnose --watch samples Redis's own count of its clients beside its memory as
    clients arrive (the rows' service_own), so its summary names maxmemory-clients, with
    the bytes per client Redis counted, as where its memory stops it."""
    import signal
    import time

    srv = real_server("redis", hosts=("127.0.0.1",), args=("--maxmemory-clients", "4mb"))
    clients = []
    try:
        watch = subprocess.Popen([sys.executable, "-m", "tuner", "diagnose", "--port", str(srv.port),
                                  "--watch", "--interval", "0.3", "--json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)
        for _ in range(3):
            for _ in range(40):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                s.sendall(redis_app.command("PING"))
                assert s.recv(16) == b"+PONG\r\n"
                clients.append(s)
            time.sleep(2.5)
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=60)
    finally:
        for s in clients:
            s.close()
    summary = json.loads(out.splitlines()[-1])
    spent = summary["service_cost"]
    assert spent is not None, err
    print(spent["sentence"])
    assert spent["binding"] == "maxmemory-clients 4.0 MiB", spent
    limit = next(l for l in spent["limits"] if l["name"] == spent["binding"])
    # Between an idle client (1,800 B) and a new one that just sent a command (37,632 B).
    assert 1_800 <= limit["per_connection"] <= 37_632, limit
    assert spent["projected_max"] > 120 and "its own client memory limit binds first" in spent["sentence"]


def test_maxmemory_under_noeviction_is_where_writes_fail_not_connections(real_server):
    """maxmemory counts the clients' memory too; under noeviction, past it Redis answers a
    write with -OOM while it still answers PING and accepts new clients: tuner reads it as
    a soft limit saying so, never as where connections stop."""
    srv = real_server("redis", hosts=("127.0.0.1",),
                      args=("--maxmemory", "2mb", "--maxmemory-policy", "noeviction"))
    from tuner.apps import base
    from tuner import cost

    view = base.view(srv.pid, [("127.0.0.1", srv.port)], depth=0)
    clients = []
    try:
        while int(info(srv.port, "memory")["used_memory"]) <= 2 << 20:
            for _ in range(20):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                s.sendall(redis_app.command("PING"))
                assert s.recv(16) == b"+PONG\r\n"
                clients.append(s)
            assert len(clients) < 2000
        caps = redis_app.ADAPTER.memory_caps(view)
        data = next(c for c in caps if c.kind == base.DATA)
        assert data.name == "maxmemory 2.0 MiB (noeviction)" and data.does == "writes answer -OOM"
        assert data.used > data.bytes
        rows = [{"connections": len(clients), "service_memory_bytes": 0, "service_kernel_bytes": 0,
                 "service_own": [cost.own_reading(data)]}]
        limits = cost.own_limits(rows, None)
        assert limits == [] or all(l.soft for l in limits)       # never a connection cap
        assert str(ask(srv.port, "PING")) == "PONG"
        try:
            got = ask(srv.port, "SET", "k", "v")
        except redis_app.Refused as e:
            got = e
        assert isinstance(got, redis_app.Refused) and str(got).startswith("OOM"), got
        print(f"{len(clients)} clients took used_memory past maxmemory 2 MiB: SET answered {got}")
    finally:
        for s in clients:
            s.close()


def test_diagnose_without_a_measured_cost_names_the_caps_but_projects_none(real_server):
    """Without --watch or --cost, diagnose says Redis has maxmemory-clients (and maxmemory,
    not a connection cap) and how to measure where it binds; it projects nothing from it."""
    srv = real_server("redis", hosts=("127.0.0.1",), args=("--maxmemory-clients", "6mb", "--maxmemory", "64mb"))
    p = subprocess.run([sys.executable, "-m", "tuner", "diagnose", "--port", str(srv.port), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    notes = d["application"]["notes"]
    assert any(n.startswith("maxmemory-clients 6.0 MiB") and "--watch" in n for n in notes), notes
    assert any(n.startswith("maxmemory 64.0 MiB (noeviction)") and "not a connection cap" in n for n in notes), notes
    assert d["service_cost"] is None and not d["binding_limit"].startswith("memory"), d["binding_limit"]
