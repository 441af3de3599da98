"""The runtime adapters (tuner/apps/: node, go, beam, jvm, python) against real processes:
a Node `ws` server, a Go server built here with Debian's Go, an Erlang node, a JVM and a
stock asyncio server.  Where a runtime has a cap (the BEAM's port table) it is predicted
and measured; where it has none (Node) the descriptor limit is what holds, measured."""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys

import pytest

import realservers
from conftest import run_tuner
from tuner.host import procpid
from tuner.apps import base, beam, find, go, jvm, node, python

HERE = os.path.dirname(os.path.abspath(__file__))


pytestmark = pytest.mark.usefixtures("nofile_raised")


def view_of(srv) -> base.ProcView:
    return base.view(srv.pid, [(h, srv.port) for h in srv.hosts])


def near(measured: int, predicted: int) -> bool:
    return abs(measured - predicted) <= max(3, predicted // 100)


def count_answered(host: str, port: int, n: int, request: bytes, answer: bytes, wait: float = 2.0) -> int:
    """Open up to n connections one after another, each sending `request`; count those the
    server answers with `answer`; stop at the first it does not answer within `wait`."""
    held = []
    try:
        for _ in range(n):
            s = socket.create_connection((host, port), timeout=wait)
            held.append(s)
            if request:
                s.sendall(request)
            got = b""
            try:
                while len(got) < len(answer):
                    chunk = s.recv(len(answer) - len(got))
                    if not chunk:
                        break
                    got += chunk
            except (socket.timeout, ConnectionResetError):
                pass                    # libuv at EMFILE accepts and closes at once: a reset
            if got != answer:
                return len(held) - 1
        return len(held)
    finally:
        for s in held:
            s.close()


def start(name: str, argv, port: int, nofile, dir_: str, env=None) -> realservers.Server:
    if env:
        argv = ["env", *[f"{k}={v}" for k, v in env.items()], *argv]
    return realservers.start(name, argv, port=port, hosts=("127.0.0.1",), config=argv[-1],
                             dir=dir_, nofile=nofile)


# ---------------------------------------------------------------- Node

def ws_upgrade(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def test_node_has_no_cap_of_its_own_and_the_descriptor_limit_holds(real_server):
    srv = real_server("ws", hosts=("127.0.0.1",), nofile=1024)
    view = view_of(srv)
    assert find(view) is node.ADAPTER
    cap = node.ADAPTER.read(view)
    assert cap.allows is None and cap.sureness == base.DEFAULT, cap
    assert "maxConnections" in cap.why and "not readable" in cap.why, cap.why
    # No application cap: the descriptors left (soft limit less those open now) hold,
    # and diagnose says so without an 'at most'.
    out = run_tuner("diagnose", "--pid", srv.pid, "--json")
    d = json.loads(out.stdout)
    assert d["binding_limit"] == "RLIMIT_NOFILE.soft" and "at most" not in d["verdict"], d["verdict"]
    assert d["application"]["app"] == "node" and d["application"]["allows"] is None
    predicted = d["max_connections"]
    assert abs(predicted - (1024 - procpid.fd_count(srv.pid))) <= 1
    measured = count_answered(srv.host, srv.port, 1100, ws_upgrade(srv.port), b"HTTP/1.1 101")
    assert near(measured, predicted), (measured, predicted)


# ---------------------------------------------------------------- Go

@pytest.fixture(scope="module")
def go_binary(tmp_path_factory):
    gobin = realservers.need("go")
    out = tmp_path_factory.mktemp("go")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(out), "GOCACHE": str(out / "cache"),
           "GOPATH": str(out / "gopath")}
    subprocess.run([gobin, "build", "-o", str(out / "hold"), os.path.join(HERE, "servers", "go", "hold.go")],
                   check=True, capture_output=True, env=env, timeout=300)
    return str(out / "hold")


def test_go_recognised_by_its_build_information_soft_raised_to_hard(go_binary, tmp_path):
    port = realservers.free_port(("127.0.0.1",))
    srv = start("go-hold", [go_binary, f"127.0.0.1:{port}"], port, (1024, 4096), str(tmp_path))
    try:
        view = view_of(srv)
        assert find(view) is go.ADAPTER and find(base.view(os.getpid())) is not go.ADAPTER
        assert (view.nofile_soft, view.nofile_hard) == (4096, 4096)   # Go raised 1,024 itself
        cap = go.ADAPTER.read(view)
        assert cap.allows is None and cap.setting.startswith("go1."), cap
        assert any("soft = hard = 4,096" in n for n in cap.notes), cap.notes
    finally:
        srv.stop()


# ---------------------------------------------------------------- BEAM

@pytest.fixture(scope="module")
def erlang_beam(tmp_path_factory):
    erlc = realservers.need("erlc")
    realservers.need("erl")
    out = tmp_path_factory.mktemp("erl")
    subprocess.run([erlc, "-o", str(out), os.path.join(HERE, "servers", "erlang", "hold.erl")],
                   check=True, capture_output=True, timeout=120)
    return str(out)


def start_erlang(ebin: str, tmp_path, q=None, env=None) -> realservers.Server:
    port = realservers.free_port(("127.0.0.1",))
    argv = ["erl", "-noshell"] + (["+Q", str(q)] if q else []) + ["-pa", ebin, "-run", "hold", "main",
                                                                "127.0.0.1", str(port)]
    d = tmp_path / f"erl-{port}"
    d.mkdir()
    return start("beam", argv, port, 4096, str(d), env)


def test_beam_port_table_from_plus_q_predicted_measured_then_raised(erlang_beam, tmp_path):
    srv = start_erlang(erlang_beam, tmp_path, q=1024)
    try:
        view = view_of(srv)
        assert find(view) is beam.ADAPTER
        cap = beam.ADAPTER.read(view)
        assert (cap.allows, cap.sureness) == (1024, base.COMPUTED) and "+Q 1024" in cap.where, cap
        measured = count_answered(srv.host, srv.port, 1200, b"", b"ok\n")
        assert near(measured, cap.allows), (measured, cap)
        fix = beam.ADAPTER.fix(view, cap, 1500)
        assert fix.lines == ["+Q 2048"] and fix.action == base.RESTART, fix
    finally:
        srv.stop()
    srv = start_erlang(erlang_beam, tmp_path, q=2048)
    try:
        cap = beam.ADAPTER.read(view_of(srv))
        assert cap.allows == 2048
        measured = count_answered(srv.host, srv.port, 2200, b"", b"ok\n")
        assert near(measured, 2048), measured
    finally:
        srv.stop()


def test_beam_erl_max_ports_and_the_default(erlang_beam, tmp_path):
    srv = start_erlang(erlang_beam, tmp_path, env={"ERL_MAX_PORTS": "3000"})
    try:
        cap = beam.ADAPTER.read(view_of(srv))
        assert cap.allows == 4096 and "ERL_MAX_PORTS=3000" in cap.where, cap   # rounded up
    finally:
        srv.stop()
    srv = start_erlang(erlang_beam, tmp_path)
    try:
        cap = beam.ADAPTER.read(view_of(srv))
        assert (cap.allows, cap.sureness) == (65536, base.DEFAULT), cap
    finally:
        srv.stop()


# ---------------------------------------------------------------- JVM, Python

def test_jvm_flag_given_in_java_tool_options_is_read_from_its_environment(tmp_path):
    javac, java = realservers.need("javac"), realservers.need("java")
    subprocess.run([javac, "-d", str(tmp_path), os.path.join(HERE, "java", "WireServer.java")],
                   check=True, capture_output=True, timeout=120)
    port = realservers.free_port(("127.0.0.1",))
    argv = [java, "-Xss256k", "-cp", str(tmp_path), "WireServer", "nio", str(port)]
    srv = start("java", argv, port, (1024, 4096), str(tmp_path), {"JAVA_TOOL_OPTIONS": "-XX:-MaxFDLimit"})
    try:
        view = view_of(srv)
        assert find(view) is jvm.ADAPTER
        cap = jvm.ADAPTER.read(view)
        assert cap.allows is None and "JAVA_TOOL_OPTIONS" in cap.where, cap
        assert any("-XX:-MaxFDLimit" in n and "1,024" in n for n in cap.notes), cap.notes
        assert view.nofile_soft == 1024         # the flag kept it: the note is right
        fix = jvm.ADAPTER.fix(view, cap, 3000)
        assert fix.action == base.RESTART and "-XX:-MaxFDLimit" in fix.command, fix
    finally:
        srv.stop()


def test_asyncio_server_no_cap_and_its_backlog_default(tmp_path):
    port = realservers.free_port(("127.0.0.1",))
    script = os.path.join(HERE, "servers", "asyncio_wire.py")
    srv = start("asyncio", [sys.executable, script, str(port)], port, None, str(tmp_path))
    try:
        view = view_of(srv)
        assert find(view) is python.ADAPTER
        cap = python.ADAPTER.read(view)
        assert cap.allows is None and cap.sureness == base.DEFAULT, cap
        assert python.ADAPTER.backlog_default == 100
    finally:
        srv.stop()
