"""`tuner probe --connect` over TLS against real servers none of us wrote, with
certificates the test makes (tests/realservers.py's tls_certs: a CA, a server
certificate for localhost/127.0.0.1/::1, an expired one, one for another name, a client
certificate, and a server certificate from a CA nobody trusts):

    https://  nginx `listen ... ssl` (and mutual TLS), HAProxy `bind ... ssl crt`
    wss://    Node https + the `ws` package
    rediss:// Redis `tls-port`
    mqtts://  Mosquitto with a TLS listener
    tls://    raw TLS with --send/--expect (Redis's PING over its tls-port)

Each cap verified exactly twice with the refusal named; certificate errors named as
the server's in the library's words; a server that stalls mid-handshake counted as the
server's; what the handshakes negotiated, took and cost each side in the document.
"""
import json
import socket
import subprocess
import sys
import threading

import pytest

from conftest import run_tuner
from tuner import schemas
from realservers import real_server, tls_certs  # noqa: F401 (fixtures)


def connect(url, n, *args, timeout=5, hold=1):
    proc = run_tuner("probe", "--connect", url, "-n", n, "--timeout", timeout, "--hold", hold,
                     "--json", "-q", *args, timeout=180)
    assert proc.stdout, proc.stderr
    doc = json.loads(proc.stdout)
    schemas.validate(doc)           # every TLS document holds to its schema
    return proc.returncode, doc, proc.stderr


def failures(doc) -> dict:
    return {k: v for k, v in doc["server"].items() if k not in ("words", "accept_queue", "listen_overflows") and v}


def test_https_against_nginx_twice_over_ipv4_and_ipv6_with_what_it_negotiated(real_server, tls_certs):
    srv = real_server("nginx", workers=1, worker_connections=1024, tls=tls_certs.server)
    for host in ("127.0.0.1", "[::1]"):
        rc, doc, err = connect(f"https://{host}:{srv.port}/", 300, "--ca", tls_certs.ca)
        assert rc == 0 and doc["verified"] == 300 and doc["checked_twice"], err
        tls = doc["tls"]
        assert tls["handshakes_full"] == 300 and tls["handshakes_resumed"] == 0
        assert tls["server_name"] == host.strip("[]") and not tls["insecure"] and tls["alpn"] == ["http/1.1"]
        assert sum(k["count"] for k in tls["negotiated"]) == 300
        assert tls["negotiated"][0]["version"] == "TLSv1.3" and tls["negotiated"][0]["cipher"].startswith("TLS_")
        ms = tls["handshake_ms"]
        assert 0 < ms["p50"] <= ms["p90"] <= ms["p99"] <= ms["max"]
        cpu = doc["cpu"]
        assert cpu["per"] == "handshake" and cpu["probe_ms_per_conn"] > 0
        assert srv.pid in cpu["server_pids"] and cpu["server_ms_per_conn"] > 0
        assert cpu["bound_by"] in ("server", "probe")
        assert cpu["sentence"].startswith(f"TLS handshakes bound by the {cpu['bound_by']}: ")
        assert doc["user_bytes_per_conn"] > 0


def test_tls_version_resume_and_the_text_table(real_server, tls_certs):
    srv = real_server("nginx", workers=1, worker_connections=1024, tls=tls_certs.server, hosts=("127.0.0.1",))
    url = f"https://127.0.0.1:{srv.port}/"
    rc, doc, err = connect(url, 200, "--ca", tls_certs.ca, "--tls-version", "1.2", "--resume")
    assert rc == 0 and doc["verified"] == 200, err
    tls = doc["tls"]
    assert {k["version"] for k in tls["negotiated"]} == {"TLSv1.2"} and tls["version_asked"] == "1.2"
    # One worker: its first full handshake's session is what the other 199 resume.
    assert tls["handshakes_full"] == 1 and tls["handshakes_resumed"] == 199 and tls["resume"]
    proc = run_tuner("probe", "--connect", url, "-n", 50, "--hold", 0.5, "--ca", tls_certs.ca, "--tls-version", "1.3",
                     timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "TLSv1.3" in proc.stdout and f"verified against {tls_certs.ca}" in proc.stdout
    assert "TLS handshakes" in proc.stdout and "50 full, 0 resumed" in proc.stdout


def test_nginx_over_https_holds_its_worker_connections_and_closes_the_rest(real_server, tls_certs):
    """nginx's cap is a range (it closes idle keep-alive connections to make room, see
    test_probe_services.py); every connection it did not hold it closed, named so."""
    w = 256
    srv = real_server("nginx", workers=1, worker_connections=w, tls=tls_certs.server, hosts=("127.0.0.1",))
    rc, doc, err = connect(f"https://127.0.0.1:{srv.port}/", 400, "--ca", tls_certs.ca)
    assert rc == 3 and doc["checked_twice"], err
    top = w - w // 16 - 1
    assert top - 32 <= doc["verified"] <= top, doc["verified"]
    found = failures(doc)
    # Closing a TLS connection whose records it had not read, nginx's kernel resets it.
    assert set(found) <= {"closed", "closed_in_hold", "reset", "reset_in_hold"}
    assert sum(found.values()) == 400 - doc["verified"]
    assert doc["stalled"]["sentence"].startswith(f"the server (nginx pid {srv.pid}")


def test_haproxy_bind_ssl_maxconn_exactly_and_the_rest_in_its_accept_queue(real_server, tls_certs):
    """Beyond maxconn HAProxy accepts nothing: those connections sent their ClientHello
    into its accept queue, and are counted there, not as stalled handshakes."""
    srv = real_server("haproxy", maxconn=100, tls=tls_certs.server, hosts=("127.0.0.1",))
    rc, doc, err = connect(f"https://127.0.0.1:{srv.port}/", 300, "--ca", tls_certs.ca, timeout=3)
    assert rc == 3 and doc["verified"] == 100 and doc["checked_twice"], err
    server = doc["server"]
    assert server["queued"] == server["accept_queue"] == 101
    assert failures(doc) == {"queued": 101, "not_connected": 99}
    assert "101 waited in its accept queue" in doc["stalled"]["sentence"]


def test_redis_tls_port_maxclients_exactly(real_server, tls_certs):
    """Redis over TLS cannot say 'max number of clients reached' before the handshake: it
    closes, and the probe names that."""
    srv = real_server("redis", maxclients=100, tls=tls_certs.server, hosts=("127.0.0.1",))
    rc, doc, err = connect(f"rediss://127.0.0.1:{srv.port}", 250, "--ca", tls_certs.ca)
    assert rc == 3 and doc["verified"] == 100 and doc["checked_twice"], err
    # Closed, or reset when its close found the ClientHello unread (a race: the probe
    # opens 32 handshakes at a time, so Redis is often idle when one arrives).
    found = failures(doc)
    assert set(found) <= {"closed", "reset"} and sum(found.values()) == 150, found
    assert doc["stalled"]["sentence"].startswith(f"the server (redis-server pid {srv.pid}) stopped at 100 (")
    assert doc["tls"]["alpn"] == []


def test_raw_tls_with_send_and_expect_against_redis(real_server, tls_certs):
    srv = real_server("redis", maxclients=1000, tls=tls_certs.server, hosts=("::1",))
    rc, doc, err = connect(f"tls://[::1]:{srv.port}", 100, "--ca", tls_certs.ca, "--send", r"PING\r\n",
                           "--expect", r"+PONG\r\n")
    assert rc == 0 and doc["verified"] == 100 and doc["protocol"] == "tls", err


def test_mqtts_against_mosquitto_max_connections_exactly(real_server, tls_certs):
    srv = real_server("mosquitto", max_connections=60, tls=tls_certs.server, hosts=("127.0.0.1",))
    rc, doc, err = connect(f"mqtts://127.0.0.1:{srv.port}", 100, "--ca", tls_certs.ca)
    assert rc == 3 and doc["verified"] == 60 and doc["checked_twice"], err
    assert set(failures(doc)) <= {"closed", "reset", "tls_failed"} and sum(failures(doc).values()) == 40
    assert doc["tls"]["handshakes_full"] >= 60


def test_wss_against_node_closing_beyond_its_cap(real_server, tls_certs):
    srv = real_server("ws", max_open=120, tls=tls_certs.server, hosts=("::1",))
    rc, doc, err = connect(f"wss://[::1]:{srv.port}/", 200, "--ca", tls_certs.ca)
    assert rc == 3 and doc["verified"] == 120 and doc["checked_twice"], err
    server = doc["server"]
    assert server["refused"] + server["check_refused"] == 80 and set(failures(doc)) <= {"refused", "check_refused"}
    assert {w["words"] for w in server["words"]} == {"close 1013 too many connections"}


def test_mutual_tls_against_nginx(real_server, tls_certs):
    srv = real_server("nginx", tls=tls_certs.server, client_ca=tls_certs.ca, hosts=("127.0.0.1",))
    url = f"https://127.0.0.1:{srv.port}/"
    rc, doc, err = connect(url, 50, "--ca", tls_certs.ca, "--cert", tls_certs.client.cert, "--key", tls_certs.client.key)
    assert rc == 0 and doc["verified"] == 50 and doc["tls"]["client_cert"] == tls_certs.client.cert, err
    # Without one nginx answers in HTTP: 400 'No required SSL certificate was sent'.
    rc, doc, err = connect(url, 20, "--ca", tls_certs.ca)
    assert rc == 3 and failures(doc) == {"refused": 20}
    assert doc["server"]["words"][0]["words"].startswith("400")


@pytest.mark.parametrize("pair,args,words", [
    ("stranger", [], "TLS certificate: unable to get local issuer certificate"),
    ("server", ["--ca", "OTHER_CA"], "TLS certificate: unable to get local issuer certificate"),
    ("expired", [], "TLS certificate: certificate has expired"),
    ("server", ["--sni", "wrong.example"], "TLS certificate: Hostname mismatch, certificate is not valid for "
                                           "'wrong.example'."),
    ("other_name", [], "TLS certificate: IP address mismatch, certificate is not valid for '127.0.0.1'."),
])
def test_certificate_errors_are_the_servers_side_in_their_words(real_server, tls_certs, pair, args, words):
    srv = real_server("nginx", tls=getattr(tls_certs, pair), hosts=("127.0.0.1",))
    args = [tls_certs.other_ca if a == "OTHER_CA" else a for a in args]
    ca = [] if "--ca" in args else ["--ca", tls_certs.ca]
    rc, doc, err = connect(f"https://127.0.0.1:{srv.port}/", 10, *ca, *args)
    assert rc == 3 and doc["verified"] == 0 and "Traceback" not in err, err
    assert failures(doc) == {"tls_failed": 10}
    assert doc["server"]["words"] == [{"when": "open", "words": words, "count": 10}]
    assert doc["stalled"]["side"] == "server"
    assert f"(10 failed the TLS handshake: {words!r})" in doc["stalled"]["sentence"]


def test_insecure_verifies_nothing_and_says_so(real_server, tls_certs):
    srv = real_server("nginx", tls=tls_certs.stranger, hosts=("127.0.0.1",))
    url = f"https://127.0.0.1:{srv.port}/"
    rc, doc, err = connect(url, 20, "--insecure")
    assert rc == 0 and doc["verified"] == 20 and doc["tls"]["insecure"], err
    proc = run_tuner("probe", "--connect", url, "-n", 5, "--hold", 0.2, "--insecure", timeout=60)
    assert proc.returncode == 0 and "TLS certificates were NOT verified (--insecure)" in proc.stdout


class Staller:
    """A TLS server that stalls mid-handshake: accepts, reads the ClientHello, answers
    with the first bytes of a ServerHello record and nothing more (no real server does
    this on cue)."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns, self.stopping = [], False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        self.listener.settimeout(0.1)
        while not self.stopping:
            try:
                c, _ = self.listener.accept()
            except socket.timeout:
                continue
            c.recv(4096)
            c.sendall(b"\x16\x03\x03\x00\x7a\x02\x00")   # a handshake record, cut short
            self.conns.append(c)

    def close(self):
        self.stopping = True
        self.thread.join(timeout=5)
        for c in (*self.conns, self.listener):
            c.close()


def test_a_server_stalling_mid_handshake_is_counted_as_the_servers():
    """All 100 opened though none finishes: the worker's window of IN_FLIGHT handshakes
    widens when none in flight was decided for a second."""
    staller = Staller()
    try:
        rc, doc, err = connect(f"https://127.0.0.1:{staller.port}/", 100, timeout=4)
    finally:
        staller.close()
    assert rc == 3 and doc["verified"] == 0 and doc["established"] == 100, err
    assert failures(doc) == {"tls_stalled": 100} and doc["tls"]["stalled"] == 100
    assert "100 stalled in the TLS handshake" in doc["stalled"]["sentence"]


@pytest.mark.parametrize("args", [(), ("--tls-in-flight", "4")])
def test_a_worker_keeps_at_most_in_flight_handshakes_at_once(args):
    """Opened together, the handshakes' temporaries fragment the heap under the held
    connections' state (bench/bench_services.py: 1.39x the SSLObject floor, 1.02x with
    the window): a worker opens IN_FLIGHT (or --tls-in-flight), and before the window
    widens (a second without a decision, after this run's deadline) no more."""
    from probes.protocols.tls import IN_FLIGHT
    window = int(args[1]) if args else IN_FLIGHT
    staller = Staller()
    try:
        rc, doc, err = connect(f"https://127.0.0.1:{staller.port}/", 100, *args, timeout=0.5)
    finally:
        staller.close()
    assert rc == 3 and doc["workers"] == 1 and doc["verified"] == 0, err
    assert doc["attempted"] == window and sum(failures(doc).values()) == window, doc["server"]


@pytest.mark.parametrize("args,named", [
    (["--connect", "https://127.0.0.1:1/", "--ca", "/nonexistent/ca.pem"], "--ca"),
    (["--connect", "https://127.0.0.1:1/", "--tls-version", "1.1"], "--tls-version"),
    (["--connect", "https://127.0.0.1:1/", "--key", "/etc/hostname"], "--key"),
    (["--connect", "http://127.0.0.1:1/", "--insecure"], "--insecure"),
])
def test_bad_tls_options_are_one_line_and_exit_2(args, named):
    proc = run_tuner("probe", "-n", 10, *args)
    assert proc.returncode == 2 and named in proc.stderr and proc.stdout == "", proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind,options,said", [
    ("nginx", {"http_extra": "    ssl_buffer_size 4k;"}, "an ssl_buffer_size buffer of 4k"),
    ("haproxy", {"maxconn": 500, "global_extra": ["tune.bufsize 32768"]}, "tune.bufsize 32768"),
])
def test_diagnose_names_tls_listeners_and_what_they_cost(real_server, tls_certs, kind, options, said):
    srv = real_server(kind, tls=tls_certs.server, hosts=("127.0.0.1",), **options)
    proc = run_tuner("diagnose", "--port", srv.port, "--json", timeout=60)
    doc = json.loads(proc.stdout)
    notes = [n for n in doc["notes"] if n.startswith("TLS on")]
    assert len(notes) == 1 and f"127.0.0.1:{srv.port}" in notes[0] and said in notes[0], doc["notes"]
    plain = real_server(kind, hosts=("127.0.0.1",), **{k: v for k, v in options.items() if k == "maxconn"})
    doc = json.loads(run_tuner("diagnose", "--port", plain.port, "--json", timeout=60).stdout)
    assert not [n for n in doc["notes"] if n.startswith("TLS on")]


def test_https_with_forked_workers_source_addresses_and_a_rate(real_server, tls_certs):
    """Past one process's descriptor limit (the probe under RLIMIT_NOFILE 200 forks
    workers for 300), over source addresses in 127.0.0.0/8, paced by --rate, resuming:
    each worker's first handshake is full, the rest resume it."""
    srv = real_server("nginx", workers=2, worker_connections=1024, tls=tls_certs.server, hosts=("127.0.0.1",))
    proc = subprocess.run(["prlimit", "--nofile=200:200", sys.executable, "-m", "tuner", "probe", "--connect",
                           f"https://127.0.0.1:{srv.port}/", "-n", "300", "--hold", "1", "--timeout", "20",
                           "--ca", tls_certs.ca, "--source-net", "127.0.0.0/8", "--rate", "600", "--resume",
                           "--json", "-q"], capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    doc = json.loads(proc.stdout)
    schemas.validate(doc)
    assert proc.returncode == 0 and doc["verified"] == 300 and doc["checked_twice"], proc.stderr
    assert doc["workers"] >= 2 and doc["source_addresses"] > 1
    tls = doc["tls"]
    assert tls["handshakes_full"] == doc["workers"] and tls["handshakes_resumed"] == 300 - doc["workers"]


def test_report_role_client_tls_counts_the_probes_tls_state():
    """The probe's measured TLS state per held connection: --tls-version's, else the
    dearer version's, and the document and the text say which."""
    from probes.protocols.tls import HELD_BYTES

    def memory(*args):
        return json.loads(run_tuner("report", "--role", "client", "-n", 1000000, *args, "--json").stdout)["memory"]

    plain, tls = memory(), memory("--tls")
    assert plain["user_bytes_per_connection"] == 0 and plain["user_bytes_tls_version"] is None
    dearer = max(HELD_BYTES, key=HELD_BYTES.get)
    assert tls["user_bytes_per_connection"] == HELD_BYTES[dearer] and tls["user_bytes_tls_version"] == dearer
    assert not tls["user_bytes_tls_version_asked"]
    for version in ("1.2", "1.3"):
        one = memory("--tls-version", version)           # implies --tls
        assert one["user_bytes_per_connection"] == HELD_BYTES[version] and one["user_bytes_tls_version_asked"]
        assert one["idle_bytes_per_connection"] - plain["idle_bytes_per_connection"] == HELD_BYTES[version]
    assert HELD_BYTES["1.2"] != HELD_BYTES["1.3"]
    text = run_tuner("report", "--role", "client", "-n", 1000000, "--tls").stdout
    assert f"the probe's TLS {dearer} state adds" in text and "the dearer version's" in text
    text = run_tuner("report", "--role", "client", "-n", 1000000, "--tls", "--tls-version", "1.2").stdout
    assert "the probe's TLS 1.2 state adds" in text and "dearer" not in text
    proc = run_tuner("report", "-n", 1000, "--tls")
    assert proc.returncode == 2 and "--tls is for --role client" in proc.stderr
    proc = run_tuner("report", "--role", "client", "-n", 1000, "--tls-version", "1.1")
    assert proc.returncode == 2 and "--tls-version '1.1': one of 1.2, 1.3" in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr


def test_what_a_held_tls_connection_costs_the_service_beside_a_plain_one(real_server, tls_certs):
    """The same nginx configuration plain and over TLS, stepped to 1,500 each: the step
    rows' slope says what a held connection costs the service either way, and TLS costs it
    more per connection (its SSL object per connection; issue 27: the service's side of a
    held TLS connection, named against the plain one)."""
    plain = real_server("nginx", workers=1, worker_connections=4096, hosts=("127.0.0.1",))
    tls = real_server("nginx", workers=1, worker_connections=4096, hosts=("127.0.0.1",), tls=tls_certs.server)
    per = {}
    for name, url, extra in (("plain", f"http://127.0.0.1:{plain.port}/", ()),
                             ("tls", f"https://127.0.0.1:{tls.port}/", ("--ca", tls_certs.ca))):
        rc, doc, err = connect(url, 1500, "--step", 500, "--settle", 0.5, *extra, timeout=20)
        assert rc == 0, err
        cost = doc["service"]["bytes_per_connection"]
        per[name] = cost["application"] + cost["kernel"]
        print(f"nginx {name}: {cost['application']:,} B application + {cost['kernel']:,} B kernel per connection")
    assert per["tls"] > per["plain"] + 1024, per
