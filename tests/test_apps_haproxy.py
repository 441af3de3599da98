"""HAProxy's adapter (tuner/apps/haproxy.py) against real HAProxy (tests/realservers.py):
a global maxconn, none (HAProxy computes its own from the descriptor limit), `show info`
over a stats socket, a frontend's own maxconn; each predicted by `tuner diagnose` within
max(3, 1%) of what a client holds (answered and still open: beyond maxconn HAProxy
leaves connections in the accept queue, unanswered), measured by `tuner probe --connect
http://`."""
from __future__ import annotations

import json
import os
import re
import signal
import time

import realservers
from apphold import within
from conftest import run_tuner


def diagnose(srv, *args) -> dict:
    out = run_tuner("diagnose", "--port", srv.port, *args, "--json")
    assert out.returncode in (0, 3), out.stderr
    return json.loads(out.stdout)


def measure(srv, predicted: int, label: str) -> int:
    """What `tuner probe --connect http://` holds: connections answered at open and again
    at the end of the hold (beyond maxconn they wait in the accept queue, unanswered)."""
    out = run_tuner("probe", "--connect", f"http://{srv.host}:{srv.port}/", "-n", predicted + 300,
                    "--hold", 1, "--timeout", 20, "--json", timeout=180)
    assert out.returncode in (0, 3), out.stderr
    measured = json.loads(out.stdout)["verified"]
    print(f"haproxy {label}: predicted {predicted}, held {measured}")
    assert within(predicted, measured), (predicted, measured)
    return measured


def restart(srv, fix: dict):
    """The printed fix done as a user would: the line into the global section (replacing
    a maxconn there), then the restart it asks for (stop it, start the same command)."""
    assert fix["action"] == "restart" and fix["command"].startswith(f"kill {srv.pid}")
    with open(srv.config) as f:
        text = f.read()
    line = fix["lines"][0]
    text, hits = re.subn(r"(?m)^(global\n(?:    .*\n)*?)    maxconn \d+\n", rf"\g<1>    {line}\n", text)
    if not hits:
        text = text.replace("global\n", f"global\n    {line}\n", 1)
    with open(srv.config, "w") as f:
        f.write(text)
    argv = open(f"/proc/{srv.pid}/cmdline").read().split("\0")[:-1]
    nofile = open(f"/proc/{srv.pid}/limits").read().split("Max open files")[1].split()[1]
    os.kill(srv.pid, signal.SIGTERM)
    srv.proc.wait(10)
    return realservers.start("haproxy", argv, port=srv.port, hosts=srv.hosts, config=srv.config,
                             dir=srv.dir, nofile=int(nofile))


def test_global_maxconn_predicted_measured_and_fixed(real_server):
    srv = real_server("haproxy", maxconn=700, nofile=4096)
    d = diagnose(srv)
    assert d["binding_limit"].startswith(f"haproxy maxconn 700 ({srv.config}:")
    assert d["max_connections"] == 700 and d["application"]["sureness"] == "read"
    measure(srv, 700, "maxconn 700")
    fixed = diagnose(srv, "--target", 1200)
    assert fixed["reachable"] is False and fixed["fix"][0]["kind"] == "application"
    new = restart(srv, fixed["application"]["fix"])
    try:
        after = diagnose(new, "--target", 1200)
        assert after["reachable"] is True and after["max_connections"] == 1200
        measure(new, 1200, "after the fix")
    finally:
        new.stop()


def test_no_maxconn_computes_its_own_from_the_descriptor_limit(real_server):
    """No maxconn: HAProxy's own rule over RLIMIT_NOFILE 4,096 (2 listeners, 2 threads or
    as many as it runs): computed without a stats socket, read with one; both measured."""
    srv = real_server("haproxy", nofile=4096)
    d = diagnose(srv)
    app = d["application"]
    assert app["sureness"] == "computed" and "(automatic)" in app["setting"]
    measure(srv, d["max_connections"], "no maxconn, computed")

    with_socket = real_server("haproxy", nofile=4096, stats_socket=True)
    d = diagnose(with_socket)
    info = realservers.haproxy_command(with_socket, "show info")
    maxconn = int(re.search(r"(?m)^Maxconn: (\d+)", info).group(1))
    assert d["application"]["sureness"] == "read" and d["max_connections"] == maxconn
    assert d["application"]["where"] == f"show info over {with_socket.extra['stats_socket']}"
    measure(with_socket, maxconn, "no maxconn, show info")


def test_a_frontend_maxconn_below_the_global_one_binds(real_server):
    srv = real_server("haproxy", maxconn=2000, frontend_maxconn=300, nofile=4096)
    d = diagnose(srv)
    assert d["binding_limit"].startswith("haproxy frontend maxconn fe 300 (")
    measure(srv, d["max_connections"], "frontend maxconn 300")


def test_an_untrusted_stats_socket_is_not_used(real_server):
    srv = real_server("haproxy", nofile=4096, stats_socket=True)
    os.chown(srv.extra["stats_socket"], 65534, 65534)
    d = diagnose(srv)
    app = d["application"]
    assert any("belongs to uid 65534" in u for u in app["unread"])
    assert app["sureness"] == "computed"
