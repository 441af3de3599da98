"""The probe module's mode=connect against real services, through `ansible-playbook` as a
user runs it: every option a URL's scheme takes is a module option (generated from the
protocol registry, tuner/collection.py), so a playbook holds and verifies a TLS service
and an MQTT broker exactly as `tuner probe --connect` does.

The managed host is this one (ansible_connection local, this venv's python), the
servers are real (tests/realservers.py): nginx `listen ... ssl` with mutual TLS, and
Mosquitto with a `max_connections` cap, plain and with a TLS listener.  Certificates are
the test's own (a CA, a server certificate for localhost/127.0.0.1/::1, a client one).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from fleetrig import Play, ansible_bin, ansible_env
from procscan import Scan
from realservers import real_server, tls_certs  # noqa: F401 (fixtures)


def play(tmp_path, text: str, **extra_vars) -> Play:
    """ansible-playbook of `text` on this host (one inventory host, `load`), every task's
    result recorded; extra_vars go in as -e @FILE (JSON, mode 600: a password among them
    stays out of ansible-playbook's command line)."""
    env = ansible_env(str(tmp_path))
    record = str(tmp_path / "record")
    env["TUNER_RECORD"] = record
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": {"load": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    (tmp_path / "play.yml").write_text(text)
    variables = tmp_path / "vars.json"
    variables.touch(0o600)
    variables.write_text(json.dumps(extra_vars))
    proc = subprocess.run([ansible_bin("ansible-playbook"), "-i", str(inventory), "play.yml",
                           "-e", f"@{variables}"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600, stdin=subprocess.DEVNULL)
    lines = []
    if os.path.exists(record):
        with open(record) as f:
            lines = [json.loads(line) for line in f]
    return Play(proc, lines)


def task(p: Play, name: str) -> dict:
    [rec] = [r for r in p.records if r["task"] == name]
    return rec


HTTPS = """
- hosts: load
  gather_facts: false
  tasks:
    - name: mutual TLS 1.2, resumed, the name verified against the test's CA
      tuner.tuner.probe:
        mode: connect
        server: "https://127.0.0.1:{{ port }}/"
        connections: 200
        workers: 1
        hold: 1
        timeout: 30
        ca: "{{ ca }}"
        sni: localhost
        alpn: [http/1.1]
        cert: "{{ cert }}"
        key: "{{ key }}"
        tls_version: "1.2"
        resume: true
    - name: the system store does not know the test's CA
      tuner.tuner.probe:
        mode: connect
        server: "https://127.0.0.1:{{ port }}/"
        connections: 20
        timeout: 10
      ignore_errors: true
    - name: insecure, said so
      tuner.tuner.probe:
        mode: connect
        server: "https://127.0.0.1:{{ port }}/"
        connections: 20
        timeout: 10
        insecure: true
        cert: "{{ cert }}"
        key: "{{ key }}"
"""


def test_https_with_every_tls_option_against_nginx(tmp_path, real_server, tls_certs):
    srv = real_server("nginx", workers=1, worker_connections=1024, tls=tls_certs.server,
                      client_ca=tls_certs.ca, hosts=("127.0.0.1",))
    p = play(tmp_path, HTTPS, port=srv.port, ca=tls_certs.ca, cert=tls_certs.client.cert, key=tls_certs.client.key)
    assert p.proc.returncode == 0, p.output    # the failing task is ignored

    rec = task(p, "mutual TLS 1.2, resumed, the name verified against the test's CA")
    res = rec["result"]
    assert rec["status"] == "ok" and res["ok"] and res["verified"] == 200 and res["rc"] == 0, res.get("msg")
    assert res["changed"] is False and res["probe"]["checked_twice"]
    tls = res["probe"]["tls"]
    assert {k["version"] for k in tls["negotiated"]} == {"TLSv1.2"} and tls["version_asked"] == "1.2"
    # One worker: its first full handshake's session is what the other 199 resume.
    assert (tls["handshakes_full"], tls["handshakes_resumed"]) == (1, 199) and tls["resume"]
    assert tls["server_name"] == "localhost" and tls["alpn"] == ["http/1.1"] and not tls["insecure"]
    assert tls["client_cert"] == tls_certs.client.cert

    # Verification is on by default: the certificate error is the server's, in its words.
    rec = task(p, "the system store does not know the test's CA")
    res = rec["result"]
    assert rec["status"] == "failed" and (res["rc"], res["exit_class"]) == (3, "short") and res["verified"] == 0
    assert "certificate" in res["msg"] and res["msg"].startswith("verified 0 of 20 to https://127.0.0.1:")

    res = task(p, "insecure, said so")["result"]
    assert res["verified"] == 20 and res["probe"]["tls"]["insecure"] is True


MQTT = """
- hosts: load
  gather_facts: false
  tasks:
    - name: past the broker's cap
      tuner.tuner.probe:
        mode: connect
        server: "mqtt://127.0.0.1:{{ port }}"
        connections: "{{ cap + 40 }}"
        hold: 1
        timeout: 10
        client_id_prefix: "ansible-"
        keepalive: 30
      ignore_errors: true
"""


def test_mqtt_against_mosquitto_verifies_exactly_its_max_connections(tmp_path, real_server):
    cap = 200
    srv = real_server("mosquitto", max_connections=cap, hosts=("127.0.0.1",))
    p = play(tmp_path, MQTT, port=srv.port, cap=cap)
    rec = task(p, "past the broker's cap")
    res = rec["result"]
    assert rec["status"] == "failed" and (res["rc"], res["exit_class"]) == (3, "short"), p.output
    assert res["verified"] == cap and res["probe"]["protocol"] == "mqtt" and res["probe"]["checked_twice"]
    assert res["msg"].startswith(f"verified {cap:,} of {cap + 40:,} to mqtt://127.0.0.1:{srv.port}: "
                                 f"the server (mosquitto pid {srv.pid}) stopped at {cap}"), res["msg"]


MQTTS = """
- hosts: load
  gather_facts: false
  tasks:
    - name: through TLS, past the broker's cap
      tuner.tuner.probe:
        mode: connect
        server: "mqtts://127.0.0.1:{{ port }}"
        connections: 100
        hold: 1
        timeout: 10
        ca: "{{ ca }}"
        username: probe
        password: "{{ password }}"
      ignore_errors: true
    - name: the password from a file on the managed host
      tuner.tuner.probe:
        mode: connect
        server: "mqtts://127.0.0.1:{{ port }}"
        connections: 50
        hold: 1
        timeout: 10
        ca: "{{ ca }}"
        username: probe
        password_file: "{{ password_file }}"
"""


def test_mqtts_through_a_playbook_verifies_the_cap_and_keeps_the_password_out(tmp_path, real_server, tls_certs):
    """The broker checks the password (anonymous refused), so a verified connection
    carried it; while the playbook runs, user nobody reads every /proc/PID/cmdline and
    environ it may (tests/procscan.py) and finds it in none: not in ansible-playbook's
    (the vars come from a file), the module's, the orchestrator's or its workers'."""
    secret = "s3cret-of-the-probe"
    srv = real_server("mosquitto", max_connections=60, tls=tls_certs.server, hosts=("127.0.0.1",),
                      users={"probe": secret})
    password_file = tmp_path / "mqtt.pw"
    password_file.touch(0o600)
    password_file.write_text(secret + "\n")
    with Scan(secret, f"mqtts://127.0.0.1:{srv.port}") as scan:
        p = play(tmp_path, MQTTS, port=srv.port, ca=tls_certs.ca, password=secret, password_file=str(password_file))
    rec = task(p, "through TLS, past the broker's cap")
    res = rec["result"]
    assert rec["status"] == "failed" and res["rc"] == 3 and res["verified"] == 60, p.output
    assert res["probe"]["tls"]["handshakes_full"] >= 60 and res["probe"]["checked_twice"]
    from_file = task(p, "the password from a file on the managed host")
    assert from_file["status"] == "ok" and from_file["result"]["verified"] == 50, p.output
    assert len(scan.probes) >= 2 and scan.found == [], (scan.probes, scan.found)
    # password is no_log (the registry marks it secret): neither the screen nor the result shows it.
    assert secret not in p.output and secret not in json.dumps(p.records)


RAMP = """
- hosts: load
  gather_facts: false
  tasks:
    - name: ramped in steps with a ping per held connection
      tuner.tuner.probe:
        mode: connect
        server: "mqtt://127.0.0.1:{{ port }}"
        connections: 300
        step: 100
        settle: 0.5
        ping_every: 1
        max_p99: 60000
        hold: 2
        timeout: 20
      register: ramped
    - name: a connect option given to serve
      tuner.tuner.probe:
        mode: serve
        listen: "127.0.0.1:1"
        expect: 1
        ca: /nonexistent
      ignore_errors: true
    - name: an option the URL's scheme does not take
      tuner.tuner.probe:
        mode: connect
        server: "mqtt://127.0.0.1:{{ port }}"
        connections: 1
        method: POST
      ignore_errors: true
"""


def test_the_ramp_and_refusals_of_options_that_do_not_apply(tmp_path, real_server):
    srv = real_server("mosquitto", max_connections=1000, hosts=("127.0.0.1",))
    p = play(tmp_path, RAMP, port=srv.port)
    res = task(p, "ramped in steps with a ping per held connection")["result"]
    assert res["ok"] and res["verified"] == 300, res.get("msg")
    steps = res["probe"]["steps"]
    assert [s["connections"] for s in steps] == [100, 200, 300]
    assert res["probe"]["ramp"]["step"] == 100 and srv.pid in res["probe"]["ramp"]["pids"]
    assert res["probe"]["latency_ms"] is not None and res["probe"]["pings"]["refused"] == 0
    assert res["probe"]["ramp"]["max_p99_ms"] == 60000.0 and res["probe"]["ramp"]["over"] is None
    assert res["probe"]["service"] is not None    # the broker's cost per connection, as the CLI's --json
    # Bad input: tuner's one line and exit class, nothing opened.
    res = task(p, "a connect option given to serve")["result"]
    assert (res["rc"], res["exit_class"]) == (2, "usage") and res["msg"] == "ca: mode=connect's option(s), not mode=serve's"
    res = task(p, "an option the URL's scheme does not take")["result"]
    assert (res["rc"], res["exit_class"]) == (2, "usage") and "--method do(es) not apply to mqtt://" in res["msg"]
